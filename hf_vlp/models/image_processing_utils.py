"""The image-processor base shared by every hf_vlp model, reproducing the originals' torchvision transforms pixel for
pixel.

The originals run torchvision on a PIL image: an optional RGB conversion, a bicubic resize (CLIP: shorter side;
ALBEF and BLIP: a square), CLIP's centre crop, ``ToTensor`` (/255) and normalisation. :class:`VlpImageProcessorBase`
does the same steps on PIL images; transformers' ``CLIPImageProcessorPil`` differs in two places, both fixed here: it
floors the centre-crop offset where torchvision rounds it (a one-pixel shift whenever the margin is odd), and it
converts to RGB (compositing alpha onto white) before resizing, where CLIP resizes the image in its own mode and
converts afterwards (dropping alpha). Each model's processor is a subclass that sets defaults:

- ``VlpClipImageProcessor`` (models/clip): shorter-side resize + centre crop, RGB conversion after the crop.
- :class:`SquareResizeImageProcessor`, the base of ``VlpAlbefImageProcessor`` and ``VlpBlipImageProcessor``: RGB
  conversion first (``Image.open(...).convert('RGB')``), then a square resize and no crop.
- ``VlpViltImageProcessor`` (models/vilt): RGB conversion first, ViLT's min/max resize to multiples of 32 (its own
  :meth:`~VlpImageProcessorBase.resized_size`), zero padding to the batch's largest size with a ``pixel_mask``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
    load_image,
)
from transformers.utils import TensorType

from ..integrations.compat import ImageStructureHookMixin

_CHANNEL_COUNTS = (1, 3, 4)


def resized_height_width(height: int, width: int, size: SizeDict) -> tuple[int, int]:
    """Output (height, width) of the resize step, computed as torchvision's `Resize` does.

    `shortest_edge`: the shorter side becomes that size, the longer `int(size * long / short)`.
    `height` and `width`: resize to exactly that size.
    """
    if size.shortest_edge:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size.shortest_edge, int(size.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if size.height and size.width:
        return size.height, size.width
    raise ValueError(
        f"Unsupported resize size {dict(size)}: use {{'shortest_edge': n}} (CLIP's resize) or "
        "{'height': h, 'width': w}."
    )


def center_crop_pil(image: PIL.Image.Image, height: int, width: int) -> PIL.Image.Image:
    """Centre-crop a PIL image exactly like torchvision's `CenterCrop`.

    The offset is `round((size - crop) / 2)` with Python's half-to-even rounding; an image smaller than the crop
    is first zero-padded (extra pixel on the right/bottom), as torchvision does.
    """
    image_width, image_height = image.size
    if width > image_width or height > image_height:
        pad_left = (width - image_width) // 2 if width > image_width else 0
        pad_top = (height - image_height) // 2 if height > image_height else 0
        pad_right = (width - image_width + 1) // 2 if width > image_width else 0
        pad_bottom = (height - image_height + 1) // 2 if height > image_height else 0
        padded = PIL.Image.new(
            image.mode, (image_width + pad_left + pad_right, image_height + pad_top + pad_bottom), 0
        )
        if image.mode == "P":
            padded.putpalette(image.getpalette())
        padded.paste(image, (pad_left, pad_top))
        image = padded
        image_width, image_height = image.size
        if (image_width, image_height) == (width, height):
            return image
    top = int(round((image_height - height) / 2.0))
    left = int(round((image_width - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def _channel_axis(shape: tuple[int, ...], input_data_format: Any, prefer_first: bool) -> int:
    """Axis holding the channels of a 3-D array: given by `input_data_format`, else inferred."""
    if input_data_format is not None:
        axis = 0 if ChannelDimension(input_data_format) == ChannelDimension.FIRST else 2
        if shape[axis] not in _CHANNEL_COUNTS:
            raise ValueError(
                f"Image of shape {shape} has {shape[axis]} channels on the axis named by "
                f"input_data_format={ChannelDimension(input_data_format).value!r}; expected 1, 3 or 4."
            )
        return axis
    first_ok, last_ok = shape[0] in _CHANNEL_COUNTS, shape[2] in _CHANNEL_COUNTS
    if not (first_ok or last_ok):
        raise ValueError(
            f"Cannot find the channel axis of an image with shape {shape}: expected 1, 3 or 4 channels on the "
            "first (C, H, W) or last (H, W, C) axis. Convert the image to grayscale, RGB or RGBA first."
        )
    if first_ok and last_ok:
        return 0 if prefer_first else 2
    return 0 if first_ok else 2


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Convert pixels to 8 bits: floats in [0, 1] are scaled by 255 and rounded; whole numbers in [0, 255] kept."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        low, high = array.min(), array.max()
        if low < 0 or high > 255:
            raise ValueError(
                f"Integer image values must lie in [0, 255]; got [{low}, {high}]. Scale the image to 8 bits first."
            )
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("The image contains NaN or infinite values.")
        low, high = array.min(), array.max()
        if low >= 0 and high <= 1:
            return np.rint(array * 255).astype(np.uint8)
        if low >= 0 and high <= 255 and np.array_equal(array, np.round(array)):
            return array.astype(np.uint8)
        raise ValueError(
            f"Float image values must lie in [0, 1] (or be whole numbers in [0, 255]); got [{low}, {high}]. "
            "Pass unnormalised pixels: this processor normalises them itself."
        )
    raise ValueError(f"Unsupported image dtype {array.dtype}: pass uint8, integer or float pixels.")


# PIL modes whose pixels do not fit 8 bits (16-bit PNG/TIFF, 32-bit integer, float): PIL's RGB conversion would clip
# them to white, so they are scaled to 8 bits first.
_WIDE_PIL_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _wide_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Pixels of a 16/32-bit or float PIL image as 8 bits: 16-bit values scaled by 255/65535 (a 32-bit image whose
    values fit 16 bits is read as 16-bit), float pixels by the rules of :func:`_to_uint8`."""
    if mode == "F":
        return _to_uint8(array.astype(np.float32))
    array = array.astype(np.int64)
    low, high = int(array.min()), int(array.max())
    if mode == "I" and low >= 0 and high <= 255:
        return array.astype(np.uint8)
    if low < 0 or high > 65535:
        raise ValueError(
            f"a {mode!r} image with values in [{low}, {high}] does not fit 16 bits; scale it to 8 or 16 bits first"
        )
    return np.rint(array * (255 / 65535)).astype(np.uint8)


