"""CoCa configuration (Yu et al., 2022). Defaults reproduce open_clip's ``coca_ViT-B-32``, the base CoCa with open
weights (Google released none); :meth:`VlpCocaConfig.from_preset` also gives ``coca_ViT-L-14`` and the paper's
CoCa-Base layout."""

from __future__ import annotations

import math
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from ..clip.configuration_clip import VlpClipTextConfig
from ..configuration_towers import TransformerTowerConfig, VisionTowerConfig

# "single": open_clip's one pooler with N queries, query 0 -> contrastive embedding, queries 1.. -> decoder memory.
# "parallel": the paper's task-specific pooling, a 1-query contrastive pooler beside an N-query decoder pooler.
POOLER_LAYOUTS = ("single", "parallel")


@strict
class VlpCocaVisionConfig(VisionTowerConfig):
    """ViT (exact GELU, pre-norm) followed by the attentional pooler.

    ``pooler_num_queries`` learned queries of width ``projection_dim`` attend with ``pooler_num_attention_heads`` heads
    over every ViT token; ``pooler_layout`` says how they split between the contrastive embedding and the decoder's
    cross-attention memory (:data:`POOLER_LAYOUTS`).
    """

    model_type = "hf_vlp_coca_vision"

    patch_size: int = 32
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512
    pooler_num_queries: int = 256
    pooler_num_attention_heads: int = 8
    pooler_layout: str = "single"

    def validate_architecture(self) -> None:
        super().validate_architecture()
        if self.pooler_layout not in POOLER_LAYOUTS:
            raise ValueError(f"pooler_layout must be one of {POOLER_LAYOUTS}, got {self.pooler_layout!r}")
        minimum = 2 if self.pooler_layout == "single" else 1
        if self.pooler_num_queries < minimum:
            raise ValueError(
                f"the {self.pooler_layout!r} pooler layout needs at least {minimum} queries (one contrastive query "
                f"and one decoder token in the single layout), got pooler_num_queries={self.pooler_num_queries}"
            )

    @property
    def num_image_tokens(self) -> int:
        """How many image tokens the multimodal decoder cross-attends to."""
        return self.pooler_num_queries - 1 if self.pooler_layout == "single" else self.pooler_num_queries


@strict
class VlpCocaTextConfig(VlpClipTextConfig):
    """Unimodal text decoder: CLIP's causal text tower (exact GELU) with a class token appended after
    ``max_position_embeddings`` text positions (so ``max_position_embeddings + 1`` learned positions); open_clip's
    context of 76 tokens, padded with ``pad_token_id`` 0."""

    model_type = "hf_vlp_coca_text"

    max_position_embeddings: int = 76
    hidden_act: str = "gelu"

    def validate_architecture(self) -> None:
        super().validate_architecture()
        for name in ("pad_token_id", "bos_token_id"):
            value = getattr(self, name)
            if value is None or not 0 <= value < self.vocab_size:
                raise ValueError(f"{name} must be an id below vocab_size {self.vocab_size}, got {value}")


@strict
class VlpCocaDecoderConfig(TransformerTowerConfig):
    """Multimodal text decoder: each layer a causal self-attention block then a cross-attention block over the image
    tokens (keys/values normalised by their own LayerNorm), each with its MLP; then a final norm and a bias-free
    projection to the vocabulary."""

    model_type = "hf_vlp_coca_decoder"
    base_config_key = "decoder_config"

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    memory_size: int = 512


def _tower(width: int, layers: int, heads: int) -> dict[str, Any]:
    return dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads)


