r"""ALBEF (Li et al., 2021): align image and text features contrastively, then fuse them with cross-attention.

    image -> ViT -> image tokens --------------------------------------------+
                 \-> [CLS] -> vision_proj -> image_features                 |  (cross-attention memory)
    text  -> BERT layers [0, fusion_layer) ("text") -> text tokens -> BERT layers [fusion_layer, L) ("fusion")
                 \-> [CLS] -> text_proj -> text_features                         -> multimodal [CLS] -> itm_head
    similarity logits = normalised image_features @ normalised text_features.T / temp

This file holds the towers, ``VlpAlbefModel`` and ``VlpAlbefForMaskedLM``; pre-training and retrieval (momentum towers,
queues, ITC/ITM/MLM) are in ``modeling_albef_pretraining.py``, VQA in ``modeling_albef_vqa.py``, NLVR2/SNLI-VE in
``modeling_albef_reasoning.py``. Every head uses the same flat weight names (``vision_model.*``, ``text_model.*``,
``vision_proj``, ``text_proj``, ``itm_head``, ``temp``, ``mlm_head``, ``momentum_*``, ``*_queue``).
"""

from dataclasses import dataclass
from typing import Any, Unpack

import torch
from transformers.modeling_outputs import BaseModelOutputWithCrossAttentions, MaskedLMOutput

from ...integrations.compat import initialize_modules_now
from ...modules.text import BertStyleTextTransformer
from ...modules.towers import text_block_options
from ...objectives.mlm import masked_lm_loss
from ..modeling_utils import OutputKwargs
from ..towers import (
    VitBertPreTrainedModel,
    ContrastiveEncodersMixin,
    DualEncoderOutput,
    DualTowerHeadMixin,
    MaskedLMOutputEmbeddingsMixin,
    TextTowerMixin,
    VisionTowerMixin,
    bert_prediction_head,
)
from .configuration_albef import VlpAlbefConfig, VlpAlbefTextConfig, VlpAlbefVisionConfig


@dataclass
class VlpAlbefOutput(DualEncoderOutput):
    """Contrastive outputs (``image_embeds``/``text_embeds`` are L2-normalised projected features) and, with
    ``output_itm=True``, the fused states and ITM logits of the given (matching) pairs."""


def build_text_tower(config: VlpAlbefTextConfig, num_layers: int | None = None) -> BertStyleTextTransformer:
    """xbert's ``BertModel`` (no pooler): layers ``>= fusion_layer`` cross-attend to ``encoder_width`` tokens;
    ``num_layers`` defaults to ``config.num_hidden_layers``."""
    return BertStyleTextTransformer(
        text_block_options(config),
        num_layers=config.num_hidden_layers if num_layers is None else num_layers,
        fusion_layer=config.fusion_layer,
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        pad_token_id=config.pad_token_id,
        kv_size=config.encoder_width,
        config=config,
    )


class VlpAlbefPreTrainedModel(VitBertPreTrainedModel):
    config: VlpAlbefConfig
    base_model_prefix = "albef"
    model_card_template = "albef"
    vision_config_class = VlpAlbefVisionConfig
    text_config_class = VlpAlbefTextConfig

    def extra_card_fields(self, text_config: VlpAlbefTextConfig | None) -> dict[str, Any]:
        return {"fusion_layer": text_config.fusion_layer if text_config is not None else "n/a"}


class VlpAlbefVisionModel(VisionTowerMixin, VlpAlbefPreTrainedModel):
    """The image tower: ViT tokens after the final norm (ALBEF's ``image_embeds``); ``pooler_output`` = ``[CLS]``."""

    config: VlpAlbefVisionConfig


class VlpAlbefTextModel(TextTowerMixin, VlpAlbefPreTrainedModel):
    """The BERT text/fusion encoder; ``forward`` takes :class:`~hf_vlp.modules.text.BertStyleTextTransformer`'s
    arguments: ``mode`` = ``"text"`` (unimodal layers), ``"fusion"`` (cross-attending layers on ``inputs_embeds``, the
    text mode's output) or ``"full"`` (all layers, xbert's ``multi_modal``; the default)."""

    config: VlpAlbefTextConfig

    def build_transformer(self, config: VlpAlbefTextConfig) -> BertStyleTextTransformer:
        return build_text_tower(config)


