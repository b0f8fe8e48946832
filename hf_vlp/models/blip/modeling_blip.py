"""BLIP (Li et al., 2022): a ViT and one BERT-style "multimodal mixture of encoder-decoder" (MED) text transformer.

    image -> ViT -> image tokens ---------------------------------------------------------------+
                 \\-> [CLS] -> vision_proj -> normalised image features                           |  (cross-attention memory)
    [CLS] text -> MED mode "text"       (bidirectional SA, FFN)              -> [CLS] -> text_proj -> text features
    [ENC] text -> MED mode "multimodal" (bidirectional SA, cross-attn, FFN)  -> [ENC] -> itm_head -> ITM logits
    [DEC] text -> MED mode "decoder"    (causal SA, cross-attn, FFN)         -> lm_head -> next-token logits
    similarity logits = image features @ text features.T / temp

The three text roles share every MED parameter except the self-attention (one tensor each, see
:class:`hf_vlp.modules.text.MedTextTransformer`). Each head builds the self-attentions it uses (``text_roles``):
:class:`VlpBlipModel` the encoder's, :class:`VlpBlipForConditionalGeneration` the decoder's, a pre-training head both.
All heads use the same flat parameter names (``vision_model.*``, ``text_model.*``, ``vision_proj``, ``text_proj``,
``itm_head``, ``temp``, ``lm_head``, ``momentum_*``, ``*_queue``), so any BLIP checkpoint initialises any head, the
keys a head does not use being ignored - as the original's ``load_checkpoint`` feeds one pre-trained file to every task.
``[ENC]``/``[DEC]`` are put at position 0 by the model, as in the original code, never by the processor.

Captioning (:meth:`VlpBlipForConditionalGeneration.generate`) runs transformers' ``generate`` over the image tokens
wrapped in an :class:`~hf_vlp.modules.attention.AttentionMemory`: each cross-attention projects them once per call,
one copy per image shared by its beams; beams are scored as the original's transformers 4.15 did
(:class:`OriginalBeamScoringMixin`). VQA lives in ``modeling_blip_vqa.py``.
"""


from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions, BaseModelOutputWithPooling, ModelOutput

from ...generation.utils import add_decoder_cache, fill_special_tokens, resolved_generation_value, uncached_tokens
from ..modeling_utils import VlpPreTrainedModel
from ...objectives.momentum import FeatureQueue
from ...modules.attention import AttentionMemory, grouped_rows
from ...modules.heads import ItmHead, MaskedLMHead
from .modeling_blip_text import MedTextTransformer
from ...modules.vision import VisionTransformer
from ...utils.tower_init import LoadReport, TowerSource, load_text_tower_from_transformers, load_vision_tower_from_transformers
from ...modules.towers import build_vision_tower, text_block_options
from .configuration_blip import VlpBlipConfig, VlpBlipTextConfig, VlpBlipVisionConfig

IGNORE_INDEX = -100


@dataclass
class VlpBlipOutput(ModelOutput):
    """Contrastive outputs (``image_embeds``/``text_embeds``: L2-normalised projected ``[CLS]`` features, the original's
    ``image_feat``/``text_feat``; ``logits_per_image`` = their similarities / ``temp``) and, with ``output_itm=True``,
    the image-grounded encoder states and ITM logits of the pairs (image b, text b)."""

    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPastAndCrossAttentions | None = None
    multimodal_output: BaseModelOutputWithPastAndCrossAttentions | None = None


