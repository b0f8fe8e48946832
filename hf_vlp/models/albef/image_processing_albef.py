"""Image processor reproducing ALBEF's evaluation transform pixel for pixel.

The original (salesforce/ALBEF, every `create_dataset` test transform) opens the image, converts it to RGB, then
runs `Resize((res, res), interpolation=BICUBIC)`, `ToTensor()` and `Normalize` with the CLIP mean/std. The
validation, resizing and normalisation are the CLIP processor's (shared by subclassing); the differences are a
square resize without centre crop and the RGB conversion happening before the resize, as in the original.
"""

from __future__ import annotations

from typing import Any

import PIL.Image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ChannelDimension, PILImageResampling

from ..clip.image_processing_clip import VlpClipImageProcessor

# Pretraining resolution of the released ALBEF checkpoints (configs/Pretrain.yaml); the fine-tuned ones use 384.
DEFAULT_IMAGE_SIZE = 256


class VlpAlbefImageProcessor(VlpClipImageProcessor):
    """ALBEF image processor: RGB conversion, square bicubic resize to `size`, /255, CLIP mean/std.

    `size` defaults to 256 px (`VlpAlbefConfig`'s vision `image_size`, the pretraining resolution); pass
    `size=384` for the fine-tuned checkpoints (retrieval, VQA, NLVR2, SNLI-VE). An int means a square.
    Inputs are those of `VlpClipImageProcessor`: PIL images, numpy arrays, torch tensors, lists, paths or URLs.
    """

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"height": DEFAULT_IMAGE_SIZE, "width": DEFAULT_IMAGE_SIZE}
    default_to_square = True
    crop_size = None
    do_resize = True
    do_center_crop = False
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    def process_image(
        self,
        image: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs: Any,
    ) -> PIL.Image.Image:
        """Validate one image and, like the original's `Image.open(...).convert('RGB')`, convert it before resizing."""
        image = super().process_image(
            image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, **kwargs
        )
        return image.convert("RGB") if do_convert_rgb and image.mode != "RGB" else image


__all__ = ["VlpAlbefImageProcessor"]
