"""ALBEF (Li et al., 2021): configuration, models, image processor and processor."""

from .configuration_albef import VlpAlbefConfig, VlpAlbefTextConfig, VlpAlbefVisionConfig
from .image_processing_albef import VlpAlbefImageProcessor
from .modeling_albef import (
    VlpAlbefForMaskedLM,
    VlpAlbefForPretraining,
    VlpAlbefForPretrainingOutput,
    VlpAlbefModel,
    VlpAlbefOutput,
    VlpAlbefPreTrainedModel,
    VlpAlbefTextModel,
    VlpAlbefVisionModel,
)
from .processing_albef import VlpAlbefProcessor, pre_caption, pre_question
