"""hf_vlp: vision-language pre-training architectures as first-class transformers models.

Importing the package registers every configuration, model, image processor and processor with the Auto classes.
"""

from .models.albef import (
    VlpAlbefAnswerRanking,
    VlpAlbefConfig,
    VlpAlbefForImageTextRetrieval,
    VlpAlbefForImageTextRetrievalOutput,
    VlpAlbefForMaskedLM,
    VlpAlbefForPretraining,
    VlpAlbefForTextAssignment,
    VlpAlbefForVisualEntailment,
    VlpAlbefForVisualReasoning,
    VlpAlbefForQuestionAnswering,
    VlpAlbefForQuestionAnsweringOutput,
    VlpAlbefForPretrainingOutput,
    VlpAlbefImageProcessor,
    VlpAlbefModel,
    VlpAlbefOutput,
    VlpAlbefPreTrainedModel,
    VlpAlbefProcessor,
    VlpAlbefRetrievalFeatures,
    VlpAlbefRetrievalScores,
    VlpAlbefTextConfig,
    VlpAlbefTextModel,
    VlpAlbefVisionConfig,
    VlpAlbefVisionModel,
)
from .models.blip import (
    BLIP_PRESETS,
    CAPTION_DECODING,
    VlpBlipConfig,
    VlpBlipForConditionalGeneration,
    VlpBlipForConditionalGenerationOutput,
    VlpBlipForImageTextRetrieval,
    VlpBlipForPretraining,
    VlpBlipForQuestionAnswering,
    VlpBlipForVisualReasoning,
    VlpBlipImageProcessor,
    VlpBlipModel,
    VlpBlipOutput,
    VlpBlipPreTrainedModel,
    VlpBlipProcessor,
    VlpBlipTextConfig,
    VlpBlipTextModel,
    VlpBlipVisionConfig,
    VlpBlipVisionModel,
)
from .models.clip import (
    CLIP_PRESETS,
    VlpClipConfig,
    VlpClipForImageClassification,
    VlpClipImageProcessor,
    VlpClipModel,
    VlpClipOutput,
    VlpClipPreTrainedModel,
    VlpClipProcessor,
    VlpClipTextConfig,
    VlpClipTextModel,
    VlpClipTextModelWithProjection,
    VlpClipVisionConfig,
    VlpClipVisionModel,
    VlpClipVisionModelWithProjection,
)
from .models.coca import (
    COCA_PRESETS,
    VlpCocaConfig,
    VlpCocaDecoderConfig,
    VlpCocaForConditionalGeneration,
    VlpCocaForConditionalGenerationOutput,
    VlpCocaImageProcessor,
    VlpCocaModel,
    VlpCocaOutput,
    VlpCocaPreTrainedModel,
    VlpCocaProcessor,
    VlpCocaTextConfig,
    VlpCocaTextModel,
    VlpCocaVisionConfig,
    VlpCocaVisionModel,
)
from .models.vilt import (
    VlpViltConfig,
    VlpViltForImageTextRetrieval,
    VlpViltForImageTextRetrievalOutput,
    VlpViltForMaskedLM,
    VlpViltForPretraining,
    VlpViltForPretrainingOutput,
    VlpViltForQuestionAnswering,
    VlpViltForVisualReasoning,
    VlpViltImageProcessor,
    VlpViltModel,
    VlpViltModelOutput,
    VlpViltPreTrainedModel,
    VlpViltProcessor,
    VlpViltVisualReasoningOutput,
)
from .models.vlmo import (
    VlpVlmoConfig,
    VlpVlmoForImageTextRetrieval,
    VlpVlmoForImageTextRetrievalOutput,
    VlpVlmoForMaskedLM,
    VlpVlmoForPretraining,
    VlpVlmoForPretrainingOutput,
    VlpVlmoForQuestionAnswering,
    VlpVlmoForVisualReasoning,
    VlpVlmoImageProcessor,
    VlpVlmoModel,
    VlpVlmoOutput,
    VlpVlmoPreTrainedModel,
    VlpVlmoProcessor,
)
from .integrations.auto import register_all

register_all()

__version__ = "0.1.0"

# Training and evaluation helpers load on first use, so `import hf_vlp` stays as light as transformers itself.
_LAZY = {
    "MomentumCallback": "hf_vlp.training.callbacks",
    "LogitScaleClampCallback": "hf_vlp.training.callbacks",
    "CollatorEpochCallback": "hf_vlp.training.callbacks",
    "ContrastiveCollator": "hf_vlp.training.collators",
    "CaptioningCollator": "hf_vlp.training.collators",
    "load_image_text_dataset": "hf_vlp.training.data",
    "clip_train_transform": "hf_vlp.training.transforms",
    "BadSampleCounter": "hf_vlp.training.data",
    "build_synthetic_dataset": "hf_vlp.synthetic",
    "SYNTHETIC_CLASS_NAMES": "hf_vlp.synthetic",
    "contrastive_loss": "hf_vlp.objectives.losses",
    "FeatureQueue": "hf_vlp.objectives.momentum",
    "zero_shot_accuracy": "hf_vlp.evaluation",
    "retrieval_recall": "hf_vlp.evaluation",
    "make_compute_metrics": "hf_vlp.evaluation",
    "load_metric": "hf_vlp.evaluation",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_vlp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
