"""Config bases shared by the models' towers; ALBEF and BLIP build their towers and objective the same way.

- :class:`TransformerTowerConfig`: the fields every transformer tower has (widths, depth, heads, activation, LayerNorm
  eps, init range), with the check that the heads divide the width (CLIP's towers, and the two below).
- :class:`VisionTowerConfig` / :class:`TextTowerConfig`: the fields of every ViT image tower (image and patch size,
  channels) and of every text tower (vocabulary, positions), with their checks (CLIP's towers subclass these).
- :class:`TimmVitConfig`: the timm-style ViT both use (patch conv with bias, no pre-norm, final norm on every token).
- :class:`BertStyleTextConfig`: the BERT-base text transformer whose layers cross-attend to ``encoder_width`` image
  tokens (ALBEF's xbert fusion layers, BLIP's MED).
- :class:`MomentumContrastiveConfig`: the ``embed_dim`` space, learnable temperature and momentum-distillation
  settings of the top-level config, which keeps the text tower's ``encoder_width`` equal to the vision width.

Each model's config subclasses these (``@strict`` dataclass inheritance: a subclass may redeclare a field to change its
default, add fields and extend ``validate_architecture`` through ``super()``) and names its ``model_type``.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig


def check_heads_divide_width(config: PretrainedConfig) -> None:
    """``hidden_size`` must split evenly over ``num_attention_heads``."""
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads {config.num_attention_heads}"
        )


@strict
class TransformerTowerConfig(PretrainedConfig):
    """Fields of every transformer tower (defaults: BERT-base / ViT-B); subclasses redeclare a field to change its
    default and add their own."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02

    def validate_architecture(self) -> None:
        check_heads_divide_width(self)


def check_patch_grid(config: PretrainedConfig) -> None:
    """``image_size`` must be a multiple of ``patch_size`` (a whole grid of patches)."""
    if config.image_size % config.patch_size:
        raise ValueError(f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")


@strict
class VisionTowerConfig(TransformerTowerConfig):
    """Fields of a ViT image tower (defaults: ViT-B/16 at 224 px); ``image_size`` must be a multiple of
    ``patch_size``."""

    base_config_key = "vision_config"

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    attention_dropout: float = 0.0

    def validate_architecture(self) -> None:
        super().validate_architecture()
        check_patch_grid(self)


@strict
class TimmVitConfig(VisionTowerConfig):
    """timm-style ViT-B/16 (exact GELU, LayerNorm eps 1e-6)."""

    layer_norm_eps: float = 1e-6


@strict
class TextTowerConfig(TransformerTowerConfig):
    """Fields of a text tower: a ``vocab_size`` token embedding and ``max_position_embeddings`` learned positions
    (defaults: BERT-base)."""

    base_config_key = "text_config"

    vocab_size: int = 30522
    max_position_embeddings: int = 512


@strict
class BertStyleTextConfig(TextTowerConfig):
    """BERT-base text transformer whose cross-attention reads ``encoder_width`` memory tokens (the image tokens)."""

    encoder_width: int = 768
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1


@strict
class MomentumContrastiveConfig(PretrainedConfig):
    """Top-level settings of a momentum-contrastive model with ``vision_config`` and ``text_config`` sub-configs.

    ``temp`` is the learnable softmax temperature (logits = similarity / temp), clamped to ``[temp_min, temp_max]`` in
    training as the originals do. ``queue_size``, ``momentum`` and ``alpha`` drive the momentum distillation;
    ``itm_negative_eps`` is added to the ITM hard-negative sampling weights."""

    embed_dim: int = 256
    temp: float = 0.07
    temp_min: float = 0.001
    temp_max: float = 0.5
    queue_size: int = 65536
    momentum: float = 0.995
    alpha: float = 0.4
    itm_negative_eps: float = 0.0
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        # the text tower's cross-attention key/value projections read the image tokens
        self.text_config.encoder_width = self.vision_config.hidden_size

    def validate_architecture(self) -> None:
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")
        if not 0 < self.temp_min <= self.temp <= self.temp_max:
            raise ValueError(
                f"temp {self.temp} must lie in [temp_min, temp_max] = [{self.temp_min}, {self.temp_max}] (both > 0)"
            )
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be positive, got {self.queue_size}")
        for name in ("momentum", "alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.itm_negative_eps < 0:
            raise ValueError(f"itm_negative_eps must be >= 0, got {self.itm_negative_eps}")


__all__ = [
    "BertStyleTextConfig",
    "MomentumContrastiveConfig",
    "TextTowerConfig",
    "TimmVitConfig",
    "TransformerTowerConfig",
    "VisionTowerConfig",
    "check_heads_divide_width",
    "check_patch_grid",
]