@dataclass
class VlpBlipForConditionalGenerationOutput(ModelOutput):
    """Teacher-forced decoder outputs: ``logits`` ``[B, L, vocab]`` (position t predicts token t + 1), the label-smoothed
    ``loss`` when ``labels`` are given, the self-attention ``cache`` when one was given or ``use_cache`` set, and
    ``image_hidden_states`` (the ViT tokens the decoder cross-attended to; pass them back to skip the image tower)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    image_hidden_states: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


def with_first_token(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """A copy of ``input_ids`` with column 0 set to ``token_id`` (BLIP's ``[ENC]``/``[DEC]`` substitution)."""
    replaced = input_ids.clone()
    replaced[:, 0] = token_id
    return replaced


def check_no_token_types(token_type_ids: torch.Tensor | None) -> None:
    """BLIP has no token-type embeddings; BERT tokenizers still emit all-zero ``token_type_ids``, which are accepted."""
    if token_type_ids is not None and bool((token_type_ids != 0).any()):
        raise ValueError(
            "BLIP's text transformer has no token-type embeddings, but token_type_ids contain non-zero types; drop "
            "them (VlpBlipProcessor returns none)."
        )


def shifted_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0, per_sequence: bool = False
) -> torch.Tensor:
    """Next-token cross-entropy of ``logits`` ``[B, L, V]`` against ``labels`` ``[B, L]`` aligned with the inputs
    (shifted here: position t predicts label t + 1), ``-100`` ignored, with ``label_smoothing`` (med.py's
    ``BertLMHeadModel``).

    Returns the mean over labelled positions, or with ``per_sequence`` the sum per row ``[B]`` (the original's
    ``reduction='none'``, used for VQA answers). Zero, with a gradient path, when nothing is labelled.
    """
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
    targets = labels[:, 1:].to(logits.device)
    if per_sequence:
        losses = nn.functional.cross_entropy(
            shifted, targets.reshape(-1), ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing, reduction="none"
        )
        return losses.view(targets.shape).sum(dim=1)
    if not bool((targets != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return nn.functional.cross_entropy(
        shifted, targets.reshape(-1), ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing
    )


class VlpBlipPreTrainedModel(VlpPreTrainedModel):
    config: VlpBlipConfig
    base_model_prefix = "blip"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["PreNormBlock", "PostNormBlock"]
    accepts_loss_kwargs = False
    model_card_template = "blip"
    model_card_pipeline_tag = "zero-shot-image-classification"
    # the MED self-attentions a head builds ("encoder": bidirectional, "decoder": causal); see MedTextTransformer
    text_roles: tuple[str, ...] = ("encoder",)

    def _build_towers(self, config: VlpBlipConfig) -> None:
        """``vision_model`` and ``text_model`` (with this head's ``text_roles``), under the names every head shares."""
        self.vision_model = VlpBlipVisionModel(config.vision_config)
        self.text_model = VlpBlipTextModel(config.text_config, roles=self.text_roles)

    def _build_contrastive_heads(self, config: VlpBlipConfig) -> None:
        """``vision_proj``/``text_proj`` (with bias, as the original), ``itm_head`` and the temperature ``temp``."""
        vision, text = config.vision_config, config.text_config
        self.vision_proj = nn.Linear(vision.hidden_size, config.embed_dim)
        self.text_proj = nn.Linear(text.hidden_size, config.embed_dim)
        self.itm_head = ItmHead(text.hidden_size)
        self.temp = nn.Parameter(torch.tensor(config.temp))

    def _build_lm_head(self, config: VlpBlipConfig) -> None:
        """``lm_head``: BERT's prediction head; its decoder weight is tied to the word embeddings."""
        text = config.text_config
        self.lm_head = MaskedLMHead(
            text.hidden_size, text.vocab_size, activation=text.hidden_act, layer_norm_eps=text.layer_norm_eps
        )

    def model_card_fields(self) -> dict[str, Any]:
        config = self.config
        vision = getattr(config, "vision_config", config if isinstance(config, VlpBlipVisionConfig) else None)
        text = getattr(config, "text_config", config if isinstance(config, VlpBlipTextConfig) else None)
        fields: dict[str, Any] = {
            "vision_description": "n/a",
            "text_description": "n/a",
            "embed_dim": getattr(config, "embed_dim", "n/a"),
            "text_roles": " and ".join(self.text_roles),
        }
        if vision is not None:
            fields["vision_description"] = (
                f"ViT ({vision.num_hidden_layers} layers, width {vision.hidden_size}, patch {vision.patch_size}, "
                f"{vision.image_size}px)"
            )
        if text is not None:
            fields["text_description"] = f"{text.num_hidden_layers}-layer, width-{text.hidden_size}"
        return fields

    @classmethod
    def from_pretrained_towers(
        cls, config: VlpBlipConfig, *, vision: TowerSource, text: TowerSource
    ) -> tuple["VlpBlipPreTrainedModel", dict[str, LoadReport]]:
        """Start as the paper does: the image tower from a transformers ViT/DeiT, the MED from a transformers BERT.

        BERT's self-attention initialises every self-attention the head holds (the original loads bert-base into both
        the encoder and the decoder), its FFN and embeddings the shared ones, its MLM head the ``lm_head`` if any; the
        cross-attention stays freshly initialised, BLIP's two added token rows too. Momentum towers, when the head has
        them (``init_momentum``), copy the result. Returns the model and a report per tower.
        """
        model = cls(config)
        reports = {
            "vision": load_vision_tower_from_transformers(model.vision_model.transformer, vision),
            "text": load_text_tower_from_transformers(
                model.text_model.transformer, text, mlm_head=getattr(model, "lm_head", None)
            ),
        }
        model.tie_weights()
        if hasattr(model, "init_momentum"):
            model.init_momentum()
        return model, reports

    def _init_weights(self, module: nn.Module) -> None:
        """BERT/timm initialisation: linear and embedding weights N(0, 0.02), LayerNorms 1/0 (super); ViT class and
        position embeddings trunc-normal(0.02); ``temp`` = ``config.temp``; queues as the original's buffers."""
        super()._init_weights(module)
        if isinstance(module, VisionTransformer):
            init.trunc_normal_(module.class_embedding, std=0.02)
            init.trunc_normal_(module.position_embedding, std=0.02)
        elif isinstance(module, VlpBlipPreTrainedModel) and isinstance(getattr(module, "temp", None), nn.Parameter):
            init.constant_(module.temp, module.config.temp)
        elif isinstance(module, FeatureQueue):
            module.reset_buffers()

    # ------------------------------------------------------------------------------------------- shared passes

    def encode_image(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithPooling:
        """ViT tokens after the final norm (the original's ``image_embeds``, ``[CLS]`` first)."""
        return self.vision_model(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )

    def _special_id(self, name: str) -> int:
        return int(getattr(self.config.text_config, name))


class VlpBlipVisionModel(VlpBlipPreTrainedModel):
    """The image tower: ViT tokens after the final norm (BLIP's ``image_embeds``); ``pooler_output`` = ``[CLS]``."""

    config: VlpBlipVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: VlpBlipVisionConfig) -> None:
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


class VlpBlipTextModel(VlpBlipPreTrainedModel):
    """The MED text transformer (:class:`~hf_vlp.modules.text.MedTextTransformer`) with the self-attentions of
    ``roles`` (default: the encoder's). ``mode`` = ``"text"`` (unimodal), ``"multimodal"`` (cross-attends to
    ``encoder_hidden_states``) or ``"decoder"`` (causal, optional ``cache``). Ids are used as given."""

    config: VlpBlipTextConfig
    main_input_name = "input_ids"
    input_modalities = ("text",)

    def __init__(self, config: VlpBlipTextConfig, roles: tuple[str, ...] | list[str] = ("encoder",)) -> None:
        super().__init__(config)
        self.text_roles = tuple(roles)
        self.transformer = MedTextTransformer(
            text_block_options(config),
            num_layers=config.num_hidden_layers,
            vocab_size=config.vocab_size,
            max_position_embeddings=config.max_position_embeddings,
            pad_token_id=config.pad_token_id,
            kv_size=config.encoder_width,
            roles=self.text_roles,
            config=config,
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        mode: str = "text",
        cache: Cache | None = None,
        use_cache: bool | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPastAndCrossAttentions | tuple:
        check_no_token_types(token_type_ids)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output = self.transformer(
            input_ids,
            attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            mode=mode,
            cache=cache,
            use_cache=bool(use_cache),
            output_hidden_states=bool(output_hidden_states),
            output_attentions=bool(output_attentions),
        )
        return output if return_dict else output.to_tuple()


class VlpBlipModel(VlpBlipPreTrainedModel):
    """BLIP's encoders: ``get_image_features``/``get_text_features`` (projected contrastive features, un-normalised),
    ``encode_multimodal``/``get_itm_logits`` (image-grounded encoder with ``[ENC]`` first, ITM head) and a forward
    returning the similarity logits (and ITM logits of matching pairs with ``output_itm=True``).

    Holds every online encoder weight of a BLIP pre-training or retrieval checkpoint (``vision_model``, ``text_model``
    with the bidirectional self-attention, ``vision_proj``, ``text_proj``, ``itm_head``, ``temp``).
    """

    text_roles = ("encoder",)
    # a pre-training checkpoint also holds the decoder's self-attention, the LM head, momentum towers and queues
    _keys_to_ignore_on_load_unexpected = [r"\.causal_attn\.", r"\.norm_causal\.", r"^lm_head\.", r"^momentum_", r"_queue\."]

    def __init__(self, config: VlpBlipConfig) -> None:
        super().__init__(config)
        self._build_towers(config)
        self._build_contrastive_heads(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """The unimodal text encoder (``mode='text'``; the original's ``text_embeds``); ids as given, ``[CLS]`` first."""
        return self.text_model(
            input_ids,
            attention_mask,
            mode="text",
            token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )

    def encode_multimodal(
        self,
        input_ids: torch.Tensor,
        image_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        replace_first_token: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """The image-grounded text encoder (``mode='multimodal'``) over ``image_hidden_states`` (``encode_image``
        tokens), text row b with image row b. Position 0 becomes ``[ENC]`` (``config.text_config.enc_token_id``) as in
        the original pre-training, retrieval, VQA and NLVR code; ``replace_first_token=False`` keeps the ids as given
        (``models/blip_itm.py`` keeps ``[CLS]``)."""
        if input_ids.shape[0] != image_hidden_states.shape[0]:
            raise ValueError(
                f"the image-grounded encoder pairs text row b with image row b: got {input_ids.shape[0]} texts and "
                f"{image_hidden_states.shape[0]} images (repeat or index them into pairs)"
            )
        if replace_first_token:
            input_ids = with_first_token(input_ids, self._special_id("enc_token_id"))
        return self.text_model(
            input_ids,
            attention_mask,
            encoder_hidden_states=image_hidden_states,
            encoder_attention_mask=image_attention_mask,
            mode="multimodal",
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )

    def get_image_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Projected image features ``[B, embed_dim]`` (``vision_proj`` of the ``[CLS]`` token), not normalised - the
        project-wide convention (CLIP, ALBEF); L2-normalised they are the original's ``image_feat``."""
        states = self.encode_image(pixel_values, interpolate_pos_encoding).last_hidden_state
        return self.vision_proj(states[:, 0])

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Projected text features ``[B, embed_dim]`` (``text_proj`` of the unimodal ``[CLS]``), not normalised;
        L2-normalised they are the original's ``text_feat``."""
        states = self.encode_text(input_ids, attention_mask, token_type_ids).last_hidden_state
        return self.text_proj(states[:, 0])

    def get_itm_logits(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_hidden_states: torch.Tensor | None = None,
        replace_first_token: bool = True,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """Image-text matching logits ``[B, 2]`` (column 1 = match) of pairs (image b, text b), from ``pixel_values``
        or precomputed ``image_hidden_states``; ``[ENC]`` first unless ``replace_first_token=False``."""
        if (pixel_values is None) == (image_hidden_states is None):
            raise ValueError("pass exactly one of pixel_values or image_hidden_states (the ViT tokens)")
        if image_hidden_states is None:
            image_hidden_states = self.encode_image(pixel_values, interpolate_pos_encoding).last_hidden_state
        states = self.encode_multimodal(
            input_ids, image_hidden_states, attention_mask, replace_first_token=replace_first_token
        ).last_hidden_state
        return self.itm_head(states[:, 0])

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
    ) -> VlpBlipOutput | tuple:
        """Similarity logits of every image against every text (normalised features / ``temp``); with
        ``output_itm=True`` also the image-grounded encoder states and ITM logits of pair b = (image b, text b) (same
        batch size needed; ``[ENC]`` put first). ``token_type_ids`` (all zero from BERT tokenizers) are accepted."""
        if input_ids is None or pixel_values is None:
            raise ValueError("VlpBlipModel.forward needs both input_ids and pixel_values (use get_*_features for one)")
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
            multimodal_outputs = self.encode_multimodal(
                input_ids,
                vision_outputs.last_hidden_state,
                attention_mask,
                output_hidden_states=output_hidden_states,
                output_attentions=output_attentions,
            )
            itm_logits = self.itm_head(multimodal_outputs.last_hidden_state[:, 0])
        output = VlpBlipOutput(
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


# BLIP's caption decoding settings (``models/blip.py:BLIP_Decoder.generate``); lengths count ``[DEC]`` and the prompt's
# tokens, as in the original. "coco": configs/caption_coco.yaml (the default generation config); "nocaps":
# configs/nocaps.yaml; "sampling": generate(sample=True) - nucleus sampling, as CapFilt's captioner (top_k stays
# transformers' default 50, as in the original's transformers 4.15).
CAPTION_DECODING: dict[str, dict[str, Any]] = {
    "coco": dict(num_beams=3, max_length=20, min_length=5, repetition_penalty=1.0),
    "nocaps": dict(num_beams=3, max_length=20, min_length=5, repetition_penalty=1.1),
    "sampling": dict(do_sample=True, num_beams=1, top_p=0.9, repetition_penalty=1.1, max_length=30, min_length=10),
}


BEAM_SCORING = ("original", "transformers")
# the transformers 5 beam-search methods OriginalBeamScoringMixin wraps
_BEAM_SEARCH_HOOKS = ("_update_finished_beams", "_check_early_stop_heuristic")


def pad_after_end(sequences: torch.Tensor, start: int, eos_token_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """``sequences`` with every position after a row's first end token (at or after column ``start``) set to
    ``pad_token_id``, as the original's outputs are padded (transformers 5's beam search fills them with the end token
    when the pad id is 0)."""
    generated = sequences[:, start:]
    ended = torch.isin(generated, eos_token_ids.to(sequences.device)).long().cumsum(dim=1)
    after_end = (ended - torch.isin(generated, eos_token_ids.to(sequences.device)).long()) > 0
    padded = sequences.clone()
    padded[:, start:] = generated.masked_fill(after_end, pad_token_id)
    return padded


class OriginalBeamScoringMixin:
    """Beam search scored as in transformers 4.x, which the original BLIP code ran on (``beam_scoring="original"``).

    transformers 5 divides a finished hypothesis' summed log-probability by ``generated_length ** length_penalty``;
    transformers 4.15 divided by its full length, prompt included and the end token excluded (a hypothesis stopped by
    ``max_length`` counts all its tokens), and stopped early on the same lengths. The two pick different hypotheses when
    sequences of different lengths compete (the original's NoCaps captions with repetition penalty 1.1 differ otherwise).
    The hooks rescale the scores transformers' beam search finalises and the length its stopping heuristic assumes;
    ``beam_scoring="transformers"`` leaves transformers' scoring untouched (e.g. to compare with transformers' BLIP).
    Remaining difference: transformers 4.15's stopping heuristic compared the best candidate including finished ones.
    """

    _beam_scoring_end_ids: torch.Tensor | None = None

    def _generate_with_beam_scoring(self, beam_scoring: str, generate_kwargs: dict[str, Any]) -> Any:
        """``GenerationMixin.generate(**generate_kwargs)`` under ``beam_scoring``; rows that ended are padded with the
        pad token after their end token (both as ``generate`` resolves them)."""
        if beam_scoring not in BEAM_SCORING:
            raise ValueError(f"beam_scoring must be one of {BEAM_SCORING}, got {beam_scoring!r}")
        settings = (generate_kwargs, generate_kwargs.get("generation_config"), self.generation_config)
        eos_token_id = resolved_generation_value("eos_token_id", *settings)
        pad_token_id = resolved_generation_value("pad_token_id", *settings)
        eos_ids = None
        if eos_token_id is not None:
            eos_ids = torch.as_tensor(eos_token_id, dtype=torch.long).reshape(-1)
        missing = [hook for hook in _BEAM_SEARCH_HOOKS if not hasattr(GenerationMixin, hook)]
        if beam_scoring == "original" and missing:
            raise RuntimeError(
                f"this transformers version's beam search has no {missing}, which beam_scoring='original' hooks into; "
                "pass beam_scoring='transformers'"
            )
        self._beam_scoring_end_ids = eos_ids if beam_scoring == "original" else None
        try:
            output = super().generate(**generate_kwargs)
        finally:
            self._beam_scoring_end_ids = None
        if eos_ids is None or pad_token_id is None:
            return output
        start = generate_kwargs["input_ids"].shape[1]
        if isinstance(output, torch.Tensor):
            return pad_after_end(output, start, eos_ids, pad_token_id)
        output.sequences = pad_after_end(output.sequences, start, eos_ids, pad_token_id)
        return output

    def _update_finished_beams(self, **kwargs: Any) -> Any:
        end_ids = self._beam_scoring_end_ids
        if end_ids is not None:
            cur_len, prompt_len, penalty = kwargs["cur_len"], kwargs["decoder_prompt_len"], kwargs["length_penalty"]
            new_tokens = kwargs["topk_running_sequences"][:, :, cur_len]
            full_length = cur_len + 1 - torch.isin(new_tokens, end_ids.to(new_tokens.device)).long()
            rescale = ((cur_len + 1 - prompt_len) / full_length.to(kwargs["topk_log_probs"].dtype)) ** penalty
            kwargs["topk_log_probs"] = kwargs["topk_log_probs"] * rescale
        return super()._update_finished_beams(**kwargs)

    def _check_early_stop_heuristic(self, **kwargs: Any) -> Any:
        if self._beam_scoring_end_ids is not None:
            kwargs["decoder_prompt_len"] = 1  # transformers 4.15: best running score / (length before this step)
        return super()._check_early_stop_heuristic(**kwargs)


def check_memory_rows(text_rows: int, states: torch.Tensor | AttentionMemory, what: str, hint: str) -> None:
    """Text row b pairs with memory row b; an ``AttentionMemory`` row serves a whole group of consecutive text rows."""
    if isinstance(states, AttentionMemory):
        grouped_rows(text_rows, len(states))
    elif text_rows != states.shape[0]:
        raise ValueError(f"{what}: got {text_rows} texts and {states.shape[0]} memory rows ({hint})")


class VlpBlipForConditionalGeneration(OriginalBeamScoringMixin, VlpBlipPreTrainedModel, GenerationMixin):
    """Image captioning (``models/blip.py:BLIP_Decoder``): the ViT and the MED's image-grounded causal decoder with
    BERT's LM head tied to the word embeddings.

    ``forward`` is the teacher-forced pass (the LM loss with label smoothing): it puts ``[DEC]``
    (``config.text_config.bos_token_id``) at position 0 when no cached positions precede the input, reuses
    ``image_hidden_states`` instead of running the ViT when they are given, and threads a self-attention ``cache`` for
    incremental decoding (``use_cache=True`` creates a ``DynamicCache``).

    :meth:`generate` (transformers' ``GenerationMixin``: beam search, greedy, nucleus sampling) decodes as the
    original: the ViT runs once, the prompt's ids start with ``[DEC]`` and lose their trailing ``[SEP]``, decoding
    stops at ``[SEP]`` and pads with ``[PAD]``; the self-attention keys/values are cached and every cross-attention
    projects the image tokens once per call, one copy per image shared by its beams. The default generation config is
    the COCO evaluation's (beam 3, max_length 20, min_length 5, repetition penalty 1.0; see :data:`CAPTION_DECODING`
    for NoCaps' and for sampling). :meth:`caption` returns the strings with the prompt cut off.
    """

    text_roles = ("decoder",)
    model_card_pipeline_tag = "image-text-to-text"
    _tied_weights_keys = {"lm_head.decoder.weight": "text_model.transformer.embeddings.word_embeddings.weight"}
    # a pre-training or retrieval checkpoint also holds the encoder's self-attention, contrastive heads and momentum
    _keys_to_ignore_on_load_unexpected = [
        r"^text_model\..*\.(attn|norm1)\.", r"^(vision|text)_proj\.", r"^itm_head\.", r"^temp$", r"^momentum_",
        r"_queue\.",
    ]

    def __init__(self, config: VlpBlipConfig) -> None:
        super().__init__(config)
        self._build_towers(config)
        self._build_lm_head(config)
        self.post_init()
        self.generation_config = self.default_generation_config()

    def default_generation_config(self) -> GenerationConfig:
        """The original's COCO caption decoding (:data:`CAPTION_DECODING` ``"coco"``): start ``[DEC]``
        (``text_config.bos_token_id``), stop at ``[SEP]``, pad with ``[PAD]``."""
        text = self.config.text_config
        return GenerationConfig(
            bos_token_id=text.bos_token_id,
            eos_token_id=text.sep_token_id,
            pad_token_id=text.pad_token_id,
            **CAPTION_DECODING["coco"],
        )

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head.decoder = value

    def decode(
        self,
        input_ids: torch.Tensor,
        image_hidden_states: torch.Tensor | AttentionMemory,
        attention_mask: torch.Tensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
        replace_first_token: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """The MED in ``"decoder"`` mode over ``image_hidden_states`` (row b of the text with row b of the images; an
        ``AttentionMemory`` of ``M`` images serves ``r * M`` texts, ``r`` consecutive texts per image).

        With an empty or no ``cache``, position 0 becomes ``[DEC]`` unless ``replace_first_token=False``; with cached
        positions ``input_ids`` are the new tokens only and ``attention_mask`` covers cached + new positions.
        """
        check_memory_rows(
            input_ids.shape[0], image_hidden_states, "the decoder pairs text row b with image row b",
            "repeat the image states per caption / beam, or wrap them in an AttentionMemory",
        )
        first_call = cache is None or cache.get_seq_length() == 0
        if replace_first_token and first_call:
            input_ids = with_first_token(input_ids, self._special_id("bos_token_id"))
        return self.text_model(
            input_ids,
            attention_mask,
            encoder_hidden_states=image_hidden_states,
            encoder_attention_mask=image_attention_mask,
            mode="decoder",
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )

    def caption_labels(self, labels: torch.Tensor, prompt_length: int | None = None) -> torch.Tensor:
        """``labels`` with ``[PAD]`` positions and, with ``prompt_length``, the first ``prompt_length`` positions
        (``[DEC]`` + prompt, e.g. 4 for ``"a picture of "``) set to -100, as ``BLIP_Decoder.forward`` builds them."""
        labels = labels.masked_fill(labels == self._special_id("pad_token_id"), IGNORE_INDEX)
        if prompt_length:
            if prompt_length < 0:
                raise ValueError(f"prompt_length must be >= 0, got {prompt_length}")
            labels = labels.clone()
            labels[:, :prompt_length] = IGNORE_INDEX
        return labels

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_hidden_states: torch.Tensor | AttentionMemory | None = None,
        image_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        prompt_length: int | None = None,
        token_type_ids: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> VlpBlipForConditionalGenerationOutput | tuple:
        """Teacher-forced next-token logits of ``input_ids`` (``[CLS] caption [SEP]`` from the processor; ``[DEC]`` is
        put first here) grounded on ``pixel_values`` or on precomputed ``image_hidden_states`` (the ViT tokens, or an
        ``AttentionMemory`` of them).

        ``labels`` ``[B, L]`` are aligned with ``input_ids`` (usually a copy; the shift happens here): ``-100`` and
        ``[PAD]`` are ignored, and so are the first ``prompt_length`` positions when given; the loss is the
        label-smoothed (``config.label_smoothing``) cross-entropy averaged over the remaining next-token positions.
        ``token_type_ids`` (all zero from BERT tokenizers) are accepted.
        """
        if input_ids is None:
            raise ValueError("pass input_ids (the processor's [CLS] caption [SEP] ids); labels alone are not enough")
        if (pixel_values is None) == (image_hidden_states is None):
            raise ValueError("pass exactly one of pixel_values or image_hidden_states (the ViT tokens)")
        check_no_token_types(token_type_ids)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if image_hidden_states is None:
            image_hidden_states = self.encode_image(pixel_values, interpolate_pos_encoding).last_hidden_state
        decoded = self.decode(
            input_ids,
            image_hidden_states,
            attention_mask,
            image_attention_mask,
            cache=cache,
            use_cache=bool(use_cache),
            output_hidden_states=bool(output_hidden_states or self.config.output_hidden_states),
            output_attentions=bool(output_attentions or self.config.output_attentions),
        )
        logits = self.lm_head(decoded.last_hidden_state)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"labels must align with input_ids (shape {tuple(input_ids.shape)}), got {tuple(labels.shape)}; "
                    "the model shifts them itself"
                )
            loss = shifted_lm_loss(logits, self.caption_labels(labels, prompt_length), self.config.label_smoothing)
        if isinstance(image_hidden_states, AttentionMemory):
            image_hidden_states = image_hidden_states.states
        output = VlpBlipForConditionalGenerationOutput(
            loss=loss,
            logits=logits,
            cache=decoded.cache,
            image_hidden_states=image_hidden_states,
            hidden_states=decoded.hidden_states,
            attentions=decoded.attentions,
            cross_attentions=decoded.cross_attentions,
        )
        return output if return_dict else output.to_tuple()

    # ----------------------------------------------------------------------------------------------- generation

    def prompt_input_ids(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch_size: int
    ) -> torch.Tensor:
        """The decoder's start ids ``[B, P]`` as the original builds them from a prompt: ``[DEC]`` replaces ``[CLS]``
        and the trailing ``[SEP]`` is dropped (``[CLS] a picture of [SEP]`` -> ``[DEC] a picture of``); no prompt:
        ``[DEC]`` alone. One prompt row serves every image; rows must be unpadded (the same prompt length)."""
        bos = self._special_id("bos_token_id")
        if input_ids is None:
            return torch.full((batch_size, 1), bos, dtype=torch.long, device=self.device)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"prompt input_ids must be [batch, length] with length >= 1, got {tuple(input_ids.shape)}")
        if input_ids.shape[0] == 1 and batch_size > 1:
            input_ids = input_ids.expand(batch_size, -1)
            attention_mask = attention_mask.expand(batch_size, -1) if attention_mask is not None else None
        if input_ids.shape[0] != batch_size:
            raise ValueError(
                f"got {input_ids.shape[0]} prompts for {batch_size} images: pass one prompt for all, or one per image"
            )
        padded = (input_ids[:, 1:] == self._special_id("pad_token_id")).any()
        if attention_mask is not None:
            padded = padded | (attention_mask == 0).any()
        if bool(padded):
            raise ValueError(
                "the prompts are padded: the decoder continues every row after its last prompt token, so prompts of "
                "different lengths cannot share a batch; caption each prompt length separately (the original uses one "
                "prompt, 'a picture of ', for every image)"
            )
        input_ids = with_first_token(input_ids, bos)
        if input_ids.shape[1] > 1 and bool((input_ids[:, -1] == self._special_id("sep_token_id")).all()):
            input_ids = input_ids[:, :-1]
        return input_ids.to(self.device)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        image_hidden_states: torch.Tensor | AttentionMemory | None = None,
        cache: Cache | None = None,
        next_sequence_length: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One decoding step's ``forward`` inputs: the tokens the cache has not seen and the image states (an
        ``AttentionMemory`` shared by the beams, or with ``use_cache=False`` the states ``generate`` repeated per beam).
        ``generate``'s attention mask is dropped: the sequences hold no padding (prompts are unpadded)."""
        if image_hidden_states is None:
            raise ValueError(
                "VlpBlipForConditionalGeneration decodes over image states: call generate(pixel_values=...) (or "
                "generate(image_hidden_states=...)), which runs the image tower once"
            )
        return {
            "input_ids": uncached_tokens(input_ids, next_sequence_length),
            "image_hidden_states": image_hidden_states,
            "cache": cache,
            "use_cache": cache is not None,
        }

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_hidden_states: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        interpolate_pos_encoding: bool = False,
        beam_scoring: str = "original",
        **kwargs: Any,
    ) -> Any:
        """Caption ``pixel_values`` (or precomputed ``image_hidden_states``), optionally continuing a prompt
        ``input_ids`` (the processor's ``[CLS] a picture of [SEP]``, one row for all images or one per image; see
        :meth:`prompt_input_ids`). The image tower runs once; transformers' ``generate`` then decodes with the
        self-attention KV cache, each cross-attention projecting the image tokens once (unless ``use_cache=False``,
        which re-runs every step in full).

        ``kwargs`` are ``generate``'s (``num_beams``, ``max_length``, ``do_sample``, ``top_p``, ...); defaults come
        from ``self.generation_config`` (:meth:`default_generation_config`; :data:`CAPTION_DECODING` holds the
        original's other settings). ``beam_scoring="original"`` scores beam hypotheses as the original's transformers
        4.15 did, ``"transformers"`` as transformers 5 does (see :class:`OriginalBeamScoringMixin`). Returns what
        ``generate`` returns: ``[B * num_return_sequences, T]`` ids that start with ``[DEC]`` and the prompt, padded
        with ``[PAD]`` after ``[SEP]``, as the original's.
        """
        if (pixel_values is None) == (image_hidden_states is None):
            raise ValueError("generate needs exactly one of pixel_values or image_hidden_states (the ViT tokens)")
        cache = kwargs.get("cache")
        if cache is not None and cache.get_seq_length() > 0:
            raise ValueError("generate starts every caption from [DEC] and the prompt: pass an empty cache (or none)")
        check_no_token_types(kwargs.pop("token_type_ids", None))
        defaults = self.default_generation_config()
        generation_config = fill_special_tokens(
            kwargs,
            generation_config,
            self.generation_config,
            {field: getattr(defaults, field) for field in ("bos_token_id", "eos_token_id", "pad_token_id")},
        )
        if image_hidden_states is None:
            image_hidden_states = self.encode_image(pixel_values, interpolate_pos_encoding).last_hidden_state
        start_ids = self.prompt_input_ids(input_ids, attention_mask, image_hidden_states.shape[0])
        settings = (kwargs, generation_config, self.generation_config)
        use_cache = resolved_generation_value("use_cache", *settings, default=True)
        memory = AttentionMemory(image_hidden_states) if use_cache else image_hidden_states
        add_decoder_cache(kwargs, generation_config, self.generation_config, self.config.text_config)
        if generation_config is not None:
            kwargs["generation_config"] = generation_config
        return self._generate_with_beam_scoring(
            beam_scoring, {**kwargs, "input_ids": start_ids, "image_hidden_states": memory}
        )

    @torch.no_grad()
    def caption(
        self, images: Any, processor: Any, prompt: str | None = None, **generate_kwargs: Any
    ) -> list[str]:
        """Caption strings of ``images`` (anything ``processor`` takes, or ``pixel_values`` ``[B, C, H, W]``), one per
        image and returned sequence, as the original's ``generate``: decoded without special tokens and with the
        prompt's characters cut off (``caption[len(prompt):]``). ``prompt`` defaults to ``processor.prompt``
        (``"a picture of "``); ``""`` starts from ``[DEC]`` alone. ``generate_kwargs`` go to :meth:`generate`."""
        prompt = processor.prompt if prompt is None else prompt
        if isinstance(images, torch.Tensor):
            pixel_values = images
        else:
            pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        input_ids = None
        if prompt:
            input_ids = processor(text=[prompt], return_tensors="pt")["input_ids"].to(self.device)
        output = self.generate(pixel_values, input_ids, **generate_kwargs)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        tokenizer = getattr(processor, "tokenizer", processor)
        texts = tokenizer.batch_decode(sequences, skip_special_tokens=True)
        return [text[len(prompt) :] if prompt else text for text in texts]


__all__ = [
    "BEAM_SCORING",
    "CAPTION_DECODING",
    "OriginalBeamScoringMixin",
    "VlpBlipForConditionalGeneration",
    "VlpBlipForConditionalGenerationOutput",
    "VlpBlipModel",
    "VlpBlipOutput",
    "VlpBlipPreTrainedModel",
    "VlpBlipTextModel",
    "VlpBlipVisionModel",
    "shifted_lm_loss",
    "with_first_token",
]
