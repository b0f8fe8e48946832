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
(:class:`~hf_vlp.generation.beam_scoring.OriginalBeamScoringMixin`). VQA lives in ``modeling_blip_vqa.py``.
"""


from dataclasses import dataclass
from typing import Any, Unpack

import torch
from transformers import GenerationConfig, GenerationMixin
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions, ModelOutput

from ...generation.beam_scoring import BEAM_SCORING, OriginalBeamScoringMixin
from ...generation.utils import decoding_step_inputs, start_generation
from ...modules.attention import AttentionMemory, grouped_rows
from ...modules.vision import check_finite_pixels
from ...modules.towers import text_block_options
from ...objectives.lm import IGNORE_INDEX, shifted_lm_loss
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
from .modeling_blip_text import MedTextTransformer
from .configuration_blip import VlpBlipConfig, VlpBlipTextConfig, VlpBlipVisionConfig



@dataclass
class VlpBlipOutput(DualEncoderOutput):
    """Contrastive outputs (``image_embeds``/``text_embeds``: L2-normalised projected ``[CLS]`` features, the original's
    ``image_feat``/``text_feat``; ``logits_per_image`` = their similarities / ``temp``) and, with ``output_itm=True``,
    the image-grounded encoder states and ITM logits of the pairs (image b, text b)."""


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


class VlpBlipPreTrainedModel(VitBertPreTrainedModel):
    config: VlpBlipConfig
    base_model_prefix = "blip"
    model_card_template = "blip"
    vision_config_class = VlpBlipVisionConfig
    text_config_class = VlpBlipTextConfig
    # the MED self-attentions a head builds ("encoder": bidirectional, "decoder": causal); see MedTextTransformer
    text_roles: tuple[str, ...] = ("encoder",)

    def extra_card_fields(self, text_config: VlpBlipTextConfig | None) -> dict[str, Any]:
        return {"text_roles": " and ".join(self.text_roles)}

    def _special_id(self, name: str) -> int:
        return int(getattr(self.config.text_config, name))


class VlpBlipVisionModel(VisionTowerMixin, VlpBlipPreTrainedModel):
    """The image tower: ViT tokens after the final norm (BLIP's ``image_embeds``); ``pooler_output`` = ``[CLS]``."""

    config: VlpBlipVisionConfig


class VlpBlipTextModel(TextTowerMixin, VlpBlipPreTrainedModel):
    """The MED text transformer (:class:`~hf_vlp.modules.text.MedTextTransformer`) with the self-attentions of
    ``roles`` (default: the encoder's); ``forward`` takes its arguments, ``mode`` defaulting to ``"text"``:
    ``"text"`` (unimodal), ``"multimodal"`` (cross-attends to ``encoder_hidden_states``) or ``"decoder"`` (causal,
    optional ``cache``). Ids are used as given; all-zero ``token_type_ids`` are accepted and dropped."""

    config: VlpBlipTextConfig

    def __init__(self, config: VlpBlipTextConfig, roles: tuple[str, ...] | list[str] = ("encoder",)) -> None:
        super().__init__(config, roles=roles)

    def build_transformer(self, config: VlpBlipTextConfig, roles: tuple[str, ...] | list[str]) -> MedTextTransformer:
        self.text_roles = tuple(roles)
        return MedTextTransformer(
            text_block_options(config),
            num_layers=config.num_hidden_layers,
            vocab_size=config.vocab_size,
            max_position_embeddings=config.max_position_embeddings,
            pad_token_id=config.pad_token_id,
            kv_size=config.encoder_width,
            roles=self.text_roles,
            config=config,
        )

    def tower_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        check_no_token_types(kwargs.pop("token_type_ids", None))
        return {"mode": "text", **kwargs}


class BlipTowersMixin(DualTowerHeadMixin):
    """The towers every BLIP head holds under the shared flat names: ``vision_model`` and ``text_model`` (with the
    head's ``text_roles``), plus ``build_contrastive_heads`` (``vision_proj``, ``text_proj``, ``itm_head``, ``temp``)
    and :meth:`build_lm_head`."""

    def build_towers(self, config: VlpBlipConfig) -> None:
        self.vision_model = VlpBlipVisionModel(config.vision_config)
        self.text_model = VlpBlipTextModel(config.text_config, roles=self.text_roles)

    def build_lm_head(self, config: VlpBlipConfig) -> None:
        """``lm_head``: BERT's prediction head; its decoder weight is tied to the word embeddings."""
        self.lm_head = bert_prediction_head(config.text_config)


class VlpBlipModel(ContrastiveEncodersMixin, BlipTowersMixin, VlpBlipPreTrainedModel):
    """BLIP's encoders: ``get_image_features``/``get_text_features`` (projected contrastive features, un-normalised),
    ``encode_multimodal``/``get_itm_logits`` (image-grounded encoder with ``[ENC]`` first, ITM head) and a forward
    returning the similarity logits (and ITM logits of matching pairs with ``output_itm=True``).

    Holds every online encoder weight of a BLIP pre-training or retrieval checkpoint (``vision_model``, ``text_model``
    with the bidirectional self-attention, ``vision_proj``, ``text_proj``, ``itm_head``, ``temp``).
    """

    text_roles = ("encoder",)
    contrastive_output_class = VlpBlipOutput
    multimodal_reads_text_states = False
    # a pre-training checkpoint also holds the decoder's self-attention, the LM head, momentum towers and queues
    _keys_to_ignore_on_load_unexpected = [r"\.causal_attn\.", r"\.norm_causal\.", r"^lm_head\.", r"^momentum_", r"_queue\."]

    def __init__(self, config: VlpBlipConfig) -> None:
        super().__init__(config)
        self.build_towers(config)
        self.build_contrastive_heads(config)
        self.post_init()

    def encode_multimodal(
        self,
        input_ids: torch.Tensor,
        image_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        replace_first_token: bool = True,
        **flags: bool,
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
            return_dict=True,
            **flags,
        )

    def multimodal_states(
        self,
        input_ids: torch.Tensor,
        text_states: torch.Tensor | None,
        image_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **flags: bool,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """The image-grounded encoder (``[ENC]`` first) over pairs (image b, text b); the ids are re-read (the
        unimodal ``text_states`` are not needed)."""
        return self.encode_multimodal(input_ids, image_states, attention_mask, **flags)

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
        image_hidden_states = self.image_tokens(pixel_values, image_hidden_states, interpolate_pos_encoding)
        states = self.encode_multimodal(
            input_ids, image_hidden_states, attention_mask, replace_first_token=replace_first_token
        ).last_hidden_state
        return self.itm_head(states[:, 0])


# BLIP's caption decoding settings (``models/blip.py:BLIP_Decoder.generate``); lengths count ``[DEC]`` and the prompt's
# tokens, as in the original. "coco": configs/caption_coco.yaml (the default generation config); "nocaps":
# configs/nocaps.yaml; "sampling": generate(sample=True) - nucleus sampling, as CapFilt's captioner (top_k stays
# transformers' default 50, as in the original's transformers 4.15).
CAPTION_DECODING: dict[str, dict[str, Any]] = {
    "coco": dict(num_beams=3, max_length=20, min_length=5, repetition_penalty=1.0),
    "nocaps": dict(num_beams=3, max_length=20, min_length=5, repetition_penalty=1.1),
    "sampling": dict(do_sample=True, num_beams=1, top_p=0.9, repetition_penalty=1.1, max_length=30, min_length=10),
}


def check_memory_rows(text_rows: int, states: torch.Tensor | AttentionMemory, what: str, hint: str) -> None:
    """Text row b pairs with memory row b; an ``AttentionMemory`` row serves a whole group of consecutive text rows."""
    if isinstance(states, AttentionMemory):
        grouped_rows(text_rows, len(states))
    elif text_rows != states.shape[0]:
        raise ValueError(f"{what}: got {text_rows} texts and {states.shape[0]} memory rows ({hint})")


class VlpBlipForConditionalGeneration(
    OriginalBeamScoringMixin, MaskedLMOutputEmbeddingsMixin, BlipTowersMixin, VlpBlipPreTrainedModel, GenerationMixin
):
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
    output_head_name = "lm_head"
    model_card_pipeline_tag = "image-text-to-text"
    _tied_weights_keys = {"lm_head.decoder.weight": "text_model.transformer.embeddings.word_embeddings.weight"}
    # a pre-training or retrieval checkpoint also holds the encoder's self-attention, contrastive heads and momentum
    _keys_to_ignore_on_load_unexpected = [
        r"^text_model\..*\.(attn|norm1)\.", r"^(vision|text)_proj\.", r"^itm_head\.", r"^temp$", r"^momentum_",
        r"_queue\.",
    ]

    def __init__(self, config: VlpBlipConfig) -> None:
        super().__init__(config)
        self.build_towers(config)
        self.build_lm_head(config)
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

    def decode(
        self,
        input_ids: torch.Tensor,
        image_hidden_states: torch.Tensor | AttentionMemory,
        attention_mask: torch.Tensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
        replace_first_token: bool = True,
        **flags: bool,
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
            return_dict=True,
            **flags,
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
        **kwargs: Unpack[OutputKwargs],
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
        check_no_token_types(token_type_ids)
        image_hidden_states = self.image_tokens(pixel_values, image_hidden_states, interpolate_pos_encoding)
        decoded = self.decode(
            input_ids,
            image_hidden_states,
            attention_mask,
            image_attention_mask,
            cache=cache,
            use_cache=bool(use_cache),
            **kwargs,
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
        return VlpBlipForConditionalGenerationOutput(
            loss=loss,
            logits=logits,
            cache=decoded.cache,
            image_hidden_states=image_hidden_states,
            hidden_states=decoded.hidden_states,
            attentions=decoded.attentions,
            cross_attentions=decoded.cross_attentions,
        )

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
        """One decoding step's ``forward`` inputs (:func:`~hf_vlp.generation.utils.decoding_step_inputs`): the tokens
        the cache has not seen and the image states."""
        return decoding_step_inputs(self, input_ids, "image_hidden_states", image_hidden_states, cache, next_sequence_length)

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
        4.15 did, ``"transformers"`` as transformers 5 does (see :class:`~hf_vlp.generation.beam_scoring.OriginalBeamScoringMixin`). Returns what
        ``generate`` returns: ``[B * num_return_sequences, T]`` ids that start with ``[DEC]`` and the prompt, padded
        with ``[PAD]`` after ``[SEP]``, as the original's.
        """
        if (pixel_values is None) == (image_hidden_states is None):
            raise ValueError("generate needs exactly one of pixel_values or image_hidden_states (the ViT tokens)")
        generation_config = start_generation(self, kwargs, generation_config, "caption from [DEC] and the prompt")
        check_no_token_types(kwargs.pop("token_type_ids", None))
        if image_hidden_states is None:
            check_finite_pixels(pixel_values)
            image_hidden_states = self.encode_image(pixel_values, interpolate_pos_encoding).last_hidden_state
        start_ids = self.prompt_input_ids(input_ids, attention_mask, image_hidden_states.shape[0])
        return self.generate_over_states(
            beam_scoring, kwargs, generation_config, self.config.text_config, start_ids, "image_hidden_states",
            image_hidden_states,
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
    "BlipTowersMixin",
    "CAPTION_DECODING",
    "VlpBlipForConditionalGeneration",
    "VlpBlipForConditionalGenerationOutput",
    "VlpBlipModel",
    "VlpBlipOutput",
    "VlpBlipPreTrainedModel",
    "VlpBlipTextModel",
    "VlpBlipVisionModel",
    "with_first_token",
]
