"""VLMo (Bao et al., 2022): configuration, models, image processor and processor."""

from .configuration_vlmo import VLMO_PRESETS, VQA_NUM_LABELS, VlpVlmoConfig
from .modeling_vlmo import (
    MultiwayOutput,
    VlpVlmoForMaskedLM,
    VlpVlmoForQuestionAnswering,
    VlpVlmoForVisualReasoning,
    VlpVlmoModel,
    VlpVlmoOutput,
    VlpVlmoPreTrainedModel,
)
from .modeling_vlmo_pretraining import (
    VlpVlmoForImageTextRetrieval,
    VlpVlmoForImageTextRetrievalOutput,
    VlpVlmoForPretraining,
    VlpVlmoForPretrainingOutput,
)
from .image_processing_vlmo import VlpVlmoImageProcessor
from .processing_vlmo import VlpVlmoProcessor

__all__ = [
    "MultiwayOutput",
    "VLMO_PRESETS",
    "VQA_NUM_LABELS",
    "VlpVlmoConfig",
    "VlpVlmoForImageTextRetrieval",
    "VlpVlmoForImageTextRetrievalOutput",
    "VlpVlmoForMaskedLM",
    "VlpVlmoForPretraining",
    "VlpVlmoForPretrainingOutput",
    "VlpVlmoForQuestionAnswering",
    "VlpVlmoForVisualReasoning",
    "VlpVlmoImageProcessor",
    "VlpVlmoModel",
    "VlpVlmoOutput",
    "VlpVlmoPreTrainedModel",
    "VlpVlmoProcessor",
]
