"""Registers every hf_vlp config, model and processor with transformers' Auto classes (run on ``import hf_vlp``)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    PretrainedConfig,
    PreTrainedModel,
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
from ..models.coca import (
    VlpCocaConfig,
    VlpCocaDecoderConfig,
    VlpCocaForConditionalGeneration,
    VlpCocaImageProcessor,
    VlpCocaModel,
    VlpCocaProcessor,
    VlpCocaTextConfig,
    VlpCocaTextModel,
    VlpCocaVisionConfig,
    VlpCocaVisionModel,
)
from ..models.vilt import (
    VlpViltConfig,
    VlpViltForMaskedLM,
    VlpViltForPretraining,
    VlpViltForQuestionAnswering,
    VlpViltImageProcessor,
    VlpViltModel,
    VlpViltProcessor,
)
from ..models.vlmo import (
    VlpVlmoConfig,
    VlpVlmoForMaskedLM,
    VlpVlmoForPretraining,
    VlpVlmoForQuestionAnswering,
    VlpVlmoImageProcessor,
    VlpVlmoModel,
    VlpVlmoProcessor,
)
from .pipelines import register_pipelines


@dataclass(frozen=True)
class ArchitectureRegistration:
    """What one architecture registers: its configs, their base models, task heads and processors. A single-stream
    architecture (ViLT) has no tower sub-configs and leaves ``vision_*``/``text_*`` unset; ``other_configs`` are
    sub-configs without a model of their own (CoCa's multimodal decoder), registered with ``AutoConfig`` only."""

    config: type[PretrainedConfig]
    vision_config: type[PretrainedConfig] | None
    text_config: type[PretrainedConfig] | None
    model: type[PreTrainedModel]
    vision_model: type[PreTrainedModel] | None
    text_model: type[PreTrainedModel] | None
    image_processor: type
    processor: type
    # (Auto class, head class) pairs registered on the composite config
    heads: tuple[tuple[type, type[PreTrainedModel]], ...] = field(default_factory=tuple)
    other_configs: tuple[type[PretrainedConfig], ...] = ()

    def configs(self) -> list[type[PretrainedConfig]]:
        """The composite config, the tower configs and the other sub-configs the architecture has."""
        return [self.config, *(config for config, _ in self.tower_pairs()), *self.other_configs]

    def tower_pairs(self) -> list[tuple[type[PretrainedConfig], type[PreTrainedModel]]]:
        """(tower config, tower model) of the architectures with separate towers."""
        pairs = ((self.vision_config, self.vision_model), (self.text_config, self.text_model))
        return [(config, model) for config, model in pairs if config is not None and model is not None]


ARCHITECTURES: tuple[ArchitectureRegistration, ...] = (
    ArchitectureRegistration(
        VlpClipConfig, VlpClipVisionConfig, VlpClipTextConfig,
        VlpClipModel, VlpClipVisionModel, VlpClipTextModel,
        VlpClipImageProcessor, VlpClipProcessor,
        heads=(
            (AutoModelForZeroShotImageClassification, VlpClipModel),
            (AutoModelForImageClassification, VlpClipForImageClassification),
        ),
    ),
    ArchitectureRegistration(
        VlpAlbefConfig, VlpAlbefVisionConfig, VlpAlbefTextConfig,
        VlpAlbefModel, VlpAlbefVisionModel, VlpAlbefTextModel,
        VlpAlbefImageProcessor, VlpAlbefProcessor,
        heads=(
            (AutoModelForPreTraining, VlpAlbefForPretraining),
            (AutoModelForMaskedLM, VlpAlbefForMaskedLM),
            (AutoModelForVisualQuestionAnswering, VlpAlbefForQuestionAnswering),
        ),
    ),
    ArchitectureRegistration(
        VlpBlipConfig, VlpBlipVisionConfig, VlpBlipTextConfig,
        VlpBlipModel, VlpBlipVisionModel, VlpBlipTextModel,
        VlpBlipImageProcessor, VlpBlipProcessor,
        heads=(
            (AutoModelForZeroShotImageClassification, VlpBlipModel),
            (AutoModelForImageTextToText, VlpBlipForConditionalGeneration),
            (AutoModelForVisualQuestionAnswering, VlpBlipForQuestionAnswering),
            (AutoModelForPreTraining, VlpBlipForPretraining),
        ),
    ),
    ArchitectureRegistration(
        VlpViltConfig, None, None,
        VlpViltModel, None, None,
        VlpViltImageProcessor, VlpViltProcessor,
        heads=(
            (AutoModelForPreTraining, VlpViltForPretraining),
            (AutoModelForMaskedLM, VlpViltForMaskedLM),
            (AutoModelForVisualQuestionAnswering, VlpViltForQuestionAnswering),
        ),
    ),
    ArchitectureRegistration(
        VlpVlmoConfig, None, None,
        VlpVlmoModel, None, None,
        VlpVlmoImageProcessor, VlpVlmoProcessor,
        heads=(
            (AutoModelForZeroShotImageClassification, VlpVlmoModel),
            (AutoModelForPreTraining, VlpVlmoForPretraining),
            (AutoModelForMaskedLM, VlpVlmoForMaskedLM),
            (AutoModelForVisualQuestionAnswering, VlpVlmoForQuestionAnswering),
        ),
    ),
    ArchitectureRegistration(
        VlpCocaConfig, VlpCocaVisionConfig, VlpCocaTextConfig,
        VlpCocaModel, VlpCocaVisionModel, VlpCocaTextModel,
        VlpCocaImageProcessor, VlpCocaProcessor,
        heads=(
            (AutoModelForZeroShotImageClassification, VlpCocaModel),
            (AutoModelForImageTextToText, VlpCocaForConditionalGeneration),
        ),
        other_configs=(VlpCocaDecoderConfig,),
    ),
)


def register_architecture(arch: ArchitectureRegistration) -> None:
    """Register one architecture's configs, models, heads and processors (``exist_ok`` keeps it idempotent)."""
    for config in arch.configs():
        AutoConfig.register(config.model_type, config, exist_ok=True)
    AutoModel.register(arch.config, arch.model, exist_ok=True)
    for config, model in arch.tower_pairs():
        AutoModel.register(config, model, exist_ok=True)
    for auto_class, head in arch.heads:
        auto_class.register(arch.config, head, exist_ok=True)
    backends = {"pil": arch.image_processor, "torchvision": arch.image_processor}
    for config in (arch.config, *([arch.vision_config] if arch.vision_config is not None else [])):
        AutoImageProcessor.register(config, image_processor_classes=backends, exist_ok=True)
    AutoProcessor.register(arch.config, arch.processor, exist_ok=True)


def register_all() -> None:
    """Idempotent: safe to call again (e.g. after ``importlib.reload``)."""
    for arch in ARCHITECTURES:
        register_architecture(arch)
    register_pipelines()
