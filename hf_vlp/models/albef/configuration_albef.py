"""ALBEF configuration (Li et al., 2021). Defaults reproduce the paper's base model: ViT-B/16 at 256 px + BERT-base
with cross-attention in layers 6-11, 256-d contrastive space, momentum 0.995, queue 65,536, alpha 0.4."""

from __future__ import annotations


from huggingface_hub.dataclasses import strict

from ..configuration_towers import BertStyleTextConfig, MomentumContrastiveConfig, TimmVitConfig


@strict
class VlpAlbefVisionConfig(TimmVitConfig):
    """timm-style ViT (``models/vit.py``): patch conv with bias, no pre-norm, LayerNorm eps 1e-6, final norm on all
    tokens, exact GELU."""

    model_type = "hf_vlp_albef_vision"

    image_size: int = 256


@strict
class VlpAlbefTextConfig(BertStyleTextConfig):
    """BERT-base text/fusion encoder (``xbert.py``): layers ``< fusion_layer`` are text-only, the rest cross-attend
    to the image tokens (width ``encoder_width``, kept equal to the vision width by :class:`VlpAlbefConfig`)."""

    model_type = "hf_vlp_albef_text"

    type_vocab_size: int = 2
    fusion_layer: int = 6
    pad_token_id: int | None = 0
    cls_token_id: int | None = None  # set from the tokenizer (by name) by the converter / processor
    mask_token_id: int | None = None
    sep_token_id: int | None = None  # ends a VQA answer (the original appends the literal "[SEP]")
    tie_word_embeddings: bool = True

    def validate_architecture(self) -> None:
        super().validate_architecture()
        if not 0 <= self.fusion_layer <= self.num_hidden_layers:
            raise ValueError(
                f"fusion_layer must be between 0 and num_hidden_layers ({self.num_hidden_layers}), got {self.fusion_layer}"
            )


@strict
class VlpAlbefConfig(MomentumContrastiveConfig):
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
    mlm_probability: float = 0.15
