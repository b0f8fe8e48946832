"""Every architecture's image transforms for training, on PIL images so that the processor's resize/normalise still
runs after them; evaluation uses none (``image_transform=None``).

- CLIP / open_clip: RandomResizedCrop with ``scale=(0.9, 1.0)``, bicubic (:func:`clip_train_transform`).
- ALBEF (``dataset/__init__.py``, ``dataset/randaugment.py``): ``RandomResizedCrop(res, scale, bicubic)`` ->
  ``RandomHorizontalFlip`` -> ``RandomAugment(2, 7, augs=[Identity, AutoContrast, Equalize, Brightness, Sharpness,
  ShearX, ShearY, TranslateX, TranslateY, Rotate])`` with ``scale=(0.2, 1)`` for pre-training and ``(0.5, 1)`` for
  fine-tuning (:func:`albef_train_transform`).
- BLIP (``data/__init__.py``): the same crop, then RandomAugment(2, 5) - ALBEF's operations in BLIP's order at
  magnitude 5 (:func:`blip_train_transform`).
- ViLT (``vilt/transforms/randaug.py``, ``pixelbert_transform_randaug``): its own RandAugment(2, 9) before the resize,
  in the fine-tuning configs only (:class:`ViltRandAugmentPil`, :func:`vilt_train_transform`); no crop, no flip.

The crop and RandAugment are reproduced with PIL operations (the originals' numpy/cv2 ops, same magnitudes; pixels
differ by interpolation rounding). The horizontal flip is left to the collators, because whether a flip is allowed
depends on the text (see ``ImageTextCollator(horizontal_flip=...)``).

RandAugment as the original: draw ``num_ops`` operations with replacement, apply each with probability 0.5 at
magnitude ``M`` of 10: Brightness/Sharpness factor ``0.1 + 1.8 M / 10``; shears ``0.3 M / 10``, translations
``10 M / 10`` pixels and rotations ``30 M / 10`` degrees with a random sign, filled with grey (128, 128, 128).
Every draw comes from the ``generator`` the collator passes (seeded per sample), or torch's global generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10
TRANSLATE_PIXELS = 10  # the original's translate_const, in pixels at any resolution
FILL = (128, 128, 128)
ALBEF_RAND_AUGMENT_OPS: tuple[str, ...] = (
    "Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
)  # fmt: skip
PRETRAIN_CROP_SCALE = (0.2, 1.0)
FINETUNE_CROP_SCALE = (0.5, 1.0)



class RandomResizedCropPil:
    """RandomResizedCrop on PIL images (torchvision's sampling), so an image processor can still run after it.

    Random numbers come from ``generator`` when one is given (the collators pass a per-sample generator so that
    crops do not depend on global RNG state: resumed and multi-process runs see the same crops), else from torch's
    global generator.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.9, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        resample: Image.Resampling = Image.Resampling.BICUBIC,
    ):
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}.")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}.")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}.")
        self.size, self.scale, self.ratio, self.resample = size, scale, ratio, resample

    def crop_box(self, width: int, height: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """Sample a crop ``(left, top, right, bottom)`` for an image of the given size."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=generator).item()
            aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=generator).item())
            crop_w = round(math.sqrt(target_area * aspect))
            crop_h = round(math.sqrt(target_area / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator).item())
                top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator).item())
                return left, top, left + crop_w, top + crop_h
        # Fallback: the largest central crop whose aspect ratio lies within `ratio`.
        aspect = width / height
        if aspect < self.ratio[0]:
            crop_w, crop_h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            crop_w, crop_h = round(height * self.ratio[1]), height
        else:
            crop_w, crop_h = width, height
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        return left, top, left + crop_w, top + crop_h

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        box = self.crop_box(*image.size, generator=generator)
        return image.resize((self.size, self.size), self.resample, box=box)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio})"


def clip_train_transform(image_size: int, scale: tuple[float, float] = (0.9, 1.0)) -> RandomResizedCropPil:
    """CLIP/open_clip training augmentation: RandomResizedCrop with ``scale=(0.9, 1.0)``, bicubic.

    Evaluation uses no augmentation (pass ``image_transform=None``); the processor's resize/crop then applies.
    """
    return RandomResizedCropPil(image_size, scale=scale)


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


# ViLT's RandAugment operations and their (min, max) values at magnitude 0 and 30 (``augment_list``: the
# EfficientNet/TPU list with Invert and CutoutAbs commented out). Translations are absolute pixels of the image as it
# is loaded (before the resize), rotations degrees.
VILT_RAND_AUGMENT_OPS: dict[str, tuple[float, float]] = {
    "AutoContrast": (0, 1),
    "Equalize": (0, 1),
    "Rotate": (0, 30),
    "Posterize": (0, 4),
    "Solarize": (0, 256),
    "SolarizeAdd": (0, 110),
    "Color": (0.1, 1.9),
    "Contrast": (0.1, 1.9),
    "Brightness": (0.1, 1.9),
    "Sharpness": (0.1, 1.9),
    "ShearX": (0.0, 0.3),
    "ShearY": (0.0, 0.3),
    "TranslateXabs": (0.0, 100),
    "TranslateYabs": (0.0, 100),
}
VILT_MAX_MAGNITUDE = 30


def _vilt_apply(name: str, image: Image.Image, value: float, generator: torch.Generator | None) -> Image.Image:
    """One ViLT RandAugment operation at ``value`` (the original's PIL calls: black fill, nearest resampling)."""
    if name == "AutoContrast":
        return ImageOps.autocontrast(image)
    if name == "Equalize":
        return ImageOps.equalize(image)
    if name == "Rotate":
        return image.rotate(_signed(value, generator))
    if name == "Posterize":
        return ImageOps.posterize(image, max(1, int(value)))
    if name == "Solarize":
        return ImageOps.solarize(image, value)
    if name == "SolarizeAdd":  # add, clip to 0..255, then solarise above 128
        return ImageOps.solarize(image.point(lambda pixel: min(255, pixel + int(value))), 128)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, name)(image).enhance(value)
    coefficients = {
        "ShearX": lambda v: (1, v, 0, 0, 1, 0),
        "ShearY": lambda v: (1, 0, 0, v, 1, 0),
        "TranslateXabs": lambda v: (1, 0, v, 0, 1, 0),
        "TranslateYabs": lambda v: (1, 0, 0, 0, 1, v),
    }
    if name in coefficients:
        return image.transform(image.size, Image.Transform.AFFINE, coefficients[name](_signed(value, generator)))
    raise ValueError(f"Unknown ViLT RandAugment operation {name!r}; expected one of {list(VILT_RAND_AUGMENT_OPS)}.")


class ViltRandAugmentPil:
    """ViLT's ``RandAugment(n, m)`` on PIL images: ``num_ops`` operations drawn with replacement from
    :data:`VILT_RAND_AUGMENT_OPS` (Invert and Cutout excluded, as the original), each applied (always) at
    ``min + magnitude / 30 * (max - min)``, rotations, shears and translations with a random sign. At the paper's
    magnitude 9: rotation 9 degrees, shear 0.09, translation 30 px, posterize to 1 bit, solarize above 76.8, colour /
    contrast / brightness / sharpness factor 0.64. Draws come from ``generator`` (or torch's global one)."""

    def __init__(self, num_ops: int = 2, magnitude: float = 9, ops: Sequence[str] = tuple(VILT_RAND_AUGMENT_OPS)):
        unknown = [name for name in ops if name not in VILT_RAND_AUGMENT_OPS]
        if unknown or not ops:
            raise ValueError(f"ViLT RandAugment ops must be a non-empty subset of {list(VILT_RAND_AUGMENT_OPS)}, got "
                             f"{unknown or ops}.")
        if num_ops < 0 or not 0 <= magnitude <= VILT_MAX_MAGNITUDE:
            raise ValueError(f"need num_ops >= 0 and 0 <= magnitude <= {VILT_MAX_MAGNITUDE}, got {num_ops} and "
                             f"{magnitude}.")
        self.num_ops, self.magnitude, self.ops = num_ops, magnitude, tuple(ops)

    def value(self, name: str) -> float:
        """The operation's value at this magnitude."""
        low, high = VILT_RAND_AUGMENT_OPS[name]
        return self.magnitude / VILT_MAX_MAGNITUDE * (high - low) + low

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        for index in torch.randint(len(self.ops), (self.num_ops,), generator=generator).tolist():
            image = _vilt_apply(self.ops[index], image, self.value(self.ops[index]), generator)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude})"


