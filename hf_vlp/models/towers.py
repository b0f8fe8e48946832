"""Tower wrappers and head pieces shared by the models' ``PreTrainedModel`` classes.

- :class:`VisionTowerMixin`: an image-tower model (``VlpClipVisionModel``, ``VlpAlbefVisionModel``,
  ``VlpBlipVisionModel``) - a ``transformer`` built from the tower config and a forward returning its
  ``BaseModelOutputWithPooling``.
- :class:`TextEmbeddingsMixin`: ``get/set_input_embeddings`` of a text-tower model through ``input_embeddings_path``.
- :class:`TextTowerMixin`: a text-tower model - a ``transformer`` and a forward passing its arguments on.
- :class:`DualTowerHeadMixin`: a head holding ``vision_model`` and ``text_model`` (input embeddings are the text
  tower's, ``encode_image`` runs the image tower) and, for ITC/ITM heads, ``vision_proj``/``text_proj``/``itm_head``/
  ``temp`` (:meth:`DualTowerHeadMixin.build_contrastive_heads`).
- :func:`bert_prediction_head`: BERT's MLM/LM prediction head for a text config.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Unpack

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling, ModelOutput

from transformers import initialization as init

from ..modules.heads import ItmHead, MaskedLMHead
from ..modules.towers import build_vision_tower
from ..modules.vision import VisionTransformer
from ..objectives.momentum import FeatureQueue
from ..utils.tower_init import LoadReport, TowerSource, load_text_tower_from_transformers, load_vision_tower_from_transformers
from .modeling_utils import OutputKwargs, VlpPreTrainedModel, as_returned, model_forward, resolve_output_flags


class VitBertPreTrainedModel(VlpPreTrainedModel):
    """Base of the architectures built from a timm-style ViT and a BERT-style text transformer (ALBEF, BLIP): the
    model contract flags, BERT/timm weight initialisation, model-card fields and :meth:`from_pretrained_towers`.
    Subclasses set ``config``, ``base_model_prefix``, ``model_card_template`` and ``vision_config_class`` /
    ``text_config_class`` (to describe a tower model's own config in its card)."""

    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["PreNormBlock", "PostNormBlock"]
    accepts_loss_kwargs = False
    model_card_pipeline_tag = "zero-shot-image-classification"
    vision_config_class: type | None = None
    text_config_class: type | None = None

    def model_card_fields(self) -> dict[str, Any]:
        """Tower sizes for the model card (``"n/a"`` for a tower the model lacks) plus :meth:`extra_card_fields`."""
        config = self.config
        vision = getattr(config, "vision_config", config if isinstance(config, self.vision_config_class) else None)
        text = getattr(config, "text_config", config if isinstance(config, self.text_config_class) else None)
        fields: dict[str, Any] = {
            "vision_description": "n/a",
            "text_description": "n/a",
            "embed_dim": getattr(config, "embed_dim", "n/a"),
        }
        if vision is not None:
            fields["vision_description"] = (
                f"ViT ({vision.num_hidden_layers} layers, width {vision.hidden_size}, patch {vision.patch_size}, "
                f"{vision.image_size}px)"
            )
        if text is not None:
            fields["text_description"] = f"{text.num_hidden_layers}-layer, width-{text.hidden_size}"
        return {**fields, **self.extra_card_fields(text)}

    def extra_card_fields(self, text_config: Any) -> dict[str, Any]:
        """Architecture-specific card fields (``text_config`` is ``None`` for an image tower)."""
        return {}

    @classmethod
    def from_pretrained_towers(
        cls, config: Any, *, vision: TowerSource, text: TowerSource
    ) -> tuple["VitBertPreTrainedModel", dict[str, LoadReport]]:
        """Start as the papers do: the image tower from a transformers ViT/DeiT, the text transformer from a
        transformers BERT (its MLM head into the model's ``mlm_head``/``lm_head`` if any; cross-attention and added
        token rows stay freshly initialised); momentum towers, when the head has them (``init_momentum``), copy the
        result. Returns the model and a report per tower of what was copied, interpolated, dropped and left
        initialised."""
        model = cls(config)
        mlm_head = getattr(model, "mlm_head", None)
        if mlm_head is None:
            mlm_head = getattr(model, "lm_head", None)
        reports = {
            "vision": load_vision_tower_from_transformers(model.vision_model.transformer, vision),
            "text": load_text_tower_from_transformers(model.text_model.transformer, text, mlm_head=mlm_head),
        }
        model.tie_weights()
        if hasattr(model, "init_momentum"):
            model.init_momentum()
        return model, reports

    def _init_weights(self, module: nn.Module) -> None:
        """BERT/timm initialisation: linear and embedding weights N(0, 0.02), LayerNorms 1/0 (super); ViT class and
        position embeddings trunc-normal(0.02); ``temp`` = ``config.temp``; queues as the originals' buffers."""
        super()._init_weights(module)
        if isinstance(module, VisionTransformer):
            init.trunc_normal_(module.class_embedding, std=0.02)
            init.trunc_normal_(module.position_embedding, std=0.02)
        elif isinstance(module, VitBertPreTrainedModel) and isinstance(getattr(module, "temp", None), nn.Parameter):
            init.constant_(module.temp, module.config.temp)
        elif isinstance(module, FeatureQueue):
            module.reset_buffers()


def bert_prediction_head(text_config: Any) -> MaskedLMHead:
    """BERT's prediction head (dense, activation, LayerNorm, decoder over the vocabulary) for ``text_config``; the
    decoder weight is tied to the word embeddings by the head's ``_tied_weights_keys``."""
    return MaskedLMHead(
        text_config.hidden_size,
        text_config.vocab_size,
        activation=text_config.hidden_act,
        layer_norm_eps=text_config.layer_norm_eps,
    )


class VisionTowerMixin:
    """An image tower ``PreTrainedModel``: ``transformer`` = :meth:`build_transformer` ``(config)``; ``forward``
    returns the tower's ``BaseModelOutputWithPooling`` (tokens after the final norm). Put it before the
    architecture's ``PreTrainedModel`` base."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.build_tower(config)
        self.post_init()

    def build_tower(self, config: Any) -> None:
        """Register the tower's modules (default: ``transformer`` from :meth:`build_transformer`)."""
        self.transformer = self.build_transformer(config)

    def build_transformer(self, config: Any) -> nn.Module:
        """The ViT (:func:`~hf_vlp.modules.towers.build_vision_tower` with its defaults, as ALBEF and BLIP)."""
        return build_vision_tower(config)

    def get_input_embeddings(self) -> nn.Module:
        """The module embedding the pixels (transformers' convention for vision models): the patch convolution."""
        return self.transformer.patch_embed

    def tower_output(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool, **flags: bool
    ) -> BaseModelOutputWithPooling:
        return self.transformer(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **flags)

    def forward(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs: Unpack[OutputKwargs]
    ) -> BaseModelOutputWithPooling | tuple:
        return self.tower_output(pixel_values, interpolate_pos_encoding, **kwargs)


class TextEmbeddingsMixin:
    """``get/set_input_embeddings`` of a text tower model whose word embeddings sit at ``input_embeddings_path``
    (dotted attributes from the model)."""

    input_embeddings_path = "transformer.embeddings.word_embeddings"

    def get_input_embeddings(self) -> nn.Embedding:
        module: Any = self
        for name in self.input_embeddings_path.split("."):
            module = getattr(module, name)
        return module

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        *parents, last = self.input_embeddings_path.split(".")
        module: Any = self
        for name in parents:
            module = getattr(module, name)
        setattr(module, last, value)


class TextTowerMixin(TextEmbeddingsMixin, abc.ABC):
    """A text tower ``PreTrainedModel``: ``transformer`` = :meth:`build_transformer` ``(config, **tower_options)``;
    ``forward`` takes the transformer's own arguments (see its ``forward``) plus ``return_dict``, so one wrapper
    serves every text transformer. :meth:`tower_kwargs` adapts the keyword arguments (a tower's defaults, inputs it
    checks and drops). Put it before the architecture's ``PreTrainedModel`` base."""

    main_input_name = "input_ids"
    input_modalities = ("text",)

    def __init__(self, config: Any, **tower_options: Any) -> None:
        super().__init__(config)
        self.transformer = self.build_transformer(config, **tower_options)
        self.post_init()

    @abc.abstractmethod
    def build_transformer(self, config: Any, **tower_options: Any) -> nn.Module:
        """The architecture's text transformer (BERT-style, MED or causal), built from its tower config."""

    def tower_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments given to the transformer (default: as passed)."""
        return kwargs

    def forward(
        self, input_ids: torch.Tensor | None = None, *args: Any, return_dict: bool | None = None, **kwargs: Any
    ) -> ModelOutput | tuple:
        kwargs = self.tower_kwargs(kwargs)
        resolve_output_flags(self.config, kwargs)
        if "use_cache" in kwargs:
            kwargs["use_cache"] = bool(kwargs["use_cache"])
        return as_returned(self.transformer(input_ids, *args, **kwargs), self.config, return_dict)


class DualTowerHeadMixin:
    """A head with ``vision_model`` and ``text_model`` (flat names shared by every ALBEF/BLIP head)."""

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    def build_contrastive_heads(self, config: Any) -> None:
        """``vision_proj``/``text_proj`` (with bias, as ALBEF and BLIP), ``itm_head`` and the temperature ``temp``."""
        vision, text = config.vision_config, config.text_config
        self.vision_proj = nn.Linear(vision.hidden_size, config.embed_dim)
        self.text_proj = nn.Linear(text.hidden_size, config.embed_dim)
        self.itm_head = ItmHead(text.hidden_size)
        self.temp = nn.Parameter(torch.tensor(config.temp))

    def encode_image(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **flags: bool
    ) -> BaseModelOutputWithPooling:
        """ViT tokens after the final norm (the originals' ``image_embeds``, ``[CLS]`` first); ``flags``:
        ``output_hidden_states``/``output_attentions``."""
        return self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **flags
        )

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **flags: bool,
    ) -> ModelOutput:
        """The unimodal text encoder (``mode='text'``: ALBEF's layers ``[0, fusion_layer)``, BLIP's MED without
        cross-attention), the originals' ``text_embeds``; ids as given, ``[CLS]`` first."""
        return self.text_model(
            input_ids, attention_mask, token_type_ids=token_type_ids, mode="text", return_dict=True, **flags
        )

    def image_tokens(
        self,
        pixel_values: torch.Tensor | None,
        image_hidden_states: torch.Tensor | None,
        interpolate_pos_encoding: bool = False,
        caller: str = "pass",
    ) -> torch.Tensor:
        """The ViT tokens of a call taking exactly one of ``pixel_values`` (encoded here) or precomputed
        ``image_hidden_states``; ``caller`` starts the error message (e.g. ``"generate needs"``)."""
        if (pixel_values is None) == (image_hidden_states is None):
            raise ValueError(f"{caller} exactly one of pixel_values or image_hidden_states (the ViT tokens)")
        if image_hidden_states is None:
            image_hidden_states = self.encode_image(pixel_values, interpolate_pos_encoding).last_hidden_state
        return image_hidden_states


def with_pooled_features(outputs: ModelOutput, features: torch.Tensor) -> BaseModelOutputWithPooling:
    """A tower's output as ``get_*_features`` return it (transformers 5): its states, and ``pooler_output`` =
    ``features``, the projected embedding."""
    return BaseModelOutputWithPooling(
        last_hidden_state=outputs.last_hidden_state,
        pooler_output=features,
        hidden_states=outputs.get("hidden_states"),
        attentions=outputs.get("attentions"),
    )


def check_both_modalities(model: nn.Module, input_ids: torch.Tensor | None, pixel_values: torch.Tensor | None) -> None:
    """A dual-encoder ``forward`` (CLIP, ALBEF, BLIP) needs both ``input_ids`` and ``pixel_values``."""
    if input_ids is None or pixel_values is None:
        raise ValueError(
            f"{type(model).__name__}.forward needs both input_ids and pixel_values (use get_*_features for one)"
        )


@dataclass(frozen=True)
class ImageTextInputs:
    """One batch of (image, text) examples as a head hands it to its tower hooks (VQA question encoders, the NLVR2 /
    SNLI-VE tower passes): text row b goes with image (or image pair) b."""

    input_ids: torch.Tensor
    pixel_values: torch.Tensor
    attention_mask: torch.Tensor | None = None
    token_type_ids: torch.Tensor | None = None
    interpolate_pos_encoding: bool = False


@dataclass
class ImageTextClassifierOutput(ModelOutput):
    """Outputs of a head classifying image-text examples (ALBEF's and BLIP's NLVR2, ALBEF's SNLI-VE): ``logits``,
    ``loss`` only with ``labels``; with ``output_hidden_states`` the fused text states ``last_hidden_state``
    ``[B, L, D]`` and the ViT tokens ``image_hidden_states``; ``vision_model_output``/``text_model_output`` are the
    towers' outputs (per-layer ``hidden_states``/``attentions`` when asked for) where the head returns them."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    image_hidden_states: torch.Tensor | None = None
    vision_model_output: ModelOutput | None = None
    text_model_output: ModelOutput | None = None

    @classmethod
    def from_states(
        cls,
        loss: torch.Tensor | None,
        logits: torch.Tensor,
        text_states: torch.Tensor,
        image_states: torch.Tensor,
        output_hidden_states: bool | None,
        vision_outputs: ModelOutput | None = None,
        text_outputs: ModelOutput | None = None,
    ) -> "ImageTextClassifierOutput":
        """The output, holding the states only when ``output_hidden_states``."""
        keep = bool(output_hidden_states)
        return cls(
            loss=loss,
            logits=logits,
            last_hidden_state=text_states if keep else None,
            image_hidden_states=image_states if keep else None,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
        )


@dataclass
class DualEncoderOutput(ModelOutput):
    """Contrastive outputs of an ITC + ITM encoder model (ALBEF, BLIP): ``image_embeds``/``text_embeds`` are the
    L2-normalised projected ``[CLS]`` features, ``logits_per_image`` their similarities / ``temp``; with
    ``output_itm=True`` also the image-grounded text states (``multimodal_output``) and ITM logits of the pairs
    (image b, text b)."""

    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutput | None = None
    multimodal_output: BaseModelOutput | None = None


class ContrastiveEncodersMixin(DualTowerHeadMixin):
    """The encoder model of an ITC + ITM architecture (``VlpAlbefModel``, ``VlpBlipModel``): projected features and
    the contrastive ``forward`` over ``encode_image``/``encode_text``. The model provides ``multimodal_states(input_ids,
    text_states, image_states, attention_mask, **flags)`` (its image-grounded text encoder over pairs (image b,
    text b), whose first state the ``itm_head`` reads)."""

    contrastive_output_class: type[DualEncoderOutput] = DualEncoderOutput
    # whether multimodal_states reads the unimodal text states (ALBEF's fusion layers) or re-reads the ids (BLIP)
    multimodal_reads_text_states = True

    @model_forward
    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs: Unpack[OutputKwargs]
    ) -> BaseModelOutputWithPooling | tuple:
        """The image tower's output with ``pooler_output`` = the projected image features ``[B, embed_dim]``
        (``vision_proj`` of the ``[CLS]`` token), not normalised - transformers 5's convention; L2-normalised they
        are the originals' ``image_feat``."""
        outputs = self.encode_image(pixel_values, interpolate_pos_encoding, **kwargs)
        return with_pooled_features(outputs, self.vision_proj(outputs.last_hidden_state[:, 0]))

    @model_forward
    def get_multimodal_features(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[OutputKwargs],
    ) -> BaseModelOutputWithPooling | tuple:
        """The image-grounded text encoder's output over pairs (image b, text b) with ``pooler_output`` = its first
        state ``[B, D]``, the multimodal feature the ``itm_head`` reads (the originals have no pooler or projection
        there, so neither is applied)."""
        image_states = self.encode_image(pixel_values, interpolate_pos_encoding).last_hidden_state
        text_states = None
        if self.multimodal_reads_text_states:
            text_states = self.encode_text(input_ids, attention_mask, token_type_ids).last_hidden_state
        outputs = self.multimodal_states(input_ids, text_states, image_states, attention_mask, **kwargs)
        return with_pooled_features(outputs, outputs.last_hidden_state[:, 0])

    @model_forward
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> BaseModelOutputWithPooling | tuple:
        """The unimodal text encoder's output with ``pooler_output`` = the projected text features ``[B, embed_dim]``
        (``text_proj`` of the ``[CLS]`` state), not normalised; L2-normalised they are the originals' ``text_feat``."""
        outputs = self.encode_text(input_ids, attention_mask, token_type_ids, **kwargs)
        return with_pooled_features(outputs, self.text_proj(outputs.last_hidden_state[:, 0]))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_itm: bool = False,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[OutputKwargs],
    ) -> DualEncoderOutput | tuple:
        """Similarity logits of every image against every text (normalised features / ``temp``); with
        ``output_itm=True`` also the image-grounded states and ITM logits of pair b = (image b, text b) (same batch
        size needed). ``token_type_ids`` go to the text tower (BLIP accepts them all zero)."""
        check_both_modalities(self, input_ids, pixel_values)
        vision_outputs = self.encode_image(pixel_values, interpolate_pos_encoding, **kwargs)
        text_outputs = self.encode_text(input_ids, attention_mask, token_type_ids, **kwargs)
        image_embeds = nn.functional.normalize(self.vision_proj(vision_outputs.last_hidden_state[:, 0]), dim=-1)
        text_embeds = nn.functional.normalize(self.text_proj(text_outputs.last_hidden_state[:, 0]), dim=-1)
        logits_per_image = image_embeds @ text_embeds.t() / self.temp
        multimodal_outputs, itm_logits = None, None
        if output_itm:
            multimodal_outputs = self.multimodal_states(
                input_ids, text_outputs.last_hidden_state, vision_outputs.last_hidden_state, attention_mask, **kwargs
            )
            itm_logits = self.itm_head(multimodal_outputs.last_hidden_state[:, 0])
        return self.contrastive_output_class(
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            itm_logits=itm_logits,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
            multimodal_output=multimodal_outputs,
        )


class MaskedLMOutputEmbeddingsMixin:
    """``get/set_output_embeddings`` of a head whose prediction head is ``output_head_name`` (its ``decoder``)."""

    output_head_name = "mlm_head"

    def get_output_embeddings(self) -> nn.Linear:
        return getattr(self, self.output_head_name).decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        getattr(self, self.output_head_name).decoder = value


__all__ = [
    "VitBertPreTrainedModel",
    "ContrastiveEncodersMixin",
    "DualEncoderOutput",
    "DualTowerHeadMixin",
    "ImageTextInputs",
    "MaskedLMOutputEmbeddingsMixin",
    "TextEmbeddingsMixin",
    "VisionTowerMixin",
    "bert_prediction_head",
]
