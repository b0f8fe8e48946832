"""Image processor reproducing ALBEF's evaluation transform pixel for pixel.

The original (salesforce/ALBEF, every ``create_dataset`` test transform) opens the image, converts it to RGB, then
runs ``Resize((res, res), interpolation=BICUBIC)``, ``ToTensor()`` and ``Normalize`` with the CLIP mean/std: the shared
:class:`~hf_vlp.models.image_processing_utils.SquareResizeImageProcessor`, at ALBEF's resolution.
"""

from __future__ import annotations

from ..image_processing_utils import SquareResizeImageProcessor

# Pretraining resolution of the released ALBEF checkpoints (configs/Pretrain.yaml); the fine-tuned ones use 384.
DEFAULT_IMAGE_SIZE = 256


class VlpAlbefImageProcessor(SquareResizeImageProcessor):
    """ALBEF image processor: RGB conversion, square bicubic resize to ``size``, /255, CLIP mean/std.

    ``size`` defaults to 256 px (``VlpAlbefConfig``'s vision ``image_size``, the pretraining resolution); pass
    ``size=384`` for the fine-tuned checkpoints (retrieval, VQA, NLVR2, SNLI-VE). An int means a square.
    Inputs: PIL images, numpy arrays, torch tensors, lists, paths or URLs.
    """

    size = {"height": DEFAULT_IMAGE_SIZE, "width": DEFAULT_IMAGE_SIZE}


__all__ = ["VlpAlbefImageProcessor"]
