"""ViLT configuration (Kim et al., 2021). Defaults reproduce the released ViLT-B/32: a ViT-B/32 at 384 px runs over
BERT-style text embeddings (40 positions, vocabulary 30,522) concatenated with the image patches; LayerNorm eps per
place as the original (1e-12 text embeddings and MLM transform, 1e-6 blocks and final norm, 1e-5 classifier heads);
3,129 VQAv2 answers; pre-training samples at most 200 patches per image and fine-tuning takes all of them."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict

from ..configuration_towers import TransformerTowerConfig, check_patch_grid

VQA_NUM_LABELS = 3129  # VQAv2 answers seen at least 9 times in train + val (the original's vqa_dict.json)
# the special-token fields, each set from the tokenizer by the token's name (the converter and the training tasks)
SPECIAL_TOKEN_FIELDS = ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id")


@strict
class VlpViltConfig(TransformerTowerConfig):
    """One transformer over ``[text embeddings + modality row 0 ; image patch embeddings + modality row k]``.

    The blocks are a timm ViT's (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``intermediate_size``, exact GELU, ``layer_norm_eps`` for the blocks and the final norm) with its ``image_size`` /
    ``patch_size`` position grid, interpolated per image to that image's patch grid. The text side is BERT's
    embeddings: ``vocab_size`` words, ``max_position_embeddings`` positions, ``type_vocab_size`` token types (the
    original always adds type 0), LayerNorm ``text_layer_norm_eps``. ``modality_type_vocab_size`` rows tell text
    (row 0) from image (row 1) tokens; the NLVR2 head adds a third row for the second image of a pair.

    ``max_image_length``: at most this many patches per image in training (a random subset, as the original's
    pre-training; -1 keeps them all, as its fine-tuning); evaluation always keeps every patch, in row-major order.
    ``num_labels`` is the VQA answer vocabulary (``id2label`` names the answers). ``mlm_probability``,
    ``whole_word_masking``, ``wpa_weight`` (word-patch alignment), ``wpa_beta`` and ``wpa_iterations`` (IPOT) are the
    pre-training settings.
    """

    model_type = "hf_vlp_vilt"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    text_layer_norm_eps: float = 1e-12
    mlm_layer_norm_eps: float = 1e-12
    head_layer_norm_eps: float = 1e-5
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.0
    image_size: int = 384
    patch_size: int = 32
    num_channels: int = 3
    vocab_size: int = 30522
    max_position_embeddings: int = 40
    type_vocab_size: int = 2
    modality_type_vocab_size: int = 2
    max_image_length: int = 200
    mlm_probability: float = 0.15
    whole_word_masking: bool = True
    wpa_weight: float = 0.1
    wpa_beta: float = 0.5
    wpa_iterations: int = 50
    pad_token_id: int | None = 0
    cls_token_id: int | None = 101
    sep_token_id: int | None = 102
    mask_token_id: int | None = 103
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        if "num_labels" not in kwargs and "id2label" not in kwargs and getattr(self, "id2label", None) is None:
            kwargs["num_labels"] = VQA_NUM_LABELS
        super().__post_init__(**kwargs)

    def validate_architecture(self) -> None:
        super().validate_architecture()
        check_patch_grid(self)
        if self.modality_type_vocab_size < 2:
            raise ValueError(
                f"modality_type_vocab_size must be >= 2 (row 0 text, row 1 image), got {self.modality_type_vocab_size}"
            )
        if self.max_image_length == 0 or self.max_image_length < -1:
            raise ValueError(f"max_image_length must be positive or -1 (every patch), got {self.max_image_length}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must lie in (0, 1), got {self.mlm_probability}")
        if self.wpa_iterations < 1 or self.wpa_beta <= 0:
            raise ValueError(
                f"wpa_iterations must be >= 1 and wpa_beta > 0, got {self.wpa_iterations} and {self.wpa_beta}"
            )


__all__ = ["SPECIAL_TOKEN_FIELDS", "VQA_NUM_LABELS", "VlpViltConfig"]
