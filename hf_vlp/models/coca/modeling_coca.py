"""CoCa (Yu et al., 2022): an image encoder and a text decoder split in two, trained contrastively and to caption.

    image -> ViT -> tokens -> attentional pooler -> norm_post -> query 0 -> visual_projection -> image features --\\
                                                              \\-> queries 1.. = image tokens (decoder memory)    |
    text + [CLS] -> unimodal text decoder (causal) -> [CLS] -> norm_final -> text_projection -> text features ----+
                                                   \\-> text token states                     logit_scale * cos
    text token states + image tokens -> multimodal decoder -> lm_head -> next-token logits (captioning)

The image side is open_clip's by default: one pooler with ``N`` queries whose first output is the contrastive embedding
and whose others are the decoder's memory (``pooler_layout="single"``); ``"parallel"`` is the paper's layout, a
1-query contrastive pooler beside an ``N``-query decoder pooler. The unimodal text decoder appends its class token last
and hides pads as open_clip 3.x does (every query row, the shifted alignment of :func:`~hf_vlp.modules.text.cls_row_mask`).

This file holds the towers and the dual encoder (:class:`VlpCocaModel`, zero-shot classification and retrieval);
captioning and the joint training loss live in ``modeling_coca_generation.py``.
"""

from dataclasses import dataclass
from typing import Any, Unpack

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithCrossAttentions, BaseModelOutputWithPooling, ModelOutput

from ...modules.attention import AttentionMemory
from ...modules.decoder import MultimodalDecoder
from ...modules.pooling import AttentionalPooler
from ...modules.towers import block_options, build_vision_tower
from ...objectives.losses import contrastive_loss
from ..clip.modeling_clip import VlpClipPreTrainedModel, VlpClipTextModel
from ..modeling_utils import OutputKwargs, float_tensor, model_forward
from ..towers import VisionTowerMixin, check_both_modalities, with_pooled_features
from .configuration_coca import VlpCocaConfig, VlpCocaDecoderConfig, VlpCocaTextConfig, VlpCocaVisionConfig


