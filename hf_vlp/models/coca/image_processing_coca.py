"""CoCa's image processor: open_clip's eval transform, which for CoCa is OpenAI CLIP's (bicubic resize of the shorter
side, centre crop, RGB, OpenAI mean/std) at the model's image size."""

from __future__ import annotations

from ..clip.image_processing_clip import VlpClipImageProcessor


class VlpCocaImageProcessor(VlpClipImageProcessor):
    """open_clip's ``image_transform(image_size, is_train=False)`` for CoCa (``resize_mode="shortest"``, bicubic, OpenAI
    mean/std): the steps of :class:`~hf_vlp.models.clip.image_processing_clip.VlpClipImageProcessor`."""


__all__ = ["VlpCocaImageProcessor"]
