r"""ALBEF (Li et al., 2021): align image and text features contrastively, then fuse them with cross-attention.

    image -> ViT -> image tokens --------------------------------------------+
                 \-> [CLS] -> vision_proj -> image_features                 |  (cross-attention memory)
    text  -> BERT layers [0, fusion_layer) ("text") -> text tokens -> BERT layers [fusion_layer, L) ("fusion")
                 \-> [CLS] -> text_proj -> text_features                         -> multimodal [CLS] -> itm_head
    similarity logits = normalised image_features @ normalised text_features.T / temp

``VlpAlbefForPretraining`` adds the momentum towers (EMA copies, frozen), the feature queues and the three
pretraining losses (ITC with momentum distillation, ITM on hard negatives, MLM with momentum distillation).
``VlpAlbefForImageTextRetrieval`` fine-tunes the same towers on image ids (ITC + ITM) and ranks galleries by ITC
top-k then ITM re-ranking. ``VlpAlbefForQuestionAnswering`` decodes answers with a causal BERT cross-attending to
the fused question states, trained on weighted answers with momentum distillation; it ranks a candidate list (as the
original) or generates free answers with transformers' ``generate``. The momentum-contrastive steps shared with BLIP
live in :mod:`hf_vlp.objectives.contrastive`.
"""

import copy
import os
from dataclasses import dataclass
from typing import Any

import logging

import torch
from torch import nn
from transformers import Cache, GenerationConfig, GenerationMixin
from transformers import initialization as init
from transformers.modeling_outputs import (
    BaseModelOutputWithCrossAttentions,
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    ModelOutput,
)

from ...objectives.contrastive import (
    ImageTextRetrievalOutput,
    MomentumContrastiveStep,
    RetrievalFeatures,
    RetrievalScores,
    check_image_ids,
    check_matching_pairs,
    check_negative_indices,
    clamp_temperature_,
    contrastive_output_fields,
    diagonal_targets,
    distilled_itc,
    enqueue_momentum_features,
    itm_triplets,
    momentum_contrastive_step,
    rerank_top_k,
    retrieval_queue_update,
    same_id_mask,
    sample_itm_negatives,
)
from ...generation.utils import (
    add_decoder_cache,
    decode_generated,
    fill_special_tokens,
    resolved_generation_value,
    special_token_ids_from_tokenizer,
    uncached_tokens,
)
from ...objectives.losses import id_match_targets
from ..modeling_utils import VlpPreTrainedModel
from ...objectives.momentum import FeatureQueue, MomentumModelMixin, ModulePair
from ...modules.heads import ItmHead, MaskedLMHead
from ...modules.attention import padding_mask
from ...modules.text import BertStyleTextTransformer
from ...modules.vision import VisionTransformer
from ...utils.tower_init import LoadReport, TowerSource, load_text_tower_from_transformers, load_vision_tower_from_transformers
from .configuration_albef import VlpAlbefConfig, VlpAlbefTextConfig, VlpAlbefVisionConfig


from ...modules.towers import build_vision_tower, text_block_options

logger = logging.getLogger(__name__)

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
    model_card_template = "albef"
    model_card_pipeline_tag = "zero-shot-image-classification"

    def model_card_fields(self) -> dict[str, Any]:
        config = self.config
        vision = getattr(config, "vision_config", config if isinstance(config, VlpAlbefVisionConfig) else None)
        text = getattr(config, "text_config", config if isinstance(config, VlpAlbefTextConfig) else None)
        fields: dict[str, Any] = {
            "vision_description": "n/a",
            "text_description": "n/a",
            "embed_dim": getattr(config, "embed_dim", "n/a"),
            "fusion_layer": "n/a",
        }
        if vision is not None:
            fields["vision_description"] = (
                f"ViT ({vision.num_hidden_layers} layers, width {vision.hidden_size}, patch {vision.patch_size}, "
                f"{vision.image_size}px)"
            )
        if text is not None:
            fields["text_description"] = f"{text.num_hidden_layers}-layer, width-{text.hidden_size}"
            fields["fusion_layer"] = text.fusion_layer
        return fields

    @classmethod
    def from_pretrained_towers(
        cls, config: VlpAlbefConfig, *, vision: TowerSource, text: TowerSource
    ) -> tuple["VlpAlbefPreTrainedModel", dict[str, LoadReport]]:
        """Start as the paper does: the image tower from a transformers ViT/DeiT, the text encoder and fusion layers
        from a transformers BERT (cross-attention freshly initialised); momentum towers copy the result.

        Returns the model and a report per tower of what was copied, interpolated, dropped and left initialised.
        """
        model = cls(config)
        albef = model if isinstance(model, VlpAlbefModel) else model.albef
        reports = {
            "vision": load_vision_tower_from_transformers(albef.vision_model.transformer, vision),
            "text": load_text_tower_from_transformers(
                albef.text_model.transformer, text, mlm_head=getattr(model, "mlm_head", None)
            ),
        }
        model.tie_weights()
        if hasattr(model, "init_momentum"):
            model.init_momentum()
        return model, reports

    def _init_weights(self, module: nn.Module) -> None:
        """BERT/timm initialisation: linear and embedding weights N(0, 0.02) (super), ViT tokens trunc-normal."""
        super()._init_weights(module)
        if isinstance(module, VisionTransformer):
            init.trunc_normal_(module.class_embedding, std=0.02)
            init.trunc_normal_(module.position_embedding, std=0.02)
        elif isinstance(module, VlpAlbefModel):
            init.constant_(module.temp, self.config.temp)
        elif isinstance(module, FeatureQueue):
            module.reset_buffers()


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
    _keys_to_ignore_on_load_unexpected = [r"^mlm_head\.", r"^momentum_", r"^(image|text|idx)_queue\."]

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
    # a converted pretraining checkpoint (VlpAlbefForPretraining) also holds momentum towers and queues
    _keys_to_ignore_on_load_unexpected = [r"^momentum_", r"^(image|text|idx)_queue\."]

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


