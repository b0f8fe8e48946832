"""Image processor reproducing BLIP's evaluation transform pixel for pixel.

The original (salesforce/BLIP ``data/__init__.py`` test transforms, ``predict.py``) opens the image as RGB, then runs
``Resize((image_size, image_size), interpolation=BICUBIC)``, ``ToTensor()`` and ``Normalize`` with the CLIP mean/std:
ALBEF's transform, the shared :class:`~hf_vlp.models.image_processing_utils.SquareResizeImageProcessor`; only the
default resolution differs.
"""

from __future__ import annotations

from ..image_processing_utils import SquareResizeImageProcessor

# Pre-training resolution (configs/pretrain.yaml, VlpBlipConfig's vision image_size); fine-tuned checkpoints use 384
# (captioning, retrieval, NLVR2) or 480 (VQA).
DEFAULT_IMAGE_SIZE = 224


class VlpBlipImageProcessor(SquareResizeImageProcessor):
    """BLIP image processor: RGB conversion, square bicubic resize to ``size``, /255, CLIP mean/std.

    ``size`` defaults to 224 px; pass ``size=384`` (or 480 for VQA) for fine-tuned checkpoints - the converter writes
    the checkpoint's resolution. Inputs: PIL images, numpy arrays, torch tensors, lists, paths or URLs.
    """

    size = {"height": DEFAULT_IMAGE_SIZE, "width": DEFAULT_IMAGE_SIZE}


__all__ = ["VlpBlipImageProcessor"]
