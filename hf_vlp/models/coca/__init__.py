"""CoCa: contrastive captioners (Yu et al., 2022), open_clip-compatible."""

from .configuration_coca import (
    COCA_PRESETS,
    VlpCocaConfig,
    VlpCocaDecoderConfig,
    VlpCocaTextConfig,
    VlpCocaVisionConfig,
)
from .modeling_coca import VlpCocaModel, VlpCocaOutput, VlpCocaPreTrainedModel, VlpCocaTextModel, VlpCocaVisionModel
from .modeling_coca_generation import VlpCocaForConditionalGeneration, VlpCocaForConditionalGenerationOutput
from .image_processing_coca import VlpCocaImageProcessor
from .processing_coca import VlpCocaProcessor

__all__ = [
    "COCA_PRESETS",
    "VlpCocaConfig",
    "VlpCocaDecoderConfig",
    "VlpCocaForConditionalGeneration",
    "VlpCocaForConditionalGenerationOutput",
    "VlpCocaImageProcessor",
    "VlpCocaModel",
    "VlpCocaOutput",
    "VlpCocaPreTrainedModel",
    "VlpCocaProcessor",
    "VlpCocaTextConfig",
    "VlpCocaTextModel",
    "VlpCocaVisionConfig",
    "VlpCocaVisionModel",
]