class AlbefTowersMixin(DualTowerHeadMixin):
    """The online towers every ALBEF ITC/ITM head holds under flat names (``vision_model``, ``text_model``,
    ``vision_proj``, ``text_proj``, ``itm_head``, ``temp``) and the passes over them."""

    def build_towers(self, config: VlpAlbefConfig) -> None:
        self.vision_model = VlpAlbefVisionModel(config.vision_config)
        self.text_model = VlpAlbefTextModel(config.text_config)
        self.build_contrastive_heads(config)
        # initialise the heads before the caller builds more modules, as when the towers were a nested sub-model
        # with its own post_init: a seeded model keeps the initial weights it had then
        initialize_modules_now(self, self.vision_proj, self.text_proj, self.itm_head)

    def fuse(
        self,
        text_hidden_states: torch.Tensor,
        image_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        **flags: bool,
    ) -> BaseModelOutputWithCrossAttentions:
        """The fusion layers ``[fusion_layer, L)`` on ``encode_text`` states, cross-attending to ``encode_image``
        tokens (``mode='fusion'``); ``attention_mask`` is the text's 1/0 padding mask."""
        return self.text_model(
            attention_mask=attention_mask,
            inputs_embeds=text_hidden_states,
            encoder_hidden_states=image_hidden_states,
            encoder_attention_mask=image_attention_mask,
            mode="fusion",
            return_dict=True,
            **flags,
        )

    def pair_itm_logits(
        self, texts: torch.Tensor, attention_mask: torch.Tensor | None, image_states: torch.Tensor
    ) -> torch.Tensor:
        """ITM logits ``[N, 2]`` (column 1 = match) of pairs (text row n, image row n): the fusion layers over the
        unimodal text states ``texts`` cross-attending to the image tokens, ``itm_head`` on the fused ``[CLS]``."""
        return self.itm_head(self.fuse(texts, image_states, attention_mask).last_hidden_state[:, 0])


class VlpAlbefModel(ContrastiveEncodersMixin, AlbefTowersMixin, VlpAlbefPreTrainedModel):
    """ALBEF's online towers: ``get_image_features``/``get_text_features`` (contrastive space), ``fuse`` (image-
    grounded text states), ``itm_head`` and a contrastive ``forward``."""

    # a converted checkpoint (VlpAlbefForMaskedLM) also holds the MLM head, which this class does not use
    _keys_to_ignore_on_load_unexpected = [r"^mlm_head\.", r"^momentum_", r"^(image|text|idx)_queue\."]
    contrastive_output_class = VlpAlbefOutput

    def __init__(self, config: VlpAlbefConfig) -> None:
        super().__init__(config)
        self.build_towers(config)
        self.post_init()

    def multimodal_states(
        self,
        input_ids: torch.Tensor,
        text_states: torch.Tensor,
        image_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **flags: bool,
    ) -> BaseModelOutputWithCrossAttentions:
        """The fusion layers over the unimodal text states of pairs (image b, text b)."""
        if text_states.shape[0] != image_states.shape[0]:
            raise ValueError(
                f"output_itm scores pairs (image b, text b): got {image_states.shape[0]} images and "
                f"{text_states.shape[0]} texts"
            )
        return self.fuse(text_states, image_states, attention_mask, **flags)


class VlpAlbefForMaskedLM(MaskedLMOutputEmbeddingsMixin, AlbefTowersMixin, VlpAlbefPreTrainedModel):
    """Image-conditioned masked language modelling: the full text encoder (text + fusion layers over the image
    tokens) and BERT's MLM head, its decoder tied to the word embeddings (xbert's ``BertForMaskedLM``).

    Holds every online weight of an ALBEF pretraining checkpoint (the towers as ``VlpAlbefModel`` + ``mlm_head.*``);
    the loss is plain cross-entropy over ``labels != -100`` (momentum distillation belongs to the pretraining head).
    """

    _tied_weights_keys = {"mlm_head.decoder.weight": "text_model.transformer.embeddings.word_embeddings.weight"}
    # a converted pretraining checkpoint (VlpAlbefForPretraining) also holds momentum towers and queues
    _keys_to_ignore_on_load_unexpected = [r"^momentum_", r"^(image|text|idx)_queue\."]

    def __init__(self, config: VlpAlbefConfig) -> None:
        super().__init__(config)
        self.build_towers(config)
        self.mlm_head = bert_prediction_head(config.text_config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        image_hidden_states: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[OutputKwargs],
    ) -> MaskedLMOutput | tuple:
        """MLM logits ``[B, L, vocab]`` for (masked) ``input_ids`` grounded on ``pixel_values`` (or on precomputed
        ``image_hidden_states``, the ViT tokens); the loss only when ``labels`` are given. ``hidden_states`` /
        ``attentions`` are the text encoder's (every layer, text and fusion)."""
        image_hidden_states = self.image_tokens(pixel_values, image_hidden_states, interpolate_pos_encoding)
        text_outputs = self.text_model(
            input_ids, attention_mask, token_type_ids, encoder_hidden_states=image_hidden_states, mode="full",
            return_dict=True, **kwargs,
        )
        logits = self.mlm_head(text_outputs.last_hidden_state)
        loss = masked_lm_loss(logits, labels) if labels is not None else None
        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=text_outputs.hidden_states, attentions=text_outputs.attentions
        )


__all__ = [
    "AlbefTowersMixin",
    "VlpAlbefForMaskedLM",
    "VlpAlbefModel",
    "VlpAlbefOutput",
    "VlpAlbefPreTrainedModel",
    "VlpAlbefTextModel",
    "VlpAlbefVisionModel",
    "build_text_tower",
]
