"""ALBEF (Li et al., 2021): configuration, models, image processor and processor."""

from .configuration_albef import VlpAlbefConfig, VlpAlbefTextConfig, VlpAlbefVisionConfig
from .gradcam import itm_gradcam, render_gradcam
from .image_processing_albef import VlpAlbefImageProcessor
from .modeling_albef import (
    VlpAlbefForMaskedLM,
    VlpAlbefModel,
    VlpAlbefOutput,
    VlpAlbefPreTrainedModel,
    VlpAlbefTextModel,
    VlpAlbefVisionModel,
)
from .modeling_albef_pretraining import (
    VlpAlbefForImageTextRetrieval,
    VlpAlbefForImageTextRetrievalOutput,
    VlpAlbefForPretraining,
    VlpAlbefForPretrainingOutput,
    VlpAlbefRetrievalFeatures,
    VlpAlbefRetrievalScores,
)
from .modeling_albef_reasoning import (
    NLVR2_LABELS,
    SNLI_VE_LABELS,
    TEXT_ASSIGNMENT_LABELS,
    VlpAlbefClassifierOutput,
    VlpAlbefForTextAssignment,
    VlpAlbefForVisualEntailment,
    VlpAlbefForVisualReasoning,
    VlpAlbefPairedTextModel,
    VlpAlbefTextAssignmentOutput,
)
from .modeling_albef_vqa import (
    VlpAlbefAnswerRanking,
    VlpAlbefForQuestionAnswering,
    VlpAlbefForQuestionAnsweringOutput,
)
from .processing_albef import VlpAlbefProcessor, pre_caption, pre_question
