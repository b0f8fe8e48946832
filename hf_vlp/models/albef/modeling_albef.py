"""ALBEF (Li et al., 2021): align image and text features contrastively, then fuse them with cross-attention.

    image -> ViT -> image tokens --------------------------------------------+
                 \-> [CLS] -> vision_proj -> image_features                 |  (cross-attention memory)
    text  -> BERT layers [0, fusion_layer) ("text") -> text tokens -> BERT layers [fusion_layer, L) ("fusion")
                 \-> [CLS] -> text_proj -> text_features                         -> multimodal [CLS] -> itm_head
    similarity logits = normalised image_features @ normalised text_features.T / temp

The momentum towers, feature queues and the pretraining losses live in the pretraining head, not here.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import (
    BaseModelOutputWithCrossAttentions,
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    ModelOutput,
)

from ...modeling_utils import VlpPreTrainedModel
from ...modules.heads import ItmHead, MaskedLMHead
from ...modules.text import BertStyleTextTransformer
from ...modules.transformer import BlockOptions
from ...modules.vision import VisionTransformer
from .configuration_albef import VlpAlbefConfig, VlpAlbefTextConfig, VlpAlbefVisionConfig


@dataclass
class VlpAlbefOutput(ModelOutput):
    """Contrastive outputs (``image_embeds``/``text_embeds`` are L2-normalised projected features) and, with
    ``output_itm=True``, the fused states and ITM logits of the given (matching) pairs."""

    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithCrossAttentions | None = None
    multimodal_output: BaseModelOutputWithCrossAttentions | None = None


def vision_block_options(config: VlpAlbefVisionConfig) -> BlockOptions:
    return BlockOptions(
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        activation=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        attention_dropout=config.attention_dropout,
    )


def text_block_options(config: VlpAlbefTextConfig) -> BlockOptions:
    return BlockOptions(
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        activation=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        attention_dropout=config.attention_probs_dropout_prob,
        hidden_dropout=config.hidden_dropout_prob,
    )


def build_vision_tower(config: VlpAlbefVisionConfig) -> VisionTransformer:
    """timm's ViT as ALBEF's ``models/vit.py`` builds it: patch bias, no pre-norm, final norm on every token."""
    return VisionTransformer(
        vision_block_options(config),
        num_layers=config.num_hidden_layers,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        patch_bias=True,
        norm_pre=False,
        final_norm="all",
        config=config,
    )


def build_text_tower(config: VlpAlbefTextConfig) -> BertStyleTextTransformer:
    """xbert's ``BertModel`` (no pooler): layers ``>= fusion_layer`` cross-attend to ``encoder_width`` tokens."""
    return BertStyleTextTransformer(
        text_block_options(config),
        num_layers=config.num_hidden_layers,
        fusion_layer=config.fusion_layer,
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        pad_token_id=config.pad_token_id,
        kv_size=config.encoder_width,
        config=config,
    )


class VlpAlbefPreTrainedModel(VlpPreTrainedModel):
    config: VlpAlbefConfig
    base_model_prefix = "albef"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["PreNormBlock", "PostNormBlock"]
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        """BERT/timm initialisation: linear and embedding weights N(0, 0.02) (super), ViT tokens trunc-normal."""
        super()._init_weights(module)
        if isinstance(module, VisionTransformer):
            init.trunc_normal_(module.class_embedding, std=0.02)
            init.trunc_normal_(module.position_embedding, std=0.02)
        elif isinstance(module, VlpAlbefModel):
            init.constant_(module.temp, self.config.temp)