class VlpImageProcessorBase(ImageStructureHookMixin, PilBackend):
    """Validation, resize, crop, RGB conversion, rescale and normalisation as the originals' torchvision transforms.

    Accepts PIL images, numpy arrays and torch tensors ((H, W), (H, W, C) or (C, H, W) with 1, 3 or 4 channels;
    4-D arrays are batches), lists of them, and paths/URLs. ``convert_rgb_before_resize`` (a class setting, not saved
    with the processor) converts to RGB before resizing instead of after cropping.
    """

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    convert_rgb_before_resize = False

    def flatten_images(self, images: Any, expected_ndims: int = 3) -> list[Any]:
        """Flatten the input into a list of single images, with clear errors for anything that is not one."""
        flat = []
        self._collect_images(images, flat, depth=0)
        if not flat:
            raise ValueError("No images were given: pass at least one image.")
        return flat

    def _collect_images(self, item: Any, flat: list[Any], depth: int) -> None:
        if isinstance(item, (list, tuple)):
            if depth >= 2:
                raise ValueError("Images may be nested at most two lists deep (a batch of lists of images).")
            for element in item:
                self._collect_images(element, flat, depth + 1)
            return
        if isinstance(item, (str, Path)):
            flat.append(load_image(str(item)))
            return
        if isinstance(item, PIL.Image.Image):
            flat.append(item)
            return
        if isinstance(item, (np.ndarray, torch.Tensor)):
            if item.ndim == 4 and depth == 0:
                flat.extend(item[index] for index in range(item.shape[0]))
                return
            if item.ndim not in (2, 3):
                raise ValueError(
                    f"Each image must be 2-D (H, W) or 3-D (H, W, C) / (C, H, W); got shape {tuple(item.shape)}. "
                    "A 4-D array is accepted only on its own, as a batch of 3-D images."
                )
            flat.append(item)
            return
        raise TypeError(
            f"Unsupported image type {type(item).__name__}: pass PIL images, numpy arrays, torch tensors, "
            "paths or URLs (or a list of them)."
        )

    def process_image(
        self,
        image: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs: Any,
    ) -> PIL.Image.Image:
        """Validate one image and return it as a PIL image: in its own mode (RGB conversion happens after the crop), or
        already RGB when ``convert_rgb_before_resize`` says the original converts first."""
        image = self._to_pil(image, input_data_format)
        if do_convert_rgb and self.convert_rgb_before_resize and image.mode != "RGB":
            return image.convert("RGB")
        return image

    def _to_pil(self, image: Any, input_data_format: str | ChannelDimension | None) -> PIL.Image.Image:
        if isinstance(image, PIL.Image.Image):
            if image.width == 0 or image.height == 0:
                raise ValueError(f"Empty image of size {image.size} (width, height).")
            if image.mode in _WIDE_PIL_MODES:
                return PIL.Image.fromarray(_wide_to_uint8(np.asarray(image), image.mode))
            return image
        prefer_first = isinstance(image, torch.Tensor)
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu()
            if image.is_floating_point():
                image = image.float()
            image = image.numpy()
        shape = tuple(image.shape)
        if 0 in shape:
            raise ValueError(f"Empty image of shape {shape}.")
        if image.ndim == 3:
            if _channel_axis(shape, input_data_format, prefer_first) == 0:
                image = np.moveaxis(image, 0, -1)
            if image.shape[-1] == 1:
                image = image[..., 0]
        # uint8 (H, W), (H, W, 3) and (H, W, 4) become PIL modes L, RGB and RGBA.
        return PIL.Image.fromarray(np.ascontiguousarray(_to_uint8(image)))

    def _preprocess(
        self,
        images: list[PIL.Image.Image],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | int | None,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | list[float] | None,
        image_std: float | list[float] | None,
        do_pad: bool | None,
        pad_size: SizeDict | None,
        return_tensors: str | TensorType | None,
        do_convert_rgb: bool | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Resize and crop on PIL images (as the original), then convert, rescale and normalise as float32 CHW. With
        ``do_pad``, images are zero-padded bottom/right to the batch's largest size (or ``pad_size``), and a class that
        lists ``pixel_mask`` in ``model_input_names`` also gets its 1/0 mask of the real pixels."""
        processed = []
        for image in images:
            if do_resize:
                height, width = self.resized_size(image.height, image.width, size, **kwargs)
                if (height, width) != (image.height, image.width):
                    image = image.resize((width, height), resample=resample)
            if do_center_crop:
                image = center_crop_pil(image, crop_size.height, crop_size.width)
            if do_convert_rgb:
                image = image.convert("RGB")
            pixels = np.asarray(image)
            pixels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
            if do_rescale:
                pixels = self.rescale(pixels, rescale_factor)
            if do_normalize:
                pixels = self.normalize(pixels.astype(np.float32, copy=False), image_mean, image_std)
            processed.append(pixels)
        data = {"pixel_values": processed}
        if do_pad:
            data["pixel_values"], masks = self.pad(processed, pad_size=pad_size, return_mask=True)
            if "pixel_mask" in self.model_input_names:
                data["pixel_mask"] = masks
        return BatchFeature(data=data, tensor_type=return_tensors)

    def resized_size(self, height: int, width: int, size: SizeDict, **kwargs: Any) -> tuple[int, int]:
        """Output (height, width) of the resize step for a ``height`` x ``width`` image (:func:`resized_height_width`);
        ``kwargs`` are the call's other settings. A model with another resize rule overrides this."""
        return resized_height_width(height, width, size)


class SquareResizeImageProcessor(VlpImageProcessorBase):
    """ALBEF's and BLIP's evaluation transform: RGB conversion, square bicubic resize to ``size``, /255, CLIP mean/std.

    Subclasses set the default ``size`` (their pre-training resolution); an int ``size`` means a square.
    """

    size = {"height": 224, "width": 224}
    default_to_square = True
    crop_size = None
    do_center_crop = False
    convert_rgb_before_resize = True


__all__ = ["SquareResizeImageProcessor", "VlpImageProcessorBase", "center_crop_pil", "resized_height_width"]
