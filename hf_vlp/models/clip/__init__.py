"""CLIP (Radford et al., 2021): configuration, models, image processor and processor."""

from .configuration_clip import CLIP_PRESETS, VlpClipConfig, VlpClipTextConfig, VlpClipVisionConfig
from .image_processing_clip import VlpClipImageProcessor
from .modeling_clip import (
    VlpClipForImageClassification,
    VlpClipModel,
    VlpClipOutput,
    VlpClipPreTrainedModel,
    VlpClipTextModel,
    VlpClipTextModelWithProjection,
    VlpClipTextModelOutput,
    VlpClipVisionModelOutput,
    VlpClipVisionModel,
    VlpClipVisionModelWithProjection,
)
from .processing_clip import VlpClipProcessor
