"""ALBEF/BLIP training augmentation on PIL images: RandomResizedCrop + RandAugment(2, 7), seeded per sample.

The originals (``dataset/__init__.py``, ``dataset/randaugment.py``) train on ``RandomResizedCrop(res, scale, bicubic)``
-> ``RandomHorizontalFlip`` -> ``RandomAugment(2, 7, augs=[Identity, AutoContrast, Equalize, Brightness, Sharpness,
ShearX, ShearY, TranslateX, TranslateY, Rotate])`` with ``scale=(0.2, 1)`` for pre-training and ``(0.5, 1)`` for
fine-tuning. This module reproduces the crop and RandAugment with PIL operations (the original's numpy/cv2 ops,
same magnitudes; pixels differ by interpolation rounding). The horizontal flip is left to the collators, because
whether a flip is allowed depends on the text (see ``ImageTextCollator(horizontal_flip=...)``).

RandAugment as the original: draw ``num_ops`` operations with replacement, apply each with probability 0.5 at
magnitude ``M`` of 10: Brightness/Sharpness factor ``0.1 + 1.8 M / 10``; shears ``0.3 M / 10``, translations
``10 M / 10`` pixels and rotations ``30 M / 10`` degrees with a random sign, filled with grey (128, 128, 128).
Every draw comes from the ``generator`` the collator passes (seeded per sample), or torch's global generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageEnhance, ImageOps

from .data import RandomResizedCropPil

MAX_LEVEL = 10
TRANSLATE_PIXELS = 10  # the original's translate_const, in pixels at any resolution
FILL = (128, 128, 128)
ALBEF_RAND_AUGMENT_OPS: tuple[str, ...] = (
    "Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
)  # fmt: skip
PRETRAIN_CROP_SCALE = (0.2, 1.0)
FINETUNE_CROP_SCALE = (0.5, 1.0)


def _uniform(generator: torch.Generator | None) -> float:
    return torch.rand((), generator=generator).item()


def _signed(magnitude: float, generator: torch.Generator | None) -> float:
    return -magnitude if _uniform(generator) < 0.5 else magnitude


def _affine(image: Image.Image, coefficients: tuple[float, ...]) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR, fillcolor=FILL)


def _apply(name: str, image: Image.Image, level: float, generator: torch.Generator | None) -> Image.Image:
    fraction = level / MAX_LEVEL
    if name == "Identity":
        return image
    if name == "AutoContrast":
        return ImageOps.autocontrast(image)
    if name == "Equalize":
        return ImageOps.equalize(image)
    if name == "Brightness":
        return ImageEnhance.Brightness(image).enhance(0.1 + 1.8 * fraction)
    if name == "Sharpness":
        return ImageEnhance.Sharpness(image).enhance(0.1 + 1.8 * fraction)
    if name == "ShearX":
        return _affine(image, (1, _signed(0.3 * fraction, generator), 0, 0, 1, 0))
    if name == "ShearY":
        return _affine(image, (1, 0, 0, _signed(0.3 * fraction, generator), 1, 0))
    if name == "TranslateX":
        return _affine(image, (1, 0, _signed(TRANSLATE_PIXELS * fraction, generator), 0, 1, 0))
    if name == "TranslateY":
        return _affine(image, (1, 0, 0, 0, 1, _signed(TRANSLATE_PIXELS * fraction, generator)))
    if name == "Rotate":
        angle = _signed(30 * fraction, generator)
        return image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=FILL)
    raise ValueError(f"Unknown RandAugment operation {name!r}; expected one of {list(ALBEF_RAND_AUGMENT_OPS)}.")


class RandAugmentPil:
    """ALBEF's ``RandomAugment(num_ops, magnitude, augs=ops)`` on PIL images (see the module docstring)."""

    def __init__(self, num_ops: int = 2, magnitude: float = 7, ops: Sequence[str] = ALBEF_RAND_AUGMENT_OPS):
        unknown = [name for name in ops if name not in ALBEF_RAND_AUGMENT_OPS]
        if unknown or not ops:
            raise ValueError(f"RandAugment ops must be a non-empty subset of {list(ALBEF_RAND_AUGMENT_OPS)}, got {unknown or ops}.")
        if num_ops < 0 or not 0 <= magnitude <= MAX_LEVEL:
            raise ValueError(f"need num_ops >= 0 and 0 <= magnitude <= {MAX_LEVEL}, got {num_ops} and {magnitude}.")
        self.num_ops, self.magnitude, self.ops = num_ops, magnitude, tuple(ops)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        chosen = torch.randint(len(self.ops), (self.num_ops,), generator=generator).tolist()
        for index in chosen:
            if _uniform(generator) > 0.5:
                continue
            image = _apply(self.ops[index], image, self.magnitude, generator)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude})"


class ComposePil:
    """Apply PIL transforms in order, handing each the same ``generator``."""

    def __init__(self, transforms: Sequence[Callable[..., Image.Image]]):
        self.transforms = list(transforms)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        for transform in self.transforms:
            image = transform(image, generator=generator)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms})"


def albef_train_transform(
    image_size: int, scale: tuple[float, float] = FINETUNE_CROP_SCALE, rand_augment: bool = True
) -> ComposePil:
    """ALBEF's training transform without the flip: bicubic RandomResizedCrop to ``image_size`` with ``scale``
    (:data:`PRETRAIN_CROP_SCALE` or :data:`FINETUNE_CROP_SCALE`), then RandAugment(2, 7) unless ``rand_augment``
    is false. The collator flips (``horizontal_flip=``) and normalises (the processor)."""
    steps: list[Callable[..., Image.Image]] = [RandomResizedCropPil(image_size, scale=scale)]
    if rand_augment:
        steps.append(RandAugmentPil(2, 7))
    return ComposePil(steps)
