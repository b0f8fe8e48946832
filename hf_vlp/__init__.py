"""hf_vlp: vision-language pre-training architectures as first-class transformers models.

Importing the package registers every configuration, model, image processor and processor with the Auto classes.
"""

from .models.clip import (
    CLIP_PRESETS,
    VlpClipConfig,
    VlpClipForImageClassification,
    VlpClipImageProcessor,
    VlpClipModel,
    VlpClipOutput,
    VlpClipPreTrainedModel,
    VlpClipProcessor,
    VlpClipTextConfig,
    VlpClipTextModel,
    VlpClipTextModelWithProjection,
    VlpClipVisionConfig,
    VlpClipVisionModel,
    VlpClipVisionModelWithProjection,
)
from .registration import register_all

register_all()

__version__ = "0.1.0"
