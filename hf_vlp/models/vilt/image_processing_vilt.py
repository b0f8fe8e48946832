"""Image processor reproducing ViLT's image transform and collate pixel for pixel.

The original (dandelin/ViLT, ``vilt/transforms/pixelbert.py``) opens the image, converts it to RGB, then runs
``MinMaxResize(shorter=384, longer=int(1333 / 800 * 384))``, ``ToTensor()`` and ``inception_normalize`` (mean = std
= 0.5). ``MinMaxResize`` scales the shorter side to 384, scales down again if the longer side then exceeds 639
(``int(639.84)``), rounds each side (``int(x + 0.5)``), floors it to a multiple of 32 and resizes with PIL bicubic: an
output side is at most 608 px. The collate zero-pads every
image (value 0 after normalisation) bottom/right to the batch's largest height and width; the model finds the real
pixels again from that zero padding, where transformers' ViLT takes an explicit ``pixel_mask`` (returned here).
"""

from __future__ import annotations

from typing import Any

from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, SizeDict
from transformers.processing_utils import ImagesKwargs

from ..image_processing_utils import VlpImageProcessorBase

DEFAULT_SHORTEST_EDGE = 384  # the original's image_size (config.py)
# MinMaxResize caps the longer side at int(1333 / 800 * shorter): Detectron's 800/1333 COCO ratio
LONGER_EDGE_RATIO = 1333 / 800
DEFAULT_SIZE_DIVISOR = 32  # the ViT-B/32 patch size


def vilt_resized_height_width(
    height: int, width: int, shortest_edge: int, longest_edge: int, size_divisor: int
) -> tuple[int, int]:
    """Output (height, width) of ViLT's ``MinMaxResize`` followed by its floor to multiples of ``size_divisor``.

    The shorter side becomes ``shortest_edge`` and the longer one keeps the aspect ratio; if it then exceeds
    ``longest_edge`` both sides shrink so it equals it. Each side is rounded (``int(x + 0.5)``) and floored to a
    multiple of ``size_divisor``. An image so elongated that a side would come out 0 is an error.
    """
    scale = shortest_edge / min(height, width)
    if height < width:
        new_height, new_width = float(shortest_edge), scale * width
    else:
        new_height, new_width = scale * height, float(shortest_edge)
    if max(new_height, new_width) > longest_edge:
        scale = longest_edge / max(new_height, new_width)
        new_height, new_width = new_height * scale, new_width * scale
    new_height = int(new_height + 0.5) // size_divisor * size_divisor
    new_width = int(new_width + 0.5) // size_divisor * size_divisor
    if new_height == 0 or new_width == 0:
        raise ValueError(
            f"A {height}x{width} (height x width) image is too elongated for ViLT's resize (shortest_edge="
            f"{shortest_edge}, longest_edge={longest_edge}, size_divisor={size_divisor}): its shorter side would "
            f"shrink below {size_divisor} px. Crop it to an aspect ratio of at most about "
            f"{longest_edge / size_divisor:.0f}:1 first."
        )
    return new_height, new_width


class VlpViltImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    size_divisor (`int`, *optional*, defaults to `self.size_divisor`):
        Each resized side is floored to a multiple of this (ViLT: 32, the patch size).
    """

    size_divisor: int


class VlpViltImageProcessor(VlpImageProcessorBase):
    """ViLT image processor: RGB conversion, ViLT's min/max bicubic resize, /255, mean = std = 0.5, zero padding.

    ``size`` is ``{"shortest_edge": 384, "longest_edge": 639}``: the shorter side becomes 384 and the longer side at
    most 639, keeping the aspect ratio, each side then floored to a multiple of ``size_divisor`` (32). Without
    ``longest_edge`` (e.g. ``size=480``) the cap is the original's ``int(1333 / 800 * shortest_edge)``.
    With ``do_pad`` (the default) every image is zero-padded bottom/right to the batch's largest height and width
    (or ``pad_size``), and ``pixel_mask`` ([B, H, W] int64) marks the real pixels with 1. Inputs: PIL images, numpy
    arrays, torch tensors, lists, paths or URLs. The output equals transformers' ``ViltImageProcessorPil``.
    """

    valid_kwargs = VlpViltImageProcessorKwargs
    model_input_names = ["pixel_values", "pixel_mask"]
    size = {"shortest_edge": DEFAULT_SHORTEST_EDGE, "longest_edge": int(LONGER_EDGE_RATIO * DEFAULT_SHORTEST_EDGE)}
    size_divisor = DEFAULT_SIZE_DIVISOR
    default_to_square = False
    image_mean = IMAGENET_STANDARD_MEAN
    image_std = IMAGENET_STANDARD_STD
    do_center_crop = False
    crop_size = None
    do_pad = True
    convert_rgb_before_resize = True

    def resized_size(
        self, height: int, width: int, size: SizeDict, size_divisor: int | None = None, **kwargs: Any
    ) -> tuple[int, int]:
        """:func:`vilt_resized_height_width` with ``size``'s edges and ``size_divisor`` (the processor's by default)."""
        given = {key: value for key, value in dict(size).items() if value is not None}
        if not size.shortest_edge or set(given) - {"shortest_edge", "longest_edge"}:
            raise ValueError(
                f"ViLT's resize needs size={{'shortest_edge': n}} or {{'shortest_edge': n, 'longest_edge': m}}; got "
                f"{given}."
            )
        longest_edge = size.longest_edge or int(LONGER_EDGE_RATIO * size.shortest_edge)
        size_divisor = self.size_divisor if size_divisor is None else size_divisor
        if not isinstance(size_divisor, int) or isinstance(size_divisor, bool) or size_divisor < 1:
            raise ValueError(f"size_divisor must be a positive integer; got {size_divisor!r}.")
        return vilt_resized_height_width(height, width, size.shortest_edge, longest_edge, size_divisor)


__all__ = ["VlpViltImageProcessor", "vilt_resized_height_width"]
