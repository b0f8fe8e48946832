"""Image processor reproducing VLMo's evaluation transform pixel for pixel.

The original (microsoft/unilm ``vlmo/transforms``, ``square_transform``, the ``val_transform_keys`` default) opens the
image as RGB, then runs ``Resize((size, size), interpolation=BICUBIC)``, ``ToTensor()`` and ``inception_normalize``
(mean = std = 0.5, values in [-1, 1]): the shared
:class:`~hf_vlp.models.image_processing_utils.SquareResizeImageProcessor` with that normalisation. transformers'
``BeitImageProcessor`` with the same settings differs by up to one grey level, hence this processor.
"""

from __future__ import annotations

from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD

from ..image_processing_utils import SquareResizeImageProcessor

# Pre-training resolution (the original config's image_size); fine-tuned checkpoints use 384 (NLVR2, retrieval) or
# 480 (VQA).
DEFAULT_IMAGE_SIZE = 224


class VlpVlmoImageProcessor(SquareResizeImageProcessor):
    """VLMo image processor: RGB conversion, square bicubic resize to ``size``, /255, mean = std = 0.5.

    ``size`` defaults to 224 px (pre-training); pass ``size=384`` (NLVR2, retrieval) or 480 (VQA) for fine-tuned
    checkpoints. An int means a square. Inputs: PIL images, numpy arrays, torch tensors, lists, paths or URLs.
    """

    size = {"height": DEFAULT_IMAGE_SIZE, "width": DEFAULT_IMAGE_SIZE}
    image_mean = IMAGENET_STANDARD_MEAN
    image_std = IMAGENET_STANDARD_STD


__all__ = ["VlpVlmoImageProcessor"]
