"""BLIP (Li et al., 2022): configuration, models, image processor and processor."""

from .configuration_blip import BLIP_PRESETS, VlpBlipConfig, VlpBlipTextConfig, VlpBlipVisionConfig
from .image_processing_blip import VlpBlipImageProcessor
from .modeling_blip import (
    BEAM_SCORING,
    CAPTION_DECODING,
    VlpBlipForConditionalGeneration,
    VlpBlipForConditionalGenerationOutput,
    VlpBlipModel,
    VlpBlipOutput,
    VlpBlipPreTrainedModel,
    VlpBlipTextModel,
    VlpBlipVisionModel,
)
from .modeling_blip_pretraining import (
    RetrievalScores,
    VlpBlipForImageTextRetrieval,
    VlpBlipForImageTextRetrievalOutput,
    VlpBlipForPretraining,
    VlpBlipForPretrainingOutput,
    VlpBlipMomentumModel,
    VlpBlipRetrievalFeatures,
    encoder_role_modules,
    rerank_top_k,
)
from .modeling_blip_reasoning import (
    PairedCrossAttention,
    VlpBlipForVisualReasoning,
    VlpBlipForVisualReasoningOutput,
    pair_cross_attentions,
    paired_text_state_dict,
)
from .modeling_blip_vqa import (
    ANSWER_DECODING,
    VlpBlipAnswerRanking,
    VlpBlipForQuestionAnswering,
    VlpBlipForQuestionAnsweringOutput,
)
from .processing_blip import (
    VlpBlipProcessor,
    add_blip_special_tokens,
    blip_special_token_ids,
    pre_caption,
    pre_question,
)
