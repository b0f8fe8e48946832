"""VLMo configuration (Bao et al., 2022). Defaults reproduce the released VLMo-Base: 12 multiway blocks of width 768
(12 heads, FFN 3072) with a VL-FFN in the top two, BEiT's patch-16 embedding at 224 px, relative positions from one
table shared by every layer (text rows learned for 196 tokens), layer scale 0.1, BERT-uncased text of at most 40
tokens; LayerNorm eps per place as the original (1e-6 blocks and final norm, 1e-12 text embeddings and MLM transform,
1e-5 VQA/NLVR2 classifiers); 3,129 VQAv2 answers."""

from __future__ import annotations

import math
from typing import Any

from huggingface_hub.dataclasses import strict

from ..configuration_towers import TransformerTowerConfig, check_patch_grid

VQA_NUM_LABELS = 3129  # VQAv2 answers seen at least 9 times (the original's vqav2_label_size)
POSITION_EMBEDDING_TYPES = ("relative", "absolute")

# the released variants (microsoft/unilm vlmo/README.md; the sizes live in multiway_transformer.py's timm factories)
VLMO_PRESETS: dict[str, dict[str, Any]] = {
    "base": {},
    "base_plus": {
        "hidden_size": 544,
        "intermediate_size": 2176,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "vl_ffn_start_layer": 21,
        "position_embedding_type": "absolute",
        "layer_scale_init_value": None,
    },
    "large": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "vl_ffn_start_layer": 21,
    },
}


@strict
class VlpVlmoConfig(TransformerTowerConfig):
    """One multiway transformer that is an image encoder, a text encoder or a fusion encoder.

    Blocks: ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads`` (query/value biases, no key bias),
    ``intermediate_size`` experts with exact GELU, ``layer_norm_eps``; a VL-FFN expert in every block from
    ``vl_ffn_start_layer`` on (``num_hidden_layers``: none, as the text-only stage builds it); layer scale starting at
    ``layer_scale_init_value`` (``None``: none, VLMo-Base-plus); stochastic depth up to ``drop_path_rate``.

    Positions: ``"relative"`` (base, large) is one table for every layer with image rows for the
    ``image_size``/``patch_size`` grid and text rows learned for ``relative_position_text_length`` tokens;
    ``"absolute"`` (base-plus) adds learned image and text position embeddings instead.

    Text: BERT's embeddings (``vocab_size`` words, ``type_vocab_size`` token types of which row 0 is always added,
    LayerNorm ``text_layer_norm_eps``, dropout ``embedding_dropout_prob``), at most ``max_text_length`` tokens (the
    processor pads to it). ``modality_type_vocab_size`` rows tell text (0) from image (1) tokens.

    Heads: ``logit_scale_init_value`` for both contrastive temperatures (ln(1/0.07), never clamped, as the original);
    ``mlm_weight`` (0.25), ``mlm_probability`` and ``whole_word_masking`` are the pre-training MLM settings;
    ``retrieval_itm_weight`` adds ITM with hard negatives to retrieval fine-tuning (0: ITC only, as the released
    retrieval models); ``num_labels`` is the VQA answer vocabulary (``id2label`` names the answers).
    """

    model_type = "hf_vlp_vlmo"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    text_layer_norm_eps: float = 1e-12
    mlm_layer_norm_eps: float = 1e-12
    head_layer_norm_eps: float = 1e-5
    vl_ffn_start_layer: int = 10
    layer_scale_init_value: float | None = 0.1
    drop_path_rate: float = 0.1
    embedding_dropout_prob: float = 0.1
    position_embedding_type: str = "relative"
    relative_position_text_length: int = 196
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    vocab_size: int = 30522
    max_text_length: int = 40
    type_vocab_size: int = 2
    modality_type_vocab_size: int = 2
    logit_scale_init_value: float = math.log(1 / 0.07)
    mlm_weight: float = 0.25
    mlm_probability: float = 0.15
    whole_word_masking: bool = True
    retrieval_itm_weight: float = 0.0
    pad_token_id: int | None = 0
    cls_token_id: int | None = 101
    sep_token_id: int | None = 102
    mask_token_id: int | None = 103
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        if "num_labels" not in kwargs and "id2label" not in kwargs and getattr(self, "id2label", None) is None:
            kwargs["num_labels"] = VQA_NUM_LABELS
        super().__post_init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> "VlpVlmoConfig":
        """Config of a released variant: ``"base"``, ``"base_plus"`` or ``"large"`` (keyword arguments override)."""
        if name not in VLMO_PRESETS:
            raise ValueError(f"Unknown VLMo preset {name!r}; choose one of {sorted(VLMO_PRESETS)}")
        return cls(**{**VLMO_PRESETS[name], **kwargs})

    @property
    def uses_relative_positions(self) -> bool:
        return self.position_embedding_type == "relative"

    @property
    def patch_grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    def validate_architecture(self) -> None:
        super().validate_architecture()
        check_patch_grid(self)
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"position_embedding_type must be one of {POSITION_EMBEDDING_TYPES}, got {self.position_embedding_type!r}"
            )
        if not 0 <= self.vl_ffn_start_layer <= self.num_hidden_layers:
            raise ValueError(
                f"vl_ffn_start_layer must lie in [0, num_hidden_layers={self.num_hidden_layers}] (num_hidden_layers: "
                f"no VL-FFN), got {self.vl_ffn_start_layer}"
            )
        if self.uses_relative_positions and self.relative_position_text_length < self.max_text_length:
            raise ValueError(
                f"relative_position_text_length ({self.relative_position_text_length}) must cover max_text_length "
                f"({self.max_text_length}): the text rows of the relative-position table are indexed by offset"
            )
        if self.modality_type_vocab_size < 2:
            raise ValueError(
                f"modality_type_vocab_size must be >= 2 (row 0 text, row 1 image), got {self.modality_type_vocab_size}"
            )
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must lie in (0, 1), got {self.mlm_probability}")
        if self.mlm_weight < 0 or self.retrieval_itm_weight < 0:
            raise ValueError("mlm_weight and retrieval_itm_weight must be >= 0")


__all__ = ["VLMO_PRESETS", "VQA_NUM_LABELS", "VlpVlmoConfig"]