# name -> (projection_dim, vision, text, decoder); open_clip's model_configs/coca_*.json and the paper's Table 1.
COCA_PRESETS: dict[str, tuple[int, dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "coca_ViT-B-32": (
        512, dict(_tower(768, 12, 12), patch_size=32, image_size=224), _tower(512, 12, 8), _tower(512, 12, 8)
    ),
    "coca_ViT-L-14": (
        768, dict(_tower(1024, 24, 16), patch_size=14, image_size=224), _tower(768, 12, 12), _tower(768, 12, 12)
    ),
    # CoCa-Base as the paper describes it (no released weights): 288 px at patch 18, a 64k vocabulary and the
    # paper's two task-specific poolers.
    "paper_base": (
        768,
        dict(_tower(768, 12, 12), patch_size=18, image_size=288, pooler_layout="parallel"),
        dict(_tower(768, 12, 12), vocab_size=64000, bos_token_id=63998, eos_token_id=63999),
        dict(_tower(768, 12, 12), vocab_size=64000),
    ),
}


@strict
class VlpCocaConfig(PretrainedConfig):
    """CoCa: image tower + attentional pooler, unimodal text decoder, multimodal text decoder.

    ``projection_dim`` is the contrastive space and the width of the pooled image tokens; the text width must equal
    the decoder width (the decoder reads the unimodal decoder's token states unprojected). The training loss is
    ``contrastive_loss_weight * contrastive + caption_loss_weight * caption`` (1.0 and 2.0, the paper's and
    open_clip's). ``logit_scale_init_value`` is ln(1/0.07), clamped at ``logit_scale_max`` (ln 100) during training.
    """

    model_type = "hf_vlp_coca"
    sub_configs_defaults = {
        "vision_config": VlpCocaVisionConfig,
        "text_config": VlpCocaTextConfig,
        "decoder_config": VlpCocaDecoderConfig,
    }

    text_config: dict | VlpCocaTextConfig | None = None
    vision_config: dict | VlpCocaVisionConfig | None = None
    decoder_config: dict | VlpCocaDecoderConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = math.log(1 / 0.07)
    logit_scale_max: float = math.log(100)
    contrastive_loss_weight: float = 1.0
    caption_loss_weight: float = 2.0

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.text_config.projection_dim = self.projection_dim
        self.vision_config.projection_dim = self.projection_dim
        self.decoder_config.memory_size = self.projection_dim

    def validate_architecture(self) -> None:
        text, decoder = self.text_config, self.decoder_config
        if text.hidden_size != decoder.hidden_size:
            raise ValueError(
                f"the multimodal decoder reads the text decoder's states: decoder_config.hidden_size "
                f"({decoder.hidden_size}) must equal text_config.hidden_size ({text.hidden_size})"
            )
        if text.vocab_size != decoder.vocab_size:
            raise ValueError(
                f"the decoder predicts the text tokens: decoder_config.vocab_size ({decoder.vocab_size}) must equal "
                f"text_config.vocab_size ({text.vocab_size})"
            )
        # checked here, after projection_dim reached the vision config (its own default is the base model's 512)
        heads = self.vision_config.pooler_num_attention_heads
        if self.projection_dim % heads:
            raise ValueError(
                f"the attentional pooler's queries are projection_dim ({self.projection_dim}) wide: it must be a "
                f"multiple of vision_config.pooler_num_attention_heads ({heads})"
            )
        for name in ("contrastive_loss_weight", "caption_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> "VlpCocaConfig":
        """Config of a released or described model: ``"coca_ViT-B-32"``, ``"coca_ViT-L-14"`` (open_clip; their MSCOCO
        fine-tunes share the architecture) or ``"paper_base"``."""
        if name not in COCA_PRESETS:
            raise ValueError(f"Unknown CoCa preset {name!r}; choose one of {sorted(COCA_PRESETS)}")
        projection_dim, vision, text, decoder = COCA_PRESETS[name]
        return cls(
            projection_dim=projection_dim,
            vision_config=dict(vision),
            text_config=dict(text),
            decoder_config=dict(decoder),
            **kwargs,
        )


__all__ = [
    "COCA_PRESETS",
    "POOLER_LAYOUTS",
    "VlpCocaConfig",
    "VlpCocaDecoderConfig",
    "VlpCocaTextConfig",
    "VlpCocaVisionConfig",
]