@dataclass
class VlpAlbefForPretrainingOutput(ModelOutput):
    """ALBEF pretraining outputs. The losses are set only with ``return_loss=True``; ``loss`` is their sum.

    ``logits_per_image`` ``[B, B + Q]``: online image features against the momentum text features of the batch
    followed by the text queue, divided by ``temp`` (``logits_per_text`` the reverse). ``itm_logits`` ``[3B, 2]``
    score ``[positives ; (text b, negative image) ; (negative text, image b)]``; ``mlm_logits`` are over
    ``mlm_input_ids`` (the masked text) and ``mlm_labels`` are -100 where a token was not masked.
    """

    loss: torch.Tensor | None = None
    loss_itc: torch.Tensor | None = None
    loss_itm: torch.Tensor | None = None
    loss_mlm: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    momentum_image_embeds: torch.Tensor | None = None
    momentum_text_embeds: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    itm_labels: torch.Tensor | None = None
    itm_negative_image_indices: torch.Tensor | None = None
    itm_negative_text_indices: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    mlm_input_ids: torch.Tensor | None = None
    mlm_labels: torch.Tensor | None = None


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    vocab_size: int,
    mask_token_id: int,
    special_token_ids: tuple[int, ...],
    mlm_probability: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ALBEF's ``mask()``: each token except ``special_token_ids`` (``[PAD]``, ``[CLS]``) is picked with
    ``mlm_probability``; of those 80% become ``mask_token_id``, half the rest a uniform random id, the rest stay.

    Returns ``(masked_input_ids, labels)`` with labels -100 on unpicked tokens. The draws follow the original's
    order (pick, replace, random, random ids) so a seeded run consumes the random stream the same way.
    """
    device = input_ids.device
    masked_ids, labels = input_ids.clone(), input_ids.clone()

    def bernoulli(probability: float) -> torch.Tensor:
        return torch.bernoulli(torch.full(input_ids.shape, probability), generator=generator).bool().to(device)

    picked = bernoulli(mlm_probability)
    for token_id in special_token_ids:
        picked &= input_ids != token_id
    labels[~picked] = -100
    replaced = bernoulli(0.8) & picked
    masked_ids[replaced] = mask_token_id
    randomised = bernoulli(0.5) & picked & ~replaced
    random_ids = torch.randint(vocab_size, input_ids.shape, dtype=torch.long, generator=generator).to(device)
    masked_ids[randomised] = random_ids[randomised]
    return masked_ids, labels


def distilled_mlm_loss(
    logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, alpha: float
) -> torch.Tensor:
    """``(1 - alpha) * CE + alpha * soft-CE against softmax(teacher_logits)``, both averaged over labelled tokens
    (xbert's ``BertForMaskedLM`` with ``soft_labels``). Zero, with a gradient path, when nothing is labelled."""
    labelled = labels != -100
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    log_probs = nn.functional.log_softmax(logits[labelled], dim=-1)
    hard = nn.functional.nll_loss(log_probs, labels[labelled])
    soft = -(log_probs * nn.functional.softmax(teacher_logits[labelled], dim=-1)).sum(dim=-1).mean()
    return (1 - alpha) * hard + alpha * soft


@dataclass
class AlbefContrastiveStep:
    """The batch's tower states (ITM and MLM inputs) and its momentum-contrastive step (ITC logits, queues)."""

    image_states: torch.Tensor
    text_states: torch.Tensor
    momentum_image_states: torch.Tensor
    itc: MomentumContrastiveStep


class VlpAlbefMomentumModel(MomentumModelMixin, VlpAlbefPreTrainedModel):
    """Base of the ALBEF heads with frozen momentum towers (declared by ``momentum_pairs()``) and feature queues;
    :class:`~hf_vlp.objectives.momentum.MomentumModelMixin` re-freezes them on load. ``config.itm_negative_eps`` is 0 as in the
    original."""

    def _contrastive_step(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        interpolate_pos_encoding: bool,
    ) -> AlbefContrastiveStep:
        """Clamp ``temp``, encode both modalities with the online and momentum towers, and score the online
        embeddings against [batch momentum features ; queue] as ALBEF's ITC does."""
        albef = self.albef
        clamp_temperature_(albef.temp, self.config.temp_min, self.config.temp_max)
        image_states = albef.encode_image(pixel_values, interpolate_pos_encoding).last_hidden_state
        text_states = albef.encode_text(input_ids, attention_mask, token_type_ids).last_hidden_state
        with torch.no_grad():
            momentum_image_states = self.momentum_vision_model(
                pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True
            ).last_hidden_state
            momentum_text_states = self.momentum_text_model(
                input_ids, attention_mask, token_type_ids, mode="text", return_dict=True
            ).last_hidden_state
        itc = momentum_contrastive_step(
            image_states[:, 0],
            text_states[:, 0],
            momentum_image_states[:, 0],
            momentum_text_states[:, 0],
            vision_proj=albef.vision_proj,
            text_proj=albef.text_proj,
            momentum_vision_proj=self.momentum_vision_proj,
            momentum_text_proj=self.momentum_text_proj,
            image_queue=self.image_queue,
            text_queue=self.text_queue,
            temp=albef.temp,
        )
        return AlbefContrastiveStep(image_states, text_states, momentum_image_states, itc)


class VlpAlbefForPretraining(VlpAlbefMomentumModel):
    """ALBEF pretraining (``models/model_pretrain.py``): ITC with momentum distillation against feature queues,
    ITM on hard negatives, and MLM distilled from the momentum model; ``loss = loss_itc + loss_itm + loss_mlm``.

    Online weights carry ``VlpAlbefForMaskedLM``'s names (``albef.*``, ``mlm_head.*``); the frozen EMA copies are
    ``momentum_vision_model``, ``momentum_vision_proj``, ``momentum_text_model``, ``momentum_text_proj`` and
    ``momentum_mlm_head``, and the queues ``image_queue``/``text_queue`` (normalised momentum features, each with its
    own ``ptr``). All of them are saved. Train with ``hf_vlp.MomentumCallback``: it runs the EMA step once per
    optimizer step (the original does it at the start of every forward) and ramps ``distill_alpha``. Queues are
    updated by training-mode forwards (``update_queues`` overrides) with all-gathered features.
    """

    main_input_name = "pixel_values"
    accepts_loss_kwargs = False
    _tied_weights_keys = {
        "mlm_head.decoder.weight": "albef.text_model.transformer.embeddings.word_embeddings.weight",
        "momentum_mlm_head.decoder.weight": "momentum_text_model.transformer.embeddings.word_embeddings.weight",
    }

    def __init__(self, config: VlpAlbefConfig) -> None:
        super().__init__(config)
        vision, text = config.vision_config, config.text_config
        self.albef = VlpAlbefModel(config)
        self.mlm_head = self._build_mlm_head(text)
        self.momentum_vision_model = VlpAlbefVisionModel(vision)
        self.momentum_vision_proj = nn.Linear(vision.hidden_size, config.embed_dim)
        self.momentum_text_model = VlpAlbefTextModel(text)
        self.momentum_text_proj = nn.Linear(text.hidden_size, config.embed_dim)
        self.momentum_mlm_head = self._build_mlm_head(text)
        self.image_queue = FeatureQueue(config.embed_dim, config.queue_size)
        self.text_queue = FeatureQueue(config.embed_dim, config.queue_size)
        self.post_init()
        self.init_momentum()

    @staticmethod
    def _build_mlm_head(text: VlpAlbefTextConfig) -> MaskedLMHead:
        return MaskedLMHead(
            text.hidden_size, text.vocab_size, activation=text.hidden_act, layer_norm_eps=text.layer_norm_eps
        )

    def momentum_pairs(self) -> list[ModulePair]:
        """(online, momentum) module pairs for the EMA; the text encoder and its MLM head form one pair so the
        decoder tied to the word embeddings is counted once."""
        return [
            (self.albef.vision_model, self.momentum_vision_model),
            (self.albef.vision_proj, self.momentum_vision_proj),
            (nn.ModuleList([self.albef.text_model, self.mlm_head]),
             nn.ModuleList([self.momentum_text_model, self.momentum_mlm_head])),
            (self.albef.text_proj, self.momentum_text_proj),
        ]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.albef.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.albef.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.mlm_head.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.mlm_head.decoder = value

    def mask_tokens(
        self, input_ids: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask ``input_ids`` for MLM as the original does (see :func:`mask_tokens`); needs
        ``config.text_config.mask_token_id`` and ``cls_token_id`` (set by the converter from the tokenizer)."""
        text = self.config.text_config
        mask_id, cls_id = text.mask_token_id, text.cls_token_id
        if mask_id is None or cls_id is None:
            raise ValueError(
                "MLM masking needs config.text_config.mask_token_id and cls_token_id (the tokenizer's [MASK] and "
                "[CLS] ids); set them, or pass mlm_input_ids and mlm_labels masked by the data collator."
            )
        special = tuple(i for i in (text.pad_token_id, cls_id) if i is not None)
        return mask_tokens(
            input_ids,
            vocab_size=text.vocab_size,
            mask_token_id=mask_id,
            special_token_ids=special,
            mlm_probability=self.config.mlm_probability,
            generator=generator,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        mlm_input_ids: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        itm_negative_image_indices: torch.Tensor | None = None,
        itm_negative_text_indices: torch.Tensor | None = None,
        alpha: float | None = None,
        update_queues: bool | None = None,
        generator: torch.Generator | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> VlpAlbefForPretrainingOutput | tuple:
        """One pretraining step's forward on ``B`` matching (image, text) pairs.

        Args:
            return_loss: compute ``loss_itc``/``loss_itm``/``loss_mlm`` and their sum ``loss``.
            mlm_input_ids, mlm_labels: a given MLM masking (both or neither); otherwise ``input_ids`` are masked here.
            itm_negative_image_indices: ``[B]`` in-batch index of the negative image of each text, and
                ``itm_negative_text_indices`` of the negative text of each image (both or neither); otherwise
                drawn from the softmaxed similarities with the diagonal masked.
            alpha: distillation weight; default ``self.distill_alpha`` (ramped by ``MomentumCallback``).
            update_queues: enqueue the batch's momentum features; default ``self.training``.
            generator: random generator for the hard negatives and the masking.
        """
        check_matching_pairs(input_ids, pixel_values, "pretraining")
        if (mlm_input_ids is None) != (mlm_labels is None):
            raise ValueError("pass both mlm_input_ids and mlm_labels (a given masking), or neither")
        check_negative_indices(itm_negative_image_indices, itm_negative_text_indices)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        alpha = self.distill_alpha if alpha is None else float(alpha)
        update_queues = self.training if update_queues is None else update_queues
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        albef = self.albef
        step = self._contrastive_step(input_ids, pixel_values, attention_mask, token_type_ids, interpolate_pos_encoding)
        image_states, text_states, itc = step.image_states, step.text_states, step.itc
        loss_itc = distilled_itc(itc, diagonal_targets(itc), alpha, albef.temp) if return_loss else None
        if update_queues:
            enqueue_momentum_features(itc, self.image_queue, self.text_queue)

        if itm_negative_image_indices is None:
            itm_negative_image_indices, itm_negative_text_indices = sample_itm_negatives(
                itc, None, generator, eps=self.itm_negative_eps
            )
        triplets = itm_triplets(
            (text_states, attention_mask), (image_states,), itm_negative_image_indices, itm_negative_text_indices
        )
        (itm_texts, itm_masks), (itm_images,) = triplets.text, triplets.image
        itm_logits = albef.itm_head(albef.fuse(itm_texts, itm_images, itm_masks).last_hidden_state[:, 0])
        itm_labels = triplets.labels.to(itm_logits.device)

        # MLM, distilled from the momentum text encoder on the momentum image tokens
        if mlm_input_ids is None:
            mlm_input_ids, mlm_labels = self.mask_tokens(input_ids, generator)
        mlm_logits = self.mlm_head(
            albef.text_model(
                mlm_input_ids, attention_mask, token_type_ids, encoder_hidden_states=image_states, mode="full",
                return_dict=True,
            ).last_hidden_state
        )

        loss = loss_itm = loss_mlm = None
        if return_loss:
            loss_itm = nn.functional.cross_entropy(itm_logits, itm_labels)
            with torch.no_grad():
                teacher_logits = self.momentum_mlm_head(
                    self.momentum_text_model(
                        mlm_input_ids, attention_mask, token_type_ids, encoder_hidden_states=step.momentum_image_states,
                        mode="full", return_dict=True,
                    ).last_hidden_state
                )
            loss_mlm = distilled_mlm_loss(mlm_logits, mlm_labels.to(mlm_logits.device), teacher_logits, alpha)
            loss = loss_itc + loss_itm + loss_mlm
        output = VlpAlbefForPretrainingOutput(
            loss=loss,
            loss_itc=loss_itc,
            loss_itm=loss_itm,
            loss_mlm=loss_mlm,
            **contrastive_output_fields(itc),
            itm_logits=itm_logits,
            itm_labels=itm_labels,
            itm_negative_image_indices=itm_negative_image_indices,
            itm_negative_text_indices=itm_negative_text_indices,
            mlm_logits=mlm_logits,
            mlm_input_ids=mlm_input_ids,
            mlm_labels=mlm_labels,
        )
        return output if return_dict else output.to_tuple()


@dataclass
class VlpAlbefForImageTextRetrievalOutput(ImageTextRetrievalOutput):
    """ALBEF retrieval fine-tuning outputs (the fields of :class:`hf_vlp.objectives.contrastive.ImageTextRetrievalOutput`)."""


# one features/scores type serves ALBEF and BLIP; the ALBEF names stay importable
VlpAlbefRetrievalFeatures = RetrievalFeatures
VlpAlbefRetrievalScores = RetrievalScores


class VlpAlbefForImageTextRetrieval(VlpAlbefMomentumModel):
    """ALBEF image-text retrieval (``models/model_retrieval.py`` + ``Retrieval.py``).

    Training (``forward`` with ``image_ids``): ITC with momentum distillation against the feature queues where every
    column showing the same image id - in the batch or in ``idx_queue`` - is a positive (targets uniform over them),
    plus ITM on hard negatives never sharing the image id; ``loss = loss_itc + loss_itm``. Inference
    (:meth:`score_matrices`): ITC similarities, then the top ``k`` candidates of each query re-scored by the raw ITM
    match logit, every other entry -100.

    Weights: ``albef.*`` (online towers, as ``VlpAlbefModel``), ``momentum_*`` (frozen EMA copies; train with
    ``hf_vlp.MomentumCallback``), ``image_queue``/``text_queue``/``idx_queue``. A ``VlpAlbefForPretraining`` directory
    loads too (MLM heads ignored, ``idx_queue`` starting at -100), as the original fine-tuning starts. Unlike the
    original retrieval forward, ``temp`` is clamped to ``[temp_min, temp_max]`` as in pretraining (no effect inside
    that range).
    """

    main_input_name = "pixel_values"
    accepts_loss_kwargs = False
    _keys_to_ignore_on_load_unexpected = [r"^mlm_head\.", r"^momentum_mlm_head\."]
    _keys_to_ignore_on_load_missing = [r"^idx_queue\."]

    def __init__(self, config: VlpAlbefConfig) -> None:
        super().__init__(config)
        vision, text = config.vision_config, config.text_config
        self.albef = VlpAlbefModel(config)
        self.momentum_vision_model = VlpAlbefVisionModel(vision)
        self.momentum_vision_proj = nn.Linear(vision.hidden_size, config.embed_dim)
        self.momentum_text_model = VlpAlbefTextModel(text)
        self.momentum_text_proj = nn.Linear(text.hidden_size, config.embed_dim)
        self.image_queue = FeatureQueue(config.embed_dim, config.queue_size)
        self.text_queue = FeatureQueue(config.embed_dim, config.queue_size)
        self.idx_queue = FeatureQueue(1, config.queue_size, dtype=torch.long, fill_value=-100)
        self.post_init()
        self.init_momentum()

    def momentum_pairs(self) -> list[ModulePair]:
        """(online, momentum) module pairs for the EMA, the original's ``model_pairs``."""
        return [
            (self.albef.vision_model, self.momentum_vision_model),
            (self.albef.vision_proj, self.momentum_vision_proj),
            (self.albef.text_model, self.momentum_text_model),
            (self.albef.text_proj, self.momentum_text_proj),
        ]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.albef.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.albef.set_input_embeddings(value)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        image_ids: torch.Tensor | None = None,
        itm_negative_image_indices: torch.Tensor | None = None,
        itm_negative_text_indices: torch.Tensor | None = None,
        alpha: float | None = None,
        update_queues: bool | None = None,
        generator: torch.Generator | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> VlpAlbefForImageTextRetrievalOutput | tuple:
        """One fine-tuning step's forward on ``B`` matching (image, caption) pairs.

        Args:
            image_ids: ``[B]`` integer id of each pair's image (captions of one image share it; ids must be >= 0
                because the empty queue slots hold -100). Given, the losses are computed and the hard negatives
                drawn; without them only the contrastive logits and the positives' ITM logits are returned.
            itm_negative_image_indices: ``[B]`` in-batch index of each text's negative image, and
                ``itm_negative_text_indices`` of each image's negative text (both or neither); otherwise drawn from
                the softmaxed in-batch similarities with same-id entries zeroed.
            alpha: distillation weight; default ``self.distill_alpha`` (ramped by ``MomentumCallback``).
            update_queues: enqueue the batch's momentum features and ids (needs ``image_ids``); default
                ``self.training and image_ids is not None``.
            generator: random generator for the hard negatives.
        """
        check_matching_pairs(input_ids, pixel_values, "retrieval training")
        check_negative_indices(itm_negative_image_indices, itm_negative_text_indices)
        image_ids = check_image_ids(image_ids, input_ids.shape[0], input_ids.device)
        update_queues = retrieval_queue_update(update_queues, self.training, image_ids)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        alpha = self.distill_alpha if alpha is None else float(alpha)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        albef = self.albef
        step = self._contrastive_step(input_ids, pixel_values, attention_mask, token_type_ids, interpolate_pos_encoding)
        image_states, text_states, itc = step.image_states, step.text_states, step.itc
        loss = loss_itc = loss_itm = itm_labels = None
        if image_ids is not None:
            hard_targets = id_match_targets(image_ids, self.idx_queue.with_batch(image_ids)[0])
            loss_itc = distilled_itc(itc, hard_targets, alpha, albef.temp)
        if update_queues:
            enqueue_momentum_features(itc, self.image_queue, self.text_queue, image_ids, self.idx_queue)

        if image_ids is None:  # only the positives
            itm_texts, itm_masks, itm_images = text_states, attention_mask, image_states
        else:
            if itm_negative_image_indices is None:
                itm_negative_image_indices, itm_negative_text_indices = sample_itm_negatives(
                    itc, same_id_mask(image_ids), generator, eps=self.itm_negative_eps
                )
            triplets = itm_triplets(
                (text_states, attention_mask), (image_states,), itm_negative_image_indices, itm_negative_text_indices
            )
            (itm_texts, itm_masks), (itm_images,) = triplets.text, triplets.image
            itm_labels = triplets.labels
        itm_logits = albef.itm_head(albef.fuse(itm_texts, itm_images, itm_masks).last_hidden_state[:, 0])
        if itm_labels is not None:
            itm_labels = itm_labels.to(itm_logits.device)
            loss_itm = nn.functional.cross_entropy(itm_logits, itm_labels)
            loss = loss_itc + loss_itm
        output = VlpAlbefForImageTextRetrievalOutput(
            loss=loss,
            loss_itc=loss_itc,
            loss_itm=loss_itm,
            **contrastive_output_fields(itc),
            itm_logits=itm_logits,
            itm_labels=itm_labels,
            itm_negative_image_indices=itm_negative_image_indices,
            itm_negative_text_indices=itm_negative_text_indices,
        )
        return output if return_dict else output.to_tuple()

    # ----------------------------------------------------------------------------------------------- inference

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> RetrievalFeatures:
        """Gallery image features: ViT tokens and normalised ``vision_proj([CLS])`` (encode a gallery in chunks and
        :meth:`RetrievalFeatures.cat` them)."""
        states = self.albef.encode_image(pixel_values, interpolate_pos_encoding).last_hidden_state
        embeds = nn.functional.normalize(self.albef.vision_proj(states[:, 0]), dim=-1)
        return RetrievalFeatures(embeds, hidden_states=states)

    @torch.no_grad()
    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> RetrievalFeatures:
        """Gallery text features: unimodal text states, normalised ``text_proj([CLS])`` and the padding mask. Pad
        every chunk to the same length (the original uses ``padding='max_length', max_length=30``)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        states = self.albef.encode_text(input_ids, attention_mask).last_hidden_state
        embeds = nn.functional.normalize(self.albef.text_proj(states[:, 0]), dim=-1)
        return RetrievalFeatures(embeds, hidden_states=states, attention_mask=attention_mask)

    @torch.no_grad()
    def score_matrices(
        self,
        images: RetrievalFeatures,
        texts: RetrievalFeatures,
        k: int = 256,
        fill_value: float = -100.0,
        batch_size: int = 8,
    ) -> RetrievalScores:
        """ALBEF's retrieval scores (``Retrieval.py:evaluation()``): for each image the ``k`` texts of highest ITC
        cosine (and for each text the ``k`` images) get the raw ITM match logit ``itm_head(fusion)[:, 1]``; every
        other entry is ``fill_value``. The ITC similarity is not added. ``k`` is 256 for COCO and 128 for Flickr30k in
        the original; it is capped at the gallery size. ``batch_size`` queries are fused per call (see
        :func:`~hf_vlp.objectives.contrastive.rerank_top_k`)."""
        images.require("images", "hidden_states", built_by="encode_images")
        texts.require("texts", "hidden_states", "attention_mask", built_by="encode_texts")

        def match_logits(image_indices: torch.Tensor, text_indices: torch.Tensor) -> torch.Tensor:
            fused = self.albef.fuse(
                texts.hidden_states[text_indices], images.hidden_states[image_indices], texts.attention_mask[text_indices]
            ).last_hidden_state
            return self.albef.itm_head(fused[:, 0])[:, 1]

        return rerank_top_k(
            images.embeds @ texts.embeds.T, match_logits, k, add_similarity=False, fill_value=fill_value,
            batch_size=batch_size,
        )

    @torch.no_grad()
    def rank(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        k: int = 256,
        batch_size: int = 8,
    ) -> RetrievalScores:
        """:meth:`score_matrices` of a gallery small enough to encode in one batch per modality."""
        return self.score_matrices(
            self.encode_images(pixel_values), self.encode_texts(input_ids, attention_mask), k=k, batch_size=batch_size
        )


# ------------------------------------------------------------------------------------------------------------ VQA


@dataclass
class VlpAlbefForQuestionAnsweringOutput(ModelOutput):
    """ALBEF VQA training outputs. ``loss`` (set only with ``return_loss=True``) is
    ``sum(answer_weights * answer_losses) / num_questions``; ``answer_losses`` ``[N]`` is each answer's summed
    (distilled) token loss. ``logits`` ``[N, La, vocab]`` are the answer decoder's next-token logits over
    ``answer_input_ids`` (position ``t`` predicts token ``t + 1``); ``question_states`` ``[Q, Lq, D]`` the fused
    question states the decoder attends to. ``cache`` is the answer decoder's key/value cache when one was passed
    (generation)."""

    loss: torch.Tensor | None = None
    answer_losses: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    question_states: torch.Tensor | None = None
    cache: Cache | None = None


@dataclass
class VlpAlbefAnswerRanking:
    """``rank_answers`` result: ``answer_indices`` ``[Q, k]`` candidate indices best first, ``scores`` ``[Q, k]``
    their softmax-normalised scores, ``first_token_probs`` ``[Q, A]`` every candidate's first-token probability."""

    answer_indices: torch.Tensor
    scores: torch.Tensor
    first_token_probs: torch.Tensor


def answer_decoder_config(text: VlpAlbefTextConfig, num_layers: int) -> VlpAlbefTextConfig:
    """The answer decoder's config: the text encoder's with ``num_layers`` layers, all cross-attending (fusion layer
    0) to question states of the text width (``models/model_vqa.py`` hard-codes 6 layers and fusion layer 0)."""
    config = copy.deepcopy(text)
    config.num_hidden_layers = num_layers
    config.fusion_layer = 0
    config.encoder_width = text.hidden_size
    return config


def summed_answer_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """Per-answer summed next-token cross-entropy over ``labels != -100`` (xbert's ``BertLMHeadModel`` with
    ``reduction='none'``), with ``teacher_logits`` mixed in as ``(1 - alpha) * CE + alpha * soft-CE``."""
    shifted = logits[:, :-1]
    targets = labels[:, 1:]
    labelled = targets != -100
    hard = nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
    ).view(targets.shape).sum(dim=1)
    if teacher_logits is None:
        return hard
    soft_targets = nn.functional.softmax(teacher_logits[:, :-1], dim=-1)
    soft = -(nn.functional.log_softmax(shifted, dim=-1) * soft_targets).sum(dim=-1)
    soft = (soft * labelled).sum(dim=1)
    return (1 - alpha) * hard + alpha * soft


class VlpAlbefForQuestionAnswering(VlpAlbefMomentumModel, GenerationMixin):
    """ALBEF VQA (``models/model_vqa.py`` + ``VQA.py``): a question encoder (text layers, then fusion layers over the
    image tokens) and an answer decoder - a causal BERT whose every layer cross-attends to the question states - with
    its own embeddings and LM head. Answers are ``[CLS] answer [SEP]`` (``[CLS]`` is the decoder's BOS).

    Training (``forward`` with ``return_loss=True``): each question's states are repeated for each of its
    ``answers_per_question``; every answer's loss is its summed token CE distilled from the momentum towers
    (``(1 - alpha) * CE + alpha * soft-CE``); ``loss = sum(answer_weights * answer_loss) / num_questions``. The EMA
    step runs in ``hf_vlp.MomentumCallback`` (the original runs it at the start of every training forward).
    Inference (:meth:`rank_answers`): rank a fixed candidate list as the original's ``rank_answer``; or
    (:meth:`generate`, transformers' ``GenerationMixin``) decode free answers greedily or by beam search, the
    question encoded once and the decoder run with a KV cache, from ``[CLS]`` until ``[SEP]``
    (``model.generate(**processor(images=..., text=questions, text_kind="question", return_tensors="pt"))``;
    :meth:`generate_answers` returns the decoded strings). :meth:`from_pretraining` starts from a pretrained ALBEF
    as ``VQA.py`` does.

    Weights: ``vision_model``, ``text_model``, ``answer_decoder``, ``answer_head`` (decoder tied to the answer
    decoder's word embeddings) and their frozen ``momentum_*`` copies.
    """

    main_input_name = "pixel_values"
    accepts_loss_kwargs = False
    answer_decoder_layers = 6  # hard-coded in the original
    _tied_weights_keys = {
        "answer_head.decoder.weight": "answer_decoder.transformer.embeddings.word_embeddings.weight",
        "momentum_answer_head.decoder.weight": "momentum_answer_decoder.transformer.embeddings.word_embeddings.weight",
    }

    def __init__(self, config: VlpAlbefConfig) -> None:
        super().__init__(config)
        vision, text = config.vision_config, config.text_config
        if text.encoder_width != text.hidden_size:
            raise ValueError(
                f"ALBEF VQA's answer decoder cross-attends with the text config's encoder_width "
                f"({text.encoder_width}) to question states of the text width ({text.hidden_size}); the vision "
                "width must equal the text width (set vision_config.hidden_size = text_config.hidden_size)."
            )
        decoder = answer_decoder_config(text, self.answer_decoder_layers)
        self.vision_model = VlpAlbefVisionModel(vision)
        self.text_model = VlpAlbefTextModel(text)
        self.answer_decoder = VlpAlbefTextModel(decoder)
        self.answer_head = self._build_answer_head(text)
        self.momentum_vision_model = VlpAlbefVisionModel(vision)
        self.momentum_text_model = VlpAlbefTextModel(text)
        self.momentum_answer_decoder = VlpAlbefTextModel(decoder)
        self.momentum_answer_head = self._build_answer_head(text)
        self.post_init()
        self.init_momentum()
        self.generation_config = self.default_generation_config()

    def default_generation_config(self) -> GenerationConfig:
        """Answer decoding defaults: start at ``[CLS]`` (``text_config.cls_token_id``), stop at ``[SEP]``
        (``text_config.sep_token_id``), pad with ``text_config.pad_token_id``; beam search with 3 beams and at most
        10 new tokens (about BLIP's VQA ``generate`` settings; ALBEF itself only ranks a candidate list)."""
        text = self.config.text_config
        return GenerationConfig(
            bos_token_id=text.cls_token_id,
            eos_token_id=text.sep_token_id,
            pad_token_id=text.pad_token_id,
            num_beams=3,
            max_new_tokens=10,
        )

    @classmethod
    def from_pretraining(
        cls,
        pretrained: "VlpAlbefForPretraining | VlpAlbefForMaskedLM | str | os.PathLike",
        **from_pretrained_kwargs: Any,
    ) -> "VlpAlbefForQuestionAnswering":
        """Build the VQA model from a pretrained ALBEF as the original ``VQA.py`` does: the image tower and the
        question encoder (text and fusion layers) copy the pretrained ones; answer-decoder layer ``j`` copies
        pretrained fusion layer ``fusion_layer + j``; the decoder's embeddings and the answer head copy the pretrained
        text embeddings and MLM head; the momentum towers start equal to the online ones.

        ``pretrained`` is a ``VlpAlbefForPretraining`` (or ``VlpAlbefForMaskedLM``) instance or a directory saved
        from one (``from_pretrained_kwargs`` go to its ``from_pretrained``). The config is the pretrained one; a
        different fine-tuning resolution needs ``interpolate_pos_encoding=True`` in the forwards. Returned in eval
        mode, like ``from_pretrained``.
        """
        if isinstance(pretrained, (str, os.PathLike)):
            pretrained = VlpAlbefForPretraining.from_pretrained(pretrained, **from_pretrained_kwargs)
        elif from_pretrained_kwargs:
            raise TypeError(
                f"from_pretrained keyword arguments {sorted(from_pretrained_kwargs)} only apply when `pretrained` "
                "is a directory"
            )
        if not isinstance(pretrained, (VlpAlbefForPretraining, VlpAlbefForMaskedLM)):
            raise TypeError(
                "pretrained must be a VlpAlbefForPretraining or VlpAlbefForMaskedLM (or a directory saved from one), "
                f"got {type(pretrained).__name__}"
            )
        config = copy.deepcopy(pretrained.config)
        text = config.text_config
        fusion_layers = text.num_hidden_layers - text.fusion_layer
        if fusion_layers < cls.answer_decoder_layers:
            logger.warning(
                "The answer decoder has %d layers but the pretrained text encoder only %d fusion layers; decoder "
                "layers %d-%d keep their initialisation (the original always has 6 fusion layers).",
                cls.answer_decoder_layers, fusion_layers, fusion_layers, cls.answer_decoder_layers - 1,
            )
        model = cls(config)
        source = pretrained.albef
        source_text = source.text_model.transformer
        decoder = model.answer_decoder.transformer
        with torch.no_grad():
            model.vision_model.load_state_dict(source.vision_model.state_dict())
            model.text_model.load_state_dict(source.text_model.state_dict())
            decoder.embeddings.load_state_dict(source_text.embeddings.state_dict())
            for index, layer in enumerate(decoder.encoder.layers[:fusion_layers]):
                layer.load_state_dict(source_text.encoder.layers[text.fusion_layer + index].state_dict())
            if pretrained.mlm_head is None:
                logger.warning("The pretrained model has no MLM head; the answer head keeps its initialisation.")
            else:
                model.answer_head.load_state_dict(pretrained.mlm_head.state_dict())
        model.tie_weights()
        model.init_momentum()
        return model.to(device=pretrained.device, dtype=pretrained.dtype).eval()

    @staticmethod
    def _build_answer_head(text: VlpAlbefTextConfig) -> MaskedLMHead:
        return MaskedLMHead(
            text.hidden_size, text.vocab_size, activation=text.hidden_act, layer_norm_eps=text.layer_norm_eps
        )

    def momentum_pairs(self) -> list[ModulePair]:
        """(online, momentum) pairs for the EMA; decoder and LM head form one pair so the tied weight counts once."""
        return [
            (self.vision_model, self.momentum_vision_model),
            (self.text_model, self.momentum_text_model),
            (nn.ModuleList([self.answer_decoder, self.answer_head]),
             nn.ModuleList([self.momentum_answer_decoder, self.momentum_answer_head])),
        ]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.answer_head.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.answer_head.decoder = value

    # ------------------------------------------------------------------------------------------- building blocks

    def encode_question(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        momentum: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """Fused question states ``[Q, Lq, D]``: all text-encoder layers over the image tokens (``momentum`` uses
        the EMA towers)."""
        vision = self.momentum_vision_model if momentum else self.vision_model
        text = self.momentum_text_model if momentum else self.text_model
        image_states = vision(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True)
        return text(
            input_ids, attention_mask, encoder_hidden_states=image_states.last_hidden_state, mode="full",
            return_dict=True,
        ).last_hidden_state

    def decode_answers(
        self,
        answer_input_ids: torch.Tensor,
        question_states: torch.Tensor,
        answer_attention_mask: torch.Tensor | None = None,
        question_attention_mask: torch.Tensor | None = None,
        momentum: bool = False,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        """Next-token logits ``[N, La, vocab]`` of answers ``[N, La]`` under a causal mask, each cross-attending to
        its row of ``question_states`` ``[N, Lq, D]`` (1/0 masks; ``None`` = all visible).

        With a key/value ``cache`` holding the first ``t`` tokens, ``answer_input_ids`` are the tokens that follow
        (positions ``t, t + 1, ...``) and are appended to it; an ``answer_attention_mask`` must then cover all
        ``t + La`` tokens."""
        decoder = self.momentum_answer_decoder if momentum else self.answer_decoder
        head = self.momentum_answer_head if momentum else self.answer_head
        if answer_input_ids.shape[0] != question_states.shape[0]:
            raise ValueError(
                f"decode_answers pairs answer row i with question row i: got {answer_input_ids.shape[0]} answers "
                f"and {question_states.shape[0]} question states (repeat the states per answer)"
            )
        transformer = decoder.transformer
        past_length = cache.get_seq_length() if cache is not None else 0
        hidden = transformer.embeddings(answer_input_ids, position_offset=past_length)
        dtype = hidden.dtype
        self_mask = padding_mask(answer_attention_mask, dtype) if answer_attention_mask is not None else None
        cross_mask = padding_mask(question_attention_mask, dtype) if question_attention_mask is not None else None
        hidden = transformer.encoder(
            hidden, self_mask, question_states, cross_mask, mode="full", is_causal=True, cache=cache
        ).last_hidden_state
        return head(hidden)

    # ------------------------------------------------------------------------------------------------- training

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        answer_input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        answer_attention_mask: torch.Tensor | None = None,
        answer_weights: torch.Tensor | None = None,
        answers_per_question: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_loss: bool | None = None,
        alpha: float | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        question_states: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> VlpAlbefForQuestionAnsweringOutput | tuple:
        """One VQA fine-tuning forward on ``Q`` (image, question) pairs and their ``N`` answers (also the decoding
        step of :meth:`generate`).

        Args:
            input_ids, pixel_values: ``[Q, Lq]`` questions and ``[Q, C, H, W]`` their images; ``attention_mask`` is
                the questions' 1/0 padding mask.
            answer_input_ids: ``[N, La]`` answers ``[CLS] a.. [SEP] [PAD]..``, grouped by question in order.
            answers_per_question: ``[Q]`` how many answers each question has (the original's ``k``); default one.
            answer_weights: ``[N]`` weight of each answer (the original's ``weights``); default ones.
            labels: ``[N, La]`` token targets, -100 ignored; default ``answer_input_ids`` with pads set to -100.
            return_loss: compute ``answer_losses`` and ``loss`` (with momentum distillation).
            alpha: distillation weight; default ``self.distill_alpha`` (ramped by ``MomentumCallback``).
            question_states: ``[Q, Lq, D]`` precomputed :meth:`encode_question` output used instead of encoding
                ``input_ids``/``pixel_values`` (which distillation still needs for the momentum towers).
            cache: the answer decoder's key/value cache (generation): ``answer_input_ids`` are then the tokens
                after the cached ones.
        """
        if answer_input_ids is None:
            raise ValueError("pass answer_input_ids ([N, La] answers starting with [CLS])")
        if question_states is None:
            if input_ids is None or pixel_values is None:
                raise ValueError("pass the questions' input_ids and pixel_values, or precomputed question_states")
            if pixel_values.shape[0] != input_ids.shape[0]:
                raise ValueError(
                    f"pass one image per question: got {pixel_values.shape[0]} images, {input_ids.shape[0]} questions"
                )
            num_questions, question_length = input_ids.shape
        else:
            num_questions, question_length = question_states.shape[:2]
        if cache is not None and return_loss:
            raise ValueError("the cache is for generation: compute losses on whole answers without a cache")
        num_answers = answer_input_ids.shape[0]
        device = answer_input_ids.device
        if answers_per_question is None:
            if num_answers != num_questions:
                raise ValueError(
                    f"{num_answers} answers for {num_questions} questions: pass answers_per_question ([Q] counts)"
                )
            answers_per_question = torch.ones(num_questions, dtype=torch.long)
        answers_per_question = answers_per_question.reshape(-1).to(device=device, dtype=torch.long)
        if answers_per_question.shape[0] != num_questions or int(answers_per_question.sum()) != num_answers:
            raise ValueError(
                f"answers_per_question must hold one count per question ({num_questions}) summing to the number of "
                f"answers ({num_answers}), got {answers_per_question.tolist()}"
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        alpha = self.distill_alpha if alpha is None else float(alpha)
        if attention_mask is None:
            attention_mask = torch.ones(num_questions, question_length, dtype=torch.long, device=device)
        if answer_attention_mask is None and cache is None:
            answer_attention_mask = torch.ones_like(answer_input_ids)
        if question_states is None:
            question_states = self.encode_question(
                pixel_values, input_ids, attention_mask, False, interpolate_pos_encoding
            )
        repeated_states = question_states.repeat_interleave(answers_per_question, dim=0)
        repeated_mask = attention_mask.repeat_interleave(answers_per_question, dim=0)
        logits = self.decode_answers(
            answer_input_ids, repeated_states, answer_attention_mask, repeated_mask, cache=cache
        )
        loss = answer_losses = None
        if return_loss:
            if labels is None:
                pad_id = self.config.text_config.pad_token_id
                labels = answer_input_ids.masked_fill(answer_input_ids == pad_id, -100)
            if answer_weights is None:
                answer_weights = torch.ones(num_answers)
            answer_weights = answer_weights.reshape(-1).to(device=logits.device, dtype=logits.dtype)
            if answer_weights.shape[0] != num_answers:
                raise ValueError(f"answer_weights must hold one weight per answer ({num_answers})")
            teacher_logits = None
            if alpha > 0:
                if input_ids is None or pixel_values is None:
                    raise ValueError(
                        "distillation (alpha > 0) runs the momentum towers on input_ids and pixel_values: pass them, "
                        "or alpha=0"
                    )
                with torch.no_grad():
                    momentum_states = self.encode_question(
                        pixel_values, input_ids, attention_mask, True, interpolate_pos_encoding
                    ).repeat_interleave(answers_per_question, dim=0)
                    teacher_logits = self.decode_answers(
                        answer_input_ids, momentum_states, answer_attention_mask, repeated_mask, momentum=True
                    )
            answer_losses = summed_answer_losses(logits, labels.to(logits.device), teacher_logits, alpha)
            loss = (answer_weights * answer_losses).sum() / num_questions
        output = VlpAlbefForQuestionAnsweringOutput(
            loss=loss, answer_losses=answer_losses, logits=logits, question_states=question_states, cache=cache
        )
        return output if return_dict else output.to_tuple()

    # ----------------------------------------------------------------------------------------------- generation

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        question_states: torch.Tensor | None = None,
        question_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        next_sequence_length: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One decoding step's ``forward`` inputs: the answer tokens the cache has not seen, the question states
        (repeated per beam by ``generate``) and their mask. ``input_ids`` are the answers generated so far;
        ``attention_mask`` is ``generate``'s mask over them (all ones: answers hold no padding) and is dropped."""
        if question_states is None:
            raise ValueError(
                "VlpAlbefForQuestionAnswering decodes from question states: call generate(pixel_values=..., "
                "input_ids=questions, attention_mask=...), which encodes the questions once"
            )
        return {
            "answer_input_ids": uncached_tokens(input_ids, next_sequence_length),
            "question_states": question_states,
            "attention_mask": question_attention_mask,
            "cache": cache,
        }

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Generate free answers to ``Q`` questions ``input_ids`` ``[Q, Lq]`` about ``pixel_values``: the question
        encoder runs once, then transformers' ``generate`` decodes ``[CLS] answer.. [SEP]`` with the answer decoder
        cross-attending to the question states (repeated per beam) and a KV cache.

        ``kwargs`` are ``generate``'s (``max_new_tokens``, ``num_beams``, ``do_sample``, ``return_dict_in_generate``,
        ...); defaults come from ``self.generation_config`` (see :meth:`default_generation_config`). Returns what
        ``generate`` returns: ``[Q * num_return_sequences, T]`` ids starting with ``[CLS]`` by default.
        """
        if pixel_values is None or input_ids is None:
            raise ValueError("generate needs the images (pixel_values) and the tokenised questions (input_ids)")
        if kwargs.get("cache") is not None and kwargs["cache"].get_seq_length() > 0:
            raise ValueError("generate starts every answer from [CLS]: pass an empty cache (or none)")
        defaults = self.default_generation_config()
        generation_config = fill_special_tokens(
            kwargs,
            generation_config,
            self.generation_config,
            {field: getattr(defaults, field) for field in ("bos_token_id", "eos_token_id", "pad_token_id")},
        )
        bos_token_id = resolved_generation_value("bos_token_id", kwargs, generation_config, self.generation_config)
        if bos_token_id is None:
            raise ValueError(
                "answers start with [CLS]: set config.text_config.cls_token_id (the tokenizer's [CLS] id) or pass "
                "bos_token_id; generate_answers(processor, ...) takes the special tokens from the tokenizer"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        question_states = self.encode_question(pixel_values, input_ids, attention_mask, False, interpolate_pos_encoding)
        start_ids = torch.full((input_ids.shape[0], 1), int(bos_token_id), dtype=torch.long, device=input_ids.device)
        add_decoder_cache(kwargs, generation_config, self.generation_config, self.answer_decoder.config)
        if generation_config is not None:
            kwargs["generation_config"] = generation_config
        return super().generate(
            input_ids=start_ids, question_states=question_states, question_attention_mask=attention_mask, **kwargs
        )

    @torch.no_grad()
    def generate_answers(
        self,
        processor: Any,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> list[str]:
        """:meth:`generate` and decode: one answer string per question (per returned sequence), special tokens
        removed. ``processor`` is a ``VlpAlbefProcessor`` or its tokenizer; the special tokens the generation
        config lacks (``[CLS]``, ``[SEP]``, ``[PAD]``) are read from it."""
        generation_config = fill_special_tokens(
            generate_kwargs,
            generate_kwargs.pop("generation_config", None),
            self.generation_config,
            special_token_ids_from_tokenizer(processor),
        )
        output = self.generate(
            pixel_values, input_ids, attention_mask, generation_config=generation_config, **generate_kwargs
        )
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        return decode_generated(processor, sequences)

    # ------------------------------------------------------------------------------------------------ inference

    @torch.no_grad()
    def rank_answers(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        answer_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        answer_attention_mask: torch.Tensor | None = None,
        k: int = 128,
        interpolate_pos_encoding: bool = False,
    ) -> VlpAlbefAnswerRanking:
        """Rank the candidate answers ``[A, La]`` for each question as ALBEF's ``rank_answer``: keep the ``k``
        candidates of highest first-token probability under the decoder fed ``[CLS]`` alone, teacher-force them,
        score ``log p_first - summed CE`` (the first token counts twice, as in the original), softmax over the
        ``k`` and sort. ``k`` is capped at the number of candidates (128 in ``VQA.yaml``)."""
        if k < 1:
            raise ValueError(f"k (candidates kept after first-token pruning) must be >= 1, got {k}")
        num_candidates = answer_input_ids.shape[0]
        if answer_input_ids.shape[1] < 2:
            raise ValueError("answer_input_ids must be [CLS] answer [SEP]: at least 2 tokens per candidate")
        k = min(k, num_candidates)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if answer_attention_mask is None:
            answer_attention_mask = torch.ones_like(answer_input_ids)
        question_states = self.encode_question(pixel_values, input_ids, attention_mask, False, interpolate_pos_encoding)
        num_questions = question_states.shape[0]
        start_ids = answer_input_ids[:1, :1].expand(num_questions, 1)
        start_logits = self.decode_answers(start_ids, question_states, None, attention_mask)[:, 0]
        first_token_probs = nn.functional.softmax(start_logits, dim=-1).index_select(1, answer_input_ids[:, 1])
        topk_probs, topk_ids = first_token_probs.topk(k, dim=1)
        candidate_ids = answer_input_ids[topk_ids.reshape(-1)]
        candidate_mask = answer_attention_mask[topk_ids.reshape(-1)]
        labels = candidate_ids.masked_fill(candidate_ids == self.config.text_config.pad_token_id, -100)
        logits = self.decode_answers(
            candidate_ids,
            question_states.repeat_interleave(k, dim=0),
            candidate_mask,
            attention_mask.repeat_interleave(k, dim=0),
        )
        sequence_losses = summed_answer_losses(logits, labels).view(num_questions, k)
        scores = nn.functional.softmax(topk_probs.log() - sequence_losses, dim=-1)
        scores, order = scores.topk(k, dim=1)
        return VlpAlbefAnswerRanking(torch.gather(topk_ids, 1, order), scores, first_token_probs)


def recall_at_k_from_scores(
    image_to_text: torch.Tensor,
    text_to_image: torch.Tensor,
    image_to_texts: list[list[int]],
    text_to_image_index: list[int],
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@K in percent from score matrices, as ALBEF's ``itm_eval``: an image query's rank is that of its
    best-ranked ground-truth caption; keys ``txt_r{k}``/``img_r{k}`` plus ``txt_r_mean``, ``img_r_mean``, ``r_mean``.

    Ties are broken by a stable descending sort (the original uses numpy's reversed ``argsort``)."""
    if image_to_text.shape != text_to_image.T.shape:
        raise ValueError(
            f"image_to_text {tuple(image_to_text.shape)} must be the transpose shape of text_to_image "
            f"{tuple(text_to_image.shape)}"
        )
    if len(image_to_texts) != image_to_text.shape[0] or len(text_to_image_index) != text_to_image.shape[0]:
        raise ValueError("pass one caption list per image (image_to_texts) and one image index per text")
    positions_i2t = image_to_text.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    positions_t2i = text_to_image.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    image_ranks = torch.stack([positions_i2t[row, captions].min() for row, captions in enumerate(image_to_texts)])
    text_ranks = positions_t2i[torch.arange(len(text_to_image_index)), torch.tensor(text_to_image_index)]
    result: dict[str, float] = {}
    for name, ranks in (("txt", image_ranks), ("img", text_ranks)):
        for k in ks:
            result[f"{name}_r{k}"] = 100.0 * float((ranks < k).float().mean())
        result[f"{name}_r_mean"] = sum(result[f"{name}_r{k}"] for k in ks) / len(ks)
    result["r_mean"] = (result["txt_r_mean"] + result["img_r_mean"]) / 2
    return result


__all__ = [
    "VlpAlbefForImageTextRetrieval",
    "VlpAlbefForImageTextRetrievalOutput",
    "VlpAlbefForMaskedLM",
    "VlpAlbefForPretraining",
    "VlpAlbefForPretrainingOutput",
    "VlpAlbefForQuestionAnswering",
    "VlpAlbefForQuestionAnsweringOutput",
    "VlpAlbefAnswerRanking",
    "VlpAlbefModel",
    "VlpAlbefOutput",
    "VlpAlbefPreTrainedModel",
    "VlpAlbefTextModel",
    "VlpAlbefVisionModel",
    "VlpAlbefRetrievalFeatures",
    "VlpAlbefRetrievalScores",
    "recall_at_k_from_scores",
]