class VlpAlbefVisionModel(VlpAlbefPreTrainedModel):
    """The image tower: ViT tokens after the final norm (ALBEF's ``image_embeds``); ``pooler_output`` = ``[CLS]``."""

    config: VlpAlbefVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: VlpAlbefVisionConfig) -> None:
        super().__init__(config)
        self.transformer = build_vision_tower(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output = self.transformer(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=bool(output_hidden_states),
            output_attentions=bool(output_attentions),
        )
        return output if return_dict else output.to_tuple()


class VlpAlbefTextModel(VlpAlbefPreTrainedModel):
    """The BERT text/fusion encoder; ``mode`` = ``"text"`` (unimodal layers), ``"fusion"`` (cross-attending layers on
    ``inputs_embeds``, the text mode's output) or ``"full"`` (all layers, xbert's ``multi_modal``)."""

    config: VlpAlbefTextConfig
    main_input_name = "input_ids"
    input_modalities = ("text",)

    def __init__(self, config: VlpAlbefTextConfig) -> None:
        super().__init__(config)
        self.transformer = build_text_tower(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        mode: str = "full",
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithCrossAttentions | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output = self.transformer(
            input_ids,
            attention_mask,
            token_type_ids,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            mode=mode,
            output_hidden_states=bool(output_hidden_states),
            output_attentions=bool(output_attentions),
        )
        return output if return_dict else output.to_tuple()


class VlpAlbefModel(VlpAlbefPreTrainedModel):
    """ALBEF's online towers: ``get_image_features``/``get_text_features`` (contrastive space), ``fuse`` (image-
    grounded text states), ``itm_head`` and a contrastive ``forward``."""

    # a converted checkpoint (VlpAlbefForMaskedLM) also holds the MLM head, which this class does not use
    _keys_to_ignore_on_load_unexpected = [r"^mlm_head\."]

    def __init__(self, config: VlpAlbefConfig) -> None:
        super().__init__(config)
        vision, text = config.vision_config, config.text_config
        self.vision_model = VlpAlbefVisionModel(vision)
        self.text_model = VlpAlbefTextModel(text)
        self.vision_proj = nn.Linear(vision.hidden_size, config.embed_dim)
        self.text_proj = nn.Linear(text.hidden_size, config.embed_dim)
        self.itm_head = ItmHead(text.hidden_size)
        self.temp = nn.Parameter(torch.tensor(config.temp))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    def encode_image(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithPooling:
        """ViT tokens after the final norm (ALBEF's ``image_embeds``, ``[CLS]`` first)."""
        return self.vision_model(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithCrossAttentions:
        """The unimodal text layers ``[0, fusion_layer)`` (ALBEF's ``text_embeds``, ``mode='text'``)."""
        return self.text_model(
            input_ids,
            attention_mask,
            token_type_ids,
            mode="text",
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )

    def fuse(
        self,
        text_hidden_states: torch.Tensor,
        image_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithCrossAttentions:
        """The fusion layers ``[fusion_layer, L)`` on ``encode_text`` states, cross-attending to ``encode_image``
        tokens (``mode='fusion'``); ``attention_mask`` is the text's 1/0 padding mask."""
        return self.text_model(
            attention_mask=attention_mask,
            inputs_embeds=text_hidden_states,
            encoder_hidden_states=image_hidden_states,
            encoder_attention_mask=image_attention_mask,
            mode="fusion",
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )

    def get_image_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Projected, un-normalised image features ``[B, embed_dim]`` (``vision_proj`` of the ``[CLS]`` token)."""
        return self.vision_proj(self.encode_image(pixel_values, interpolate_pos_encoding).last_hidden_state[:, 0])

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Projected, un-normalised text features ``[B, embed_dim]`` (``text_proj`` of the unimodal ``[CLS]``)."""
        return self.text_proj(self.encode_text(input_ids, attention_mask, token_type_ids).last_hidden_state[:, 0])

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_itm: bool = False,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> VlpAlbefOutput | tuple:
        """Similarity logits of every image against every text (``sim / temp``); with ``output_itm=True`` also the
        fused states and ITM logits of pair ``b`` = (image ``b``, text ``b``) (same batch size needed)."""
        if input_ids is None or pixel_values is None:
            raise ValueError("VlpAlbefModel.forward needs both input_ids and pixel_values (use get_*_features for one)")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = bool(output_hidden_states or self.config.output_hidden_states)
        output_attentions = bool(output_attentions or self.config.output_attentions)
        vision_outputs = self.encode_image(pixel_values, interpolate_pos_encoding, output_hidden_states, output_attentions)
        text_outputs = self.encode_text(input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions)
        image_embeds = nn.functional.normalize(self.vision_proj(vision_outputs.last_hidden_state[:, 0]), dim=-1)
        text_embeds = nn.functional.normalize(self.text_proj(text_outputs.last_hidden_state[:, 0]), dim=-1)
        logits_per_image = image_embeds @ text_embeds.t() / self.temp
        multimodal_outputs, itm_logits = None, None
        if output_itm:
            if input_ids.shape[0] != pixel_values.shape[0]:
                raise ValueError(
                    f"output_itm scores pairs (image b, text b): got {pixel_values.shape[0]} images and "
                    f"{input_ids.shape[0]} texts"
                )
            multimodal_outputs = self.fuse(
                text_outputs.last_hidden_state,
                vision_outputs.last_hidden_state,
                attention_mask,
                output_hidden_states=output_hidden_states,
                output_attentions=output_attentions,
            )
            itm_logits = self.itm_head(multimodal_outputs.last_hidden_state[:, 0])
        output = VlpAlbefOutput(
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            itm_logits=itm_logits,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
            multimodal_output=multimodal_outputs,
        )
        return output if return_dict else output.to_tuple()


class VlpAlbefForMaskedLM(VlpAlbefPreTrainedModel):
    """Image-conditioned masked language modelling: the full text encoder (text + fusion layers over the image
    tokens) and BERT's MLM head, its decoder tied to the word embeddings (xbert's ``BertForMaskedLM``).

    Holds every online weight of an ALBEF pretraining checkpoint (``albef.*`` + ``mlm_head.*``); the loss is plain
    cross-entropy over ``labels != -100`` (momentum distillation belongs to the pretraining head).
    """

    main_input_name = "input_ids"
    _tied_weights_keys = {"mlm_head.decoder.weight": "albef.text_model.transformer.embeddings.word_embeddings.weight"}

    def __init__(self, config: VlpAlbefConfig) -> None:
        super().__init__(config)
        text = config.text_config
        self.albef = VlpAlbefModel(config)
        self.mlm_head = MaskedLMHead(
            text.hidden_size, text.vocab_size, activation=text.hidden_act, layer_norm_eps=text.layer_norm_eps
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.albef.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.albef.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.mlm_head.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.mlm_head.decoder = value

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        image_hidden_states: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> MaskedLMOutput | tuple:
        """MLM logits ``[B, L, vocab]`` for (masked) ``input_ids`` grounded on ``pixel_values`` (or on precomputed
        ``image_hidden_states``, the ViT tokens); the loss only when ``labels`` are given."""
        if (pixel_values is None) == (image_hidden_states is None):
            raise ValueError("pass exactly one of pixel_values or image_hidden_states (the ViT tokens)")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if image_hidden_states is None:
            image_hidden_states = self.albef.encode_image(pixel_values, interpolate_pos_encoding).last_hidden_state
        text_outputs = self.albef.text_model(
            input_ids,
            attention_mask,
            token_type_ids,
            encoder_hidden_states=image_hidden_states,
            mode="full",
            return_dict=True,
        )
        logits = self.mlm_head(text_outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.to(logits.device).reshape(-1), ignore_index=-100
            )
        output = MaskedLMOutput(loss=loss, logits=logits, hidden_states=None, attentions=None)
        return output if return_dict else output.to_tuple()


__all__ = [
    "VlpAlbefForMaskedLM",
    "VlpAlbefModel",
    "VlpAlbefOutput",
    "VlpAlbefPreTrainedModel",
    "VlpAlbefTextModel",
    "VlpAlbefVisionModel",
]
