"""BLIP (Li et al., 2022): configuration, models, image processor and processor."""

from .configuration_blip import BLIP_PRESETS, VlpBlipConfig, VlpBlipTextConfig, VlpBlipVisionConfig
from .image_processing_blip import VlpBlipImageProcessor
from .modeling_blip import (
    VlpBlipForConditionalGeneration,
    VlpBlipForConditionalGenerationOutput,
    VlpBlipModel,
    VlpBlipOutput,
    VlpBlipPreTrainedModel,
    VlpBlipTextModel,
    VlpBlipVisionModel,
    shifted_lm_loss,
)
from .processing_blip import (
    VlpBlipProcessor,
    add_blip_special_tokens,
    blip_special_token_ids,
    pre_caption,
    pre_question,
)
