"""Registers every hf_vlp config, model and processor with transformers' Auto classes (run on ``import hf_vlp``)."""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from ..models.albef import (
    VlpAlbefConfig,
    VlpAlbefForMaskedLM,
    VlpAlbefForPretraining,
    VlpAlbefForQuestionAnswering,
    VlpAlbefImageProcessor,
    VlpAlbefModel,
    VlpAlbefProcessor,
    VlpAlbefTextConfig,
    VlpAlbefTextModel,
    VlpAlbefVisionConfig,
    VlpAlbefVisionModel,
)
from ..models.blip import (
    VlpBlipConfig,
    VlpBlipForConditionalGeneration,
    VlpBlipForPretraining,
    VlpBlipForQuestionAnswering,
    VlpBlipImageProcessor,
    VlpBlipModel,
    VlpBlipProcessor,
    VlpBlipTextConfig,
    VlpBlipTextModel,
    VlpBlipVisionConfig,
    VlpBlipVisionModel,
)
from ..models.clip import (
    VlpClipConfig,
    VlpClipForImageClassification,
    VlpClipImageProcessor,
    VlpClipModel,
    VlpClipProcessor,
    VlpClipTextConfig,
    VlpClipTextModel,
    VlpClipVisionConfig,
    VlpClipVisionModel,
)
from .pipelines import register_pipelines


def register_all() -> None:
    """Idempotent: safe to call again (e.g. after ``importlib.reload``)."""
    for config in (VlpClipConfig, VlpClipVisionConfig, VlpClipTextConfig):
        AutoConfig.register(config.model_type, config, exist_ok=True)
    AutoModel.register(VlpClipConfig, VlpClipModel, exist_ok=True)
    AutoModel.register(VlpClipVisionConfig, VlpClipVisionModel, exist_ok=True)
    AutoModel.register(VlpClipTextConfig, VlpClipTextModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(VlpClipConfig, VlpClipModel, exist_ok=True)
    AutoModelForImageClassification.register(VlpClipConfig, VlpClipForImageClassification, exist_ok=True)
    for config in (VlpClipConfig, VlpClipVisionConfig):
        AutoImageProcessor.register(
            config, image_processor_classes={"pil": VlpClipImageProcessor, "torchvision": VlpClipImageProcessor}, exist_ok=True
        )
    AutoProcessor.register(VlpClipConfig, VlpClipProcessor, exist_ok=True)
    for config in (VlpAlbefConfig, VlpAlbefVisionConfig, VlpAlbefTextConfig):
        AutoConfig.register(config.model_type, config, exist_ok=True)
    AutoModel.register(VlpAlbefConfig, VlpAlbefModel, exist_ok=True)
    AutoModel.register(VlpAlbefVisionConfig, VlpAlbefVisionModel, exist_ok=True)
    AutoModel.register(VlpAlbefTextConfig, VlpAlbefTextModel, exist_ok=True)
    AutoModelForPreTraining.register(VlpAlbefConfig, VlpAlbefForPretraining, exist_ok=True)
    AutoModelForMaskedLM.register(VlpAlbefConfig, VlpAlbefForMaskedLM, exist_ok=True)
    AutoModelForVisualQuestionAnswering.register(VlpAlbefConfig, VlpAlbefForQuestionAnswering, exist_ok=True)
    for config in (VlpAlbefConfig, VlpAlbefVisionConfig):
        AutoImageProcessor.register(
            config, image_processor_classes={"pil": VlpAlbefImageProcessor, "torchvision": VlpAlbefImageProcessor}, exist_ok=True
        )
    AutoProcessor.register(VlpAlbefConfig, VlpAlbefProcessor, exist_ok=True)
    for config in (VlpBlipConfig, VlpBlipVisionConfig, VlpBlipTextConfig):
        AutoConfig.register(config.model_type, config, exist_ok=True)
    AutoModel.register(VlpBlipConfig, VlpBlipModel, exist_ok=True)
    AutoModel.register(VlpBlipVisionConfig, VlpBlipVisionModel, exist_ok=True)
    AutoModel.register(VlpBlipTextConfig, VlpBlipTextModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(VlpBlipConfig, VlpBlipModel, exist_ok=True)
    AutoModelForImageTextToText.register(VlpBlipConfig, VlpBlipForConditionalGeneration, exist_ok=True)
    AutoModelForVisualQuestionAnswering.register(VlpBlipConfig, VlpBlipForQuestionAnswering, exist_ok=True)
    AutoModelForPreTraining.register(VlpBlipConfig, VlpBlipForPretraining, exist_ok=True)
    for config in (VlpBlipConfig, VlpBlipVisionConfig):
        AutoImageProcessor.register(
            config, image_processor_classes={"pil": VlpBlipImageProcessor, "torchvision": VlpBlipImageProcessor}, exist_ok=True
        )
    AutoProcessor.register(VlpBlipConfig, VlpBlipProcessor, exist_ok=True)
    register_pipelines()
