"""ALBEF configuration (Li et al., 2021). Defaults reproduce the paper's base model: ViT-B/16 at 256 px + BERT-base
with cross-attention in layers 6-11, 256-d contrastive space, momentum 0.995, queue 65,536, alpha 0.4."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig


@strict
class VlpAlbefVisionConfig(PretrainedConfig):
    """timm-style ViT (``models/vit.py``): patch conv with bias, no pre-norm, LayerNorm eps 1e-6, final norm on all
    tokens, exact GELU."""

    model_type = "hf_vlp_albef_vision"
    base_config_key = "vision_config"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 256
    patch_size: int = 16
    num_channels: int = 3
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    initializer_range: float = 0.02

    def validate_architecture(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")


@strict
class VlpAlbefTextConfig(PretrainedConfig):
    """BERT-base text/fusion encoder (``xbert.py``): layers ``< fusion_layer`` are text-only, the rest cross-attend
    to the image tokens (width ``encoder_width``, kept equal to the vision width by :class:`VlpAlbefConfig`)."""

    model_type = "hf_vlp_albef_text"
    base_config_key = "text_config"

    vocab_size: int = 30522
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    fusion_layer: int = 6
    encoder_width: int = 768
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    cls_token_id: int | None = None  # set from the tokenizer (by name) by the converter / processor
    mask_token_id: int | None = None
    sep_token_id: int | None = None  # ends a VQA answer (the original appends the literal "[SEP]")
    tie_word_embeddings: bool = True

    def validate_architecture(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if not 0 <= self.fusion_layer <= self.num_hidden_layers:
            raise ValueError(
                f"fusion_layer must be between 0 and num_hidden_layers ({self.num_hidden_layers}), got {self.fusion_layer}"
            )


@strict
class VlpAlbefConfig(PretrainedConfig):
    """ALBEF: image and text towers aligned in an ``embed_dim`` space, fused by the text encoder's upper layers.

    ``temp`` is the learnable softmax temperature (logits = similarity / temp), clamped to ``[temp_min, temp_max]``
    during pretraining as the original does. ``queue_size``, ``momentum``, ``alpha`` and ``mlm_probability`` are the
    pretraining settings of the momentum-distillation objective. ``itm_negative_eps`` is added to the hard-negative
    sampling weights (0 as the original; a small value keeps sampling defined once the softmax underflows).
    """

    model_type = "hf_vlp_albef"
    sub_configs_defaults = {"vision_config": VlpAlbefVisionConfig, "text_config": VlpAlbefTextConfig}

    text_config: dict | VlpAlbefTextConfig | None = None
    vision_config: dict | VlpAlbefVisionConfig | None = None
    embed_dim: int = 256
    temp: float = 0.07
    temp_min: float = 0.001
    temp_max: float = 0.5
    queue_size: int = 65536
    momentum: float = 0.995
    alpha: float = 0.4
    mlm_probability: float = 0.15
    itm_negative_eps: float = 0.0
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        # the fusion layers' key/value projections read the image tokens
        self.text_config.encoder_width = self.vision_config.hidden_size

    def validate_architecture(self) -> None:
        if not 0 < self.temp_min <= self.temp <= self.temp_max:
            raise ValueError(
                f"temp {self.temp} must lie in [temp_min, temp_max] = [{self.temp_min}, {self.temp_max}] (both > 0)"
            )
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be positive, got {self.queue_size}")
        if not 0.0 <= self.momentum <= 1.0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"momentum and alpha must lie in [0, 1], got {self.momentum} and {self.alpha}")
