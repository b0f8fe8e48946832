"""ALBEF (Li et al., 2021): configuration and models."""

from .configuration_albef import VlpAlbefConfig, VlpAlbefTextConfig, VlpAlbefVisionConfig
from .modeling_albef import (
    VlpAlbefForMaskedLM,
    VlpAlbefModel,
    VlpAlbefOutput,
    VlpAlbefPreTrainedModel,
    VlpAlbefTextModel,
    VlpAlbefVisionModel,
)
