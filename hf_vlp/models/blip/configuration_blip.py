"""BLIP configuration (Li et al., 2022). Defaults reproduce the base model: ViT-B/16 at 224 px (LayerNorm eps 1e-6) +
a BERT-base "MED" text transformer cross-attending in every layer (no token types, vocabulary 30,524 = bert-base-uncased
+ ``[DEC]`` + ``[ENC]``), a 256-d contrastive space, momentum 0.995, queue 57,600, alpha 0.4, label smoothing 0.1."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

# the text config's special-token fields, each set from the tokenizer by the token's name (see VlpBlipProcessor)
SPECIAL_TOKEN_FIELDS = ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id", "bos_token_id", "enc_token_id")


@strict
class VlpBlipVisionConfig(PretrainedConfig):
    """timm-style ViT (BLIP's ``models/vit.py``): patch conv with bias, no pre-norm, LayerNorm eps 1e-6, final norm on
    every token, exact GELU."""

    model_type = "hf_vlp_blip_vision"
    base_config_key = "vision_config"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 224
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
class VlpBlipTextConfig(PretrainedConfig):
    """BERT-base MED text transformer (``med.py``): every layer cross-attends to ``encoder_width`` memory tokens (the
    image tokens; kept equal to the vision width by :class:`VlpBlipConfig`), no token-type embeddings.

    Special-token ids are fields so the model can put ``[ENC]`` (``enc_token_id``) or ``[DEC]`` (``bos_token_id``) at
    position 0 itself, as the original does. Defaults are bert-base-uncased's ids plus BLIP's two added tokens; the
    converter and ``VlpBlipProcessor.special_token_ids()`` give the values of another vocabulary, found by name.
    """

    model_type = "hf_vlp_blip_text"
    base_config_key = "text_config"

    vocab_size: int = 30524
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 512
    encoder_width: int = 768
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    pad_token_id: int = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    bos_token_id: int = 30522  # [DEC]
    enc_token_id: int = 30523  # [ENC]

    def validate_architecture(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        ids = {name: getattr(self, name) for name in SPECIAL_TOKEN_FIELDS}
        outside = [f"{name}={value}" for name, value in ids.items() if not 0 <= value < self.vocab_size]
        if outside:
            raise ValueError(
                f"special-token ids {', '.join(outside)} are not below vocab_size {self.vocab_size}; set them from your "
                "tokenizer (VlpBlipProcessor.special_token_ids()) when the vocabulary is not bert-base-uncased's."
            )
        if len(set(ids.values())) != len(ids):
            raise ValueError(f"special-token ids must be distinct, got {ids}")


def _vision(width: int, layers: int, heads: int, image_size: int) -> dict[str, Any]:
    return dict(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        patch_size=16,
        image_size=image_size,
    )


# name -> vision config of the released models (``models/vit.py`` create_vit 'base' / 'large'); the text side is always
# BERT-base. Pre-training resolution 224; fine-tuned checkpoints use 384 (captioning, retrieval, NLVR2) or 480 (VQA).
BLIP_PRESETS: dict[str, dict[str, Any]] = {
    "base": _vision(768, 12, 12, 224),
    "large": _vision(1024, 24, 16, 224),
}


@strict
class VlpBlipConfig(PretrainedConfig):
    """BLIP: a ViT and a MED text transformer aligned in an ``embed_dim`` space; the MED's image-grounded encoder scores
    image-text matching and its causal decoder generates captions.

    ``temp`` is the learnable softmax temperature (logits = similarity / temp), clamped to ``[temp_min, temp_max]``
    in pre-training as the original does. ``label_smoothing`` is the LM loss's (0.1 in every original objective).
    ``queue_size``, ``momentum``, ``alpha`` and ``itm_negative_eps`` (added to the hard-negative sampling weights; 1e-4
    in the original pre-training) are pre-training settings.
    """

    model_type = "hf_vlp_blip"
    sub_configs_defaults = {"vision_config": VlpBlipVisionConfig, "text_config": VlpBlipTextConfig}

    text_config: dict | VlpBlipTextConfig | None = None
    vision_config: dict | VlpBlipVisionConfig | None = None
    embed_dim: int = 256
    temp: float = 0.07
    temp_min: float = 0.001
    temp_max: float = 0.5
    queue_size: int = 57600
    momentum: float = 0.995
    alpha: float = 0.4
    itm_negative_eps: float = 1e-4
    label_smoothing: float = 0.1
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        # the cross-attention key/value projections read the image tokens
        self.text_config.encoder_width = self.vision_config.hidden_size

    @classmethod
    def from_preset(cls, name: str, image_size: int | None = None, **kwargs: Any) -> "VlpBlipConfig":
        """Config of a released model size: ``"base"`` (ViT-B/16) or ``"large"`` (ViT-L/16), at 224 px unless
        ``image_size`` is given (e.g. 384 for captioning/retrieval fine-tuning); ``kwargs`` set other fields."""
        if name not in BLIP_PRESETS:
            raise ValueError(f"Unknown BLIP preset {name!r}; choose one of {sorted(BLIP_PRESETS)}")
        vision = dict(BLIP_PRESETS[name])
        if image_size is not None:
            vision["image_size"] = image_size
        return cls(vision_config=vision, **kwargs)

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
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.itm_negative_eps < 0:
            raise ValueError(f"itm_negative_eps must be >= 0, got {self.itm_negative_eps}")