@dataclass
class VlpCocaVisionModelOutput(ModelOutput):
    """The image tower: ``last_hidden_state`` the ViT tokens (before pooling), ``pooler_output`` the contrastive query
    after ``norm_post`` (not projected), ``image_tokens`` the decoder's cross-attention memory ``[B, M, projection_dim]``
    (after ``norm_post``, not projected)."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    image_tokens: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class VlpCocaOutput(ModelOutput):
    """Contrastive outputs; ``image_embeds``/``text_embeds`` are the L2-normalised projected features."""

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: VlpCocaVisionModelOutput | None = None


class VlpCocaPreTrainedModel(VlpClipPreTrainedModel):
    """CLIP's model contract (flags, OpenAI initialisation of the ViT and the text tower) with CoCa's card and
    pooler/decoder initialisation."""

    config: VlpCocaConfig
    base_model_prefix = "coca"
    _no_split_modules = ["PreNormBlock", "MultimodalDecoderLayer"]
    model_card_template = "coca"

    def model_card_fields(self) -> dict[str, Any]:
        config = self.config
        vision = getattr(config, "vision_config", config if isinstance(config, VlpCocaVisionConfig) else None)
        text = getattr(config, "text_config", config if isinstance(config, VlpCocaTextConfig) else None)
        decoder = getattr(config, "decoder_config", None)
        fields: dict[str, Any] = {
            "prompt_template": "a photo of a {}.",
            "vision_description": "n/a",
            "text_description": "n/a",
            "decoder_description": "n/a",
            "projection_dim": getattr(config, "projection_dim", "n/a"),
            "logit_scale": "n/a",
            "caption_loss_weight": getattr(config, "caption_loss_weight", "n/a"),
            "contrastive_loss_weight": getattr(config, "contrastive_loss_weight", "n/a"),
        }
        if vision is not None:
            layout = "one pooler, query 0 contrastive" if vision.pooler_layout == "single" else "two poolers"
            fields["vision_description"] = (
                f"ViT ({vision.num_hidden_layers} layers, width {vision.hidden_size}, patch {vision.patch_size}, "
                f"{vision.image_size}px) + attentional pooler ({vision.pooler_num_queries} queries, {layout})"
            )
        if text is not None:
            fields["text_description"] = (
                f"{text.num_hidden_layers}-layer, width-{text.hidden_size}, {text.max_position_embeddings}-token"
            )
        if decoder is not None:
            fields["decoder_description"] = f"{decoder.num_hidden_layers}-layer, width-{decoder.hidden_size}"
        if isinstance(getattr(self, "logit_scale", None), nn.Parameter):
            fields["logit_scale"] = f"{self.logit_scale.item():.4f}"
        return fields

    def _init_weights(self, module: nn.Module) -> None:
        """open_clip's initialisation: OpenAI CLIP's for the ViT and the unimodal text decoder, standard-normal pooler
        queries, projections and the vocabulary projection N(0, width^-1/2), ``logit_scale`` from the config. (open_clip
        leaves the multimodal decoder at PyTorch's defaults and its vocabulary projection uninitialised; the linear
        layers here get transformers' N(0, 0.02).)"""
        super()._init_weights(module)
        if isinstance(module, AttentionalPooler):
            init.normal_(module.query, std=1.0)
        elif isinstance(module, VlpCocaModel):
            for name in ("visual_projection", "text_projection", "lm_head"):
                weight = float_tensor(getattr(module, name, None), "weight")
                if weight is not None:
                    init.normal_(weight, std=weight.shape[1] ** -0.5)
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class VlpCocaVisionModel(VisionTowerMixin, VlpCocaPreTrainedModel):
    """The image tower: ViT (pre-norm, no final norm) -> attentional pooler(s) -> ``norm_post``.

    Returns :class:`VlpCocaVisionModelOutput`: the contrastive query as ``pooler_output`` and the decoder memory as
    ``image_tokens`` (``pooler_layout`` says which pooler outputs which)."""

    config: VlpCocaVisionConfig

    def build_tower(self, config: VlpCocaVisionConfig) -> None:
        self.transformer = build_vision_tower(config, patch_bias=False, norm_pre=True, final_norm="none")
        pooler = dict(
            num_heads=config.pooler_num_attention_heads, layer_norm_eps=config.layer_norm_eps, config=config
        )
        self.attentional_pooler = AttentionalPooler(
            config.projection_dim, config.hidden_size, num_queries=config.pooler_num_queries, **pooler
        )
        if config.pooler_layout == "parallel":
            self.contrastive_pooler = AttentionalPooler(
                config.projection_dim, config.hidden_size, num_queries=1, **pooler
            )
        self.norm_post = nn.LayerNorm(config.projection_dim, eps=config.layer_norm_eps)

    def tower_output(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool, **flags: bool
    ) -> VlpCocaVisionModelOutput:
        outputs = self.transformer(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **flags)
        tokens = outputs.last_hidden_state
        pooled = self.norm_post(self.attentional_pooler(tokens))
        if self.config.pooler_layout == "single":
            contrastive, image_tokens = pooled[:, 0], pooled[:, 1:]
        else:
            contrastive, image_tokens = self.norm_post(self.contrastive_pooler(tokens))[:, 0], pooled
        return VlpCocaVisionModelOutput(
            last_hidden_state=tokens,
            pooler_output=contrastive,
            image_tokens=image_tokens,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class VlpCocaTextModel(VlpClipTextModel, VlpCocaPreTrainedModel):
    """The unimodal text decoder: CLIP's text tower with a class token appended last. ``pooler_output`` is that token
    after ``norm_final`` (not projected); ``last_hidden_state`` the text tokens' states without the final norm (the
    multimodal decoder's input). Arguments as :class:`~hf_vlp.models.clip.modeling_clip.VlpClipTextModel`'s; without
    ``attention_mask`` the pads are the ``pad_token_id`` positions (open_clip's rule)."""

    config: VlpCocaTextConfig

    def pooling_options(self, config: VlpCocaTextConfig) -> dict[str, Any]:
        """The appended class token, its pad mask on every query row as open_clip 3.x."""
        return {"embed_cls": True, "pad_token_id": config.pad_token_id, "cls_mask_rows": "all"}


class VlpCocaMultimodalDecoder(VlpCocaPreTrainedModel):
    """The multimodal text decoder (:class:`~hf_vlp.modules.decoder.MultimodalDecoder`) as a model of its own config,
    as the towers are, so that attention settings given to the whole model (``attn_implementation``) reach its config
    through transformers' checks. ``first_cache_layer`` is its first layer's key/value-cache index (CoCa caches the
    unimodal decoder's layers first). ``forward`` is the decoder's."""

    config: VlpCocaDecoderConfig

    def __init__(self, config: VlpCocaDecoderConfig, first_cache_layer: int = 0) -> None:
        super().__init__(config)
        self.transformer = MultimodalDecoder(
            block_options(config, attention_dropout=config.attention_dropout),
            config.num_hidden_layers,
            config.memory_size,
            config=config,
            first_cache_layer=first_cache_layer,
        )
        self.post_init()

    def forward(
        self,
        hidden_states: torch.Tensor,
        memory: torch.Tensor | AttentionMemory,
        cache: Any = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithCrossAttentions:
        return self.transformer(
            hidden_states, memory, cache=cache, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )


class VlpCocaModel(VlpCocaPreTrainedModel):
    """CoCa's dual encoder for zero-shot classification and retrieval: ``get_image_features``, ``get_text_features``
    and ``forward`` (similarity logits, the contrastive loss on request). Loads any CoCa checkpoint; the captioning
    decoder's weights are not used here."""

    _keys_to_ignore_on_load_unexpected = [r"^text_decoder\.", r"^lm_head\."]

    def __init__(self, config: VlpCocaConfig) -> None:
        super().__init__(config)
        self.build_encoders(config)
        self.build_heads(config)
        self.post_init()

    def build_heads(self, config: VlpCocaConfig) -> None:
        """Modules a head adds to the dual encoder (none here)."""

    def build_encoders(self, config: VlpCocaConfig) -> None:
        self.vision_model = VlpCocaVisionModel(config.vision_config)
        self.text_model = VlpCocaTextModel(config.text_config)
        self.visual_projection = nn.Linear(config.projection_dim, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))

    def get_input_embeddings(self) -> nn.Embedding:
        """The text tokens' embeddings (shared by both text decoders)."""
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """transformers' resize (the token embeddings, and the captioner's ``lm_head``); the decoder config's
        vocabulary follows the text config's, as the config requires."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.config.decoder_config.vocab_size = embeddings.num_embeddings
        return embeddings

    @model_forward
    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs: Unpack[OutputKwargs]
    ) -> BaseModelOutputWithPooling | tuple:
        """The image tower's output with ``pooler_output`` = the projected, un-normalised image features
        ``[B, projection_dim]`` (open_clip's ``encode_image(normalize=False)``)."""
        outputs = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        return with_pooled_features(outputs, self.visual_projection(outputs.pooler_output))

    @model_forward
    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Unpack[OutputKwargs]
    ) -> BaseModelOutputWithPooling | tuple:
        """The text tower's output with ``pooler_output`` = the projected, un-normalised text features
        ``[B, projection_dim]`` (the class token's; open_clip's ``encode_text(normalize=False)``)."""
        outputs = self.text_model(input_ids, attention_mask, return_dict=True, **kwargs)
        return with_pooled_features(outputs, self.text_projection(outputs.pooler_output))

    def encode_pair(
        self,
        input_ids: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        interpolate_pos_encoding: bool,
        **flags: bool,
    ) -> tuple[VlpCocaVisionModelOutput, BaseModelOutputWithPooling, torch.Tensor, torch.Tensor]:
        """Both towers on a batch: their outputs and the normalised ``image_embeds`` and ``text_embeds``."""
        check_both_modalities(self, input_ids, pixel_values)
        vision_outputs = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **flags
        )
        text_outputs = self.text_model(input_ids, attention_mask, return_dict=True, **flags)
        image_embeds = nn.functional.normalize(self.visual_projection(vision_outputs.pooler_output), dim=-1)
        text_embeds = nn.functional.normalize(self.text_projection(text_outputs.pooler_output), dim=-1)
        return vision_outputs, text_outputs, image_embeds, text_embeds

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpCocaOutput | tuple:
        """Similarity logits of every image against every text; the contrastive loss (gathered across processes, see
        :func:`hf_vlp.objectives.losses.contrastive_loss`) only when ``return_loss=True``."""
        vision_outputs, text_outputs, image_embeds, text_embeds = self.encode_pair(
            input_ids, pixel_values, attention_mask, interpolate_pos_encoding, **kwargs
        )
        scale = self.logit_scale.exp()
        logits_per_image = scale * image_embeds @ text_embeds.t()
        loss = contrastive_loss(image_embeds, text_embeds, scale) if return_loss else None
        return VlpCocaOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )


__all__ = [
    "VlpCocaModel",
    "VlpCocaOutput",
    "VlpCocaPreTrainedModel",
    "VlpCocaTextModel",
    "VlpCocaVisionModel",
    "VlpCocaVisionModelOutput",
    "VlpCocaMultimodalDecoder",
]
