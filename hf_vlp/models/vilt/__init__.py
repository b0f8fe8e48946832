"""ViLT (Kim et al., 2021): configuration, models, image processor and processor."""

from .configuration_vilt import VQA_NUM_LABELS, VlpViltConfig
from .modeling_vilt import (
    VlpViltForMaskedLM,
    VlpViltForQuestionAnswering,
    VlpViltForVisualReasoning,
    VlpViltModel,
    VlpViltModelOutput,
    VlpViltPreTrainedModel,
    VlpViltVisualReasoningOutput,
)
from .modeling_vilt_pretraining import (
    VlpViltForImageTextRetrieval,
    VlpViltForImageTextRetrievalOutput,
    VlpViltForPretraining,
    VlpViltForPretrainingOutput,
)
from .image_processing_vilt import VlpViltImageProcessor
from .processing_vilt import VlpViltProcessor
