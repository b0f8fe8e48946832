"""BLIP configuration (Li et al., 2022). Defaults reproduce the base model: ViT-B/16 at 224 px (LayerNorm eps 1e-6) +
a BERT-base "MED" text transformer cross-attending in every layer (no token types, vocabulary 30,524 = bert-base-uncased
+ ``[DEC]`` + ``[ENC]``), a 256-d contrastive space, momentum 0.995, queue 57,600, alpha 0.4, label smoothing 0.1."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict

from ..configuration_towers import BertStyleTextConfig, MomentumContrastiveConfig, TimmVitConfig

# the text config's special-token fields, each set from the tokenizer by the token's name (see VlpBlipProcessor)
SPECIAL_TOKEN_FIELDS = ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id", "bos_token_id", "enc_token_id")


@strict
class VlpBlipVisionConfig(TimmVitConfig):
    """timm-style ViT (BLIP's ``models/vit.py``): patch conv with bias, no pre-norm, LayerNorm eps 1e-6, final norm on
    every token, exact GELU. ``drop_path_rate`` is the stochastic depth of the last block (linear from 0 over the
    blocks): 0 for ViT-B pre-training, retrieval and captioning, 0.1 for ViT-L and for the VQA and NLVR2 models."""

    model_type = "hf_vlp_blip_vision"

    drop_path_rate: float = 0.0

    def validate_architecture(self) -> None:
        super().validate_architecture()
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must lie in [0, 1), got {self.drop_path_rate}")


@strict
class VlpBlipTextConfig(BertStyleTextConfig):
    """BERT-base MED text transformer (``med.py``): every layer cross-attends to ``encoder_width`` memory tokens (the
    image tokens; kept equal to the vision width by :class:`VlpBlipConfig`), no token-type embeddings.

    Special-token ids are fields so the model can put ``[ENC]`` (``enc_token_id``) or ``[DEC]`` (``bos_token_id``) at
    position 0 itself, as the original does. Defaults are bert-base-uncased's ids plus BLIP's two added tokens; the
    converter and ``VlpBlipProcessor.special_token_ids()`` give the values of another vocabulary, found by name.
    """

    model_type = "hf_vlp_blip_text"

    vocab_size: int = 30524
    pad_token_id: int = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    bos_token_id: int = 30522  # [DEC]
    enc_token_id: int = 30523  # [ENC]

    def validate_architecture(self) -> None:
        super().validate_architecture()
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
# create_vit gives ViT-L a drop path rate of 0.1 whatever the caller asks ("0.1 or drop_path_rate").
BLIP_PRESETS: dict[str, dict[str, Any]] = {
    "base": _vision(768, 12, 12, 224),
    "large": {**_vision(1024, 24, 16, 224), "drop_path_rate": 0.1},
}


@strict
class VlpBlipConfig(MomentumContrastiveConfig):
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
    queue_size: int = 57600
    itm_negative_eps: float = 1e-4
    label_smoothing: float = 0.1

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
        super().validate_architecture()
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
