"""Image processor reproducing openai/CLIP's ``_transform(n_px)`` pixel for pixel: bicubic resize of the shorter side,
centre crop (torchvision's rounding), RGB conversion after the crop, /255, OpenAI mean/std. The steps are those of
:class:`~hf_vlp.models.image_processing_utils.VlpImageProcessorBase`; this class sets CLIP's defaults."""

from __future__ import annotations

from ..image_processing_utils import VlpImageProcessorBase


class VlpClipImageProcessor(VlpImageProcessorBase):
    """CLIP image processor matching openai/CLIP's ``_transform(n_px)`` exactly.

    Steps: bicubic resize of the shorter side to ``size["shortest_edge"]`` on a PIL image in its own mode, centre
    crop to ``crop_size`` with torchvision's rounding, convert to RGB, ``rescale_factor`` (1/255), normalise with the
    OpenAI mean/std. Accepts PIL images, numpy arrays and torch tensors ((H, W), (H, W, C) or (C, H, W) with 1, 3
    or 4 channels; 4-D arrays are batches), lists of them, and paths/URLs.
    """

    size = {"shortest_edge": 224}
    default_to_square = False
    crop_size = {"height": 224, "width": 224}
    do_center_crop = True


__all__ = ["VlpClipImageProcessor"]