def vilt_train_transform(num_ops: int = 2, magnitude: float = 9) -> ComposePil:
    """ViLT's fine-tuning augmentation (``pixelbert_transform_randaug``): RandAugment(2, 9) on the loaded image; the
    processor then resizes (shorter side 384, longer at most 640, multiples of 32) and normalises. Pre-training and
    evaluation use no augmentation."""
    return ComposePil([ViltRandAugmentPil(num_ops, magnitude)])


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


# BLIP's RandomAugment: ALBEF's operations (in BLIP's order) at magnitude 5
BLIP_RAND_AUGMENT_OPS = ("Identity", "AutoContrast", "Brightness", "Sharpness", "Equalize",
                         "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")  # fmt: skip
BLIP_RAND_AUGMENT_MAGNITUDE = 5


def blip_train_transform(image_size: int, scale: tuple[float, float] = FINETUNE_CROP_SCALE) -> ComposePil:
    """BLIP's training transform without the flip (the collator flips): bicubic RandomResizedCrop to ``image_size``
    with ``scale``, then RandomAugment(2, 5)."""
    rand_augment = RandAugmentPil(2, BLIP_RAND_AUGMENT_MAGNITUDE, BLIP_RAND_AUGMENT_OPS)
    return ComposePil([RandomResizedCropPil(image_size, scale=scale), rand_augment])


__all__ = [
    "ALBEF_RAND_AUGMENT_OPS",
    "BLIP_RAND_AUGMENT_MAGNITUDE",
    "BLIP_RAND_AUGMENT_OPS",
    "FINETUNE_CROP_SCALE",
    "PRETRAIN_CROP_SCALE",
    "ComposePil",
    "RandAugmentPil",
    "RandomResizedCropPil",
    "VILT_RAND_AUGMENT_OPS",
    "ViltRandAugmentPil",
    "albef_train_transform",
    "blip_train_transform",
    "clip_train_transform",
    "vilt_train_transform",
]
