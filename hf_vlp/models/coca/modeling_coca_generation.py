"""CoCa's captioning head: the joint contrastive + captioning objective and caption generation.

    text token states (unimodal decoder) + image tokens -> multimodal decoder -> lm_head -> next-token logits

Generation runs transformers' ``GenerationMixin``: the image tower once per image, its tokens wrapped in an
:class:`~hf_vlp.modules.attention.AttentionMemory` (each cross-attention projects them once, one copy per image shared by
its beams), and one key/value cache holding the unimodal decoder's layers then the multimodal decoder's self-attention
layers, so every step runs the new token only.
"""

import copy
from dataclasses import dataclass
from typing import Any, Unpack

import torch
from torch import nn
from transformers import DynamicCache, GenerationConfig, GenerationMixin, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput

from ...generation.beam_scoring import OriginalBeamScoringMixin
from ...generation.utils import decoding_step_inputs, resolved_generation_value, start_generation
from ...modules.attention import AttentionMemory, grouped_rows
from ...modules.vision import check_finite_pixels
from ...objectives.lm import IGNORE_INDEX, shifted_lm_loss
from ...objectives.losses import contrastive_loss
from ..modeling_utils import OutputKwargs
from .configuration_coca import VlpCocaConfig
from .modeling_coca import VlpCocaModel, VlpCocaMultimodalDecoder, VlpCocaVisionModelOutput

# open_clip 3.3.0's CoCa.generate defaults. Its beam search runs 6 beams in 3 groups with no diversity penalty, so the
# three groups stay identical and the search equals 2-beam search (scored as transformers 4.x scored it, which
# ``beam_scoring="original"`` reproduces); transformers 5 has no group beam search. The step that reaches
# ``max_length`` emits the end-of-text token (open_clip's sampling path), which ``forced_eos_token_id`` does.
COCA_DECODING: dict[str, Any] = {
    "num_beams": 2,
    "max_length": 30,
    "min_length": 5,
    "repetition_penalty": 1.0,
    "length_penalty": 1.0,
}


@dataclass
class VlpCocaForConditionalGenerationOutput(ModelOutput):
    """``loss`` = ``contrastive_loss + caption_loss``, each already weighted by the config (as open_clip's
    ``CoCaLoss`` returns them); ``logits`` ``[B, L, vocab]`` are the next-token logits of every input position.
    The contrastive fields are ``None`` when decoding over given ``image_tokens`` (generation steps)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    contrastive_loss: torch.Tensor | None = None
    caption_loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_tokens: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: VlpCocaVisionModelOutput | None = None


class EndsAtToken(StoppingCriteria):
    """Ends each sequence whose last token is ``token_id`` (open_clip's sampling loop ends a row at a pad token)."""

    def __init__(self, token_id: int) -> None:
        self.token_id = token_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return input_ids[:, -1] == self.token_id


class VlpCocaForConditionalGeneration(OriginalBeamScoringMixin, VlpCocaModel, GenerationMixin):
    """CoCa with its multimodal decoder: the training objective and image captioning.

    ``forward(pixel_values, input_ids, labels=...)`` is open_clip's ``CoCa.forward`` + ``CoCaLoss``: the contrastive
    logits, the teacher-forced next-token logits, and with ``labels`` (aligned with ``input_ids``; shifted here; pads and
    ``-100`` ignored) ``contrastive_loss_weight`` x the contrastive loss (gathered across processes) +
    ``caption_loss_weight`` x the caption cross-entropy. ``forward(input_ids, image_tokens=..., cache=...)`` decodes
    over given image tokens only (a generation step).

    :meth:`generate` decodes with transformers' ``GenerationMixin`` (greedy, beam search, top-k / top-p sampling)
    from ``self.generation_config``: open_clip's defaults (:data:`COCA_DECODING`), start-of-text first, end-of-text
    last (forced at ``max_length``), pads after. :meth:`caption` returns strings.
    """

    model_card_pipeline_tag = "image-text-to-text"
    _keys_to_ignore_on_load_unexpected = None

    def __init__(self, config: VlpCocaConfig) -> None:
        super().__init__(config)
        self.generation_config = self.default_generation_config()

    def build_heads(self, config: VlpCocaConfig) -> None:
        self.text_decoder = VlpCocaMultimodalDecoder(
            config.decoder_config, first_cache_layer=config.text_config.num_hidden_layers
        )
        self.lm_head = nn.Linear(config.decoder_config.hidden_size, config.decoder_config.vocab_size, bias=False)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def default_generation_config(self) -> GenerationConfig:
        """open_clip's ``CoCa.generate`` defaults (:data:`COCA_DECODING`) with the text config's special tokens;
        ``max_length`` at most the text context."""
        text = self.config.text_config
        return GenerationConfig(
            bos_token_id=text.bos_token_id,
            eos_token_id=text.eos_token_id,
            pad_token_id=text.pad_token_id,
            forced_eos_token_id=text.eos_token_id,
            **{**COCA_DECODING, "max_length": min(COCA_DECODING["max_length"], text.max_position_embeddings)},
        )

    def caption_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` with the pad positions set to -100 (open_clip's ``CrossEntropyLoss(ignore_index=pad_id)``)."""
        return labels.masked_fill(labels == self.config.text_config.pad_token_id, IGNORE_INDEX)

    def decode(
        self,
        input_ids: torch.Tensor,
        image_tokens: torch.Tensor | AttentionMemory,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        text_states: torch.Tensor | None = None,
        **flags: bool,
    ) -> tuple[torch.Tensor, Any]:
        """Next-token logits of ``input_ids`` over ``image_tokens`` (row b with image row b; an ``AttentionMemory`` of
        ``M`` images serves ``r * M`` texts, ``r`` consecutive texts per image) and the decoder's outputs. With a
        ``cache``, ``input_ids`` are the new tokens. ``text_states`` skips the unimodal decoder (its states given)."""
        if isinstance(image_tokens, AttentionMemory):
            grouped_rows(input_ids.shape[0], len(image_tokens))
        elif image_tokens.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"the decoder pairs text row b with image row b: got {input_ids.shape[0]} texts and "
                f"{image_tokens.shape[0]} images (repeat the image tokens per caption, or wrap them in an "
                "AttentionMemory)"
            )
        if text_states is None:
            text_states = self.text_model.transformer.token_states(input_ids, attention_mask, cache).last_hidden_state
        decoded = self.text_decoder(text_states, image_tokens, cache=cache, **flags)
        return self.lm_head(decoded.last_hidden_state), decoded

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_tokens: torch.Tensor | AttentionMemory | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpCocaForConditionalGenerationOutput | tuple:
        """The joint pass on image-text pairs (``pixel_values`` and ``input_ids``), or a decoding pass over given
        ``image_tokens`` (the image tower's ``image_tokens``, or an ``AttentionMemory`` of them) with an optional
        key/value ``cache`` (``use_cache=True`` starts one).

        ``labels`` ``[B, L]`` align with ``input_ids`` (usually a copy); ``return_loss=True`` without labels uses
        ``input_ids``. The joint pass returns both weighted loss terms; a decoding pass only the caption term.
        ``attention_mask`` marks real tokens (default: ``input_ids != pad_token_id``, open_clip's rule; with a cache it
        covers cached + new positions and defaults to all real).
        """
        if input_ids is None:
            raise ValueError("pass input_ids (the processor's start-of-text ... end-of-text ids)")
        if labels is None and return_loss:
            labels = input_ids
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(
                f"labels must align with input_ids (shape {tuple(input_ids.shape)}), got {tuple(labels.shape)}; the "
                "model shifts them itself"
            )
        if use_cache and cache is None:
            cache = DynamicCache()
        weights = self.config
        contrastive = None
        contrastive_fields: dict[str, Any] = {}
        if image_tokens is None:
            if cache is not None:
                raise ValueError(
                    "a key/value cache is for decoding over image tokens: pass image_tokens (the vision model's "
                    "image_tokens), or call generate"
                )
            vision_outputs, text_outputs, image_embeds, text_embeds = self.encode_pair(
                input_ids, pixel_values, attention_mask, interpolate_pos_encoding, **kwargs
            )
            image_tokens = vision_outputs.image_tokens
            logits, decoded = self.decode(
                input_ids, image_tokens, text_states=text_outputs.last_hidden_state, **kwargs
            )
            scale = self.logit_scale.exp()
            logits_per_image = scale * image_embeds @ text_embeds.t()
            if labels is not None and weights.contrastive_loss_weight:
                contrastive = weights.contrastive_loss_weight * contrastive_loss(image_embeds, text_embeds, scale)
            contrastive_fields = dict(
                logits_per_image=logits_per_image,
                logits_per_text=logits_per_image.t(),
                image_embeds=image_embeds,
                text_embeds=text_embeds,
                text_model_output=text_outputs,
                vision_model_output=vision_outputs,
            )
        else:
            if pixel_values is not None:
                raise ValueError("pass pixel_values or image_tokens, not both")
            logits, decoded = self.decode(input_ids, image_tokens, attention_mask, cache=cache, **kwargs)
        caption = None
        if labels is not None:
            caption = weights.caption_loss_weight * shifted_lm_loss(logits, self.caption_labels(labels))
        loss = None
        if caption is not None:
            loss = caption if contrastive is None else contrastive + caption
        if isinstance(image_tokens, AttentionMemory):
            image_tokens = image_tokens.states
        return VlpCocaForConditionalGenerationOutput(
            loss=loss,
            logits=logits,
            contrastive_loss=contrastive,
            caption_loss=caption,
            image_tokens=image_tokens,
            cache=cache,
            hidden_states=decoded.hidden_states,
            attentions=decoded.attentions,
            cross_attentions=decoded.cross_attentions,
            **contrastive_fields,
        )

    # ----------------------------------------------------------------------------------------------- generation

    def encode_image_tokens(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """The decoder memory of ``pixel_values``: the image tower's ``image_tokens`` ``[B, M, projection_dim]``."""
        check_finite_pixels(pixel_values)
        outputs = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True)
        return outputs.image_tokens

    def prompt_input_ids(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch_size: int
    ) -> torch.Tensor:
        """The start ids ``[B, P]``: start-of-text alone, or a prompt as the processor returns it (start-of-text, the
        prompt's tokens, end-of-text, pads) cut before its end-of-text token so that decoding continues it. One prompt
        row serves every image; prompts of different lengths cannot share a batch."""
        text = self.config.text_config
        if input_ids is None:
            return torch.full((batch_size, 1), text.bos_token_id, dtype=torch.long, device=self.device)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"prompt input_ids must be [batch, length] with length >= 1, got {tuple(input_ids.shape)}")
        real = attention_mask.bool() if attention_mask is not None else input_ids != text.pad_token_id
        real = real.to(input_ids.device) & (input_ids != text.eos_token_id)
        lengths = real.sum(dim=1)
        if bool((lengths != lengths[0]).any()) or not bool(real[:, : int(lengths[0])].all()):
            raise ValueError(
                "the prompts differ in length: decoding continues every row after its last prompt token, so prompts "
                "of different lengths cannot share a batch; caption each prompt length separately"
            )
        input_ids = input_ids[:, : int(lengths[0])]
        if input_ids.shape[1] == 0 or bool((input_ids[:, 0] != text.bos_token_id).any()):
            input_ids = torch.cat([input_ids.new_full((input_ids.shape[0], 1), text.bos_token_id), input_ids], dim=1)
        if input_ids.shape[0] == 1 and batch_size > 1:
            input_ids = input_ids.expand(batch_size, -1)
        if input_ids.shape[0] != batch_size:
            raise ValueError(
                f"got {input_ids.shape[0]} prompts for {batch_size} images: pass one prompt for all, or one per image"
            )
        return input_ids.to(self.device)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        image_tokens: torch.Tensor | AttentionMemory | None = None,
        cache: Cache | None = None,
        next_sequence_length: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One decoding step's ``forward`` inputs (:func:`~hf_vlp.generation.utils.decoding_step_inputs`): the tokens
        the cache has not seen and the image tokens."""
        return decoding_step_inputs(self, input_ids, "image_tokens", image_tokens, cache, next_sequence_length)

    def cache_layout(self) -> Any:
        """A config describing the decoding cache: the unimodal decoder's layers then the multimodal decoder's."""
        layout = copy.copy(self.config.decoder_config)
        layout.num_hidden_layers = self.config.text_config.num_hidden_layers + len(self.text_decoder.transformer.layers)
        return layout

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_tokens: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        interpolate_pos_encoding: bool = False,
        beam_scoring: str = "original",
        end_at_pad: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Caption ``pixel_values`` (or precomputed ``image_tokens``), optionally continuing a prompt ``input_ids``
        (see :meth:`prompt_input_ids`). The image tower runs once; transformers' ``generate`` then decodes one token
        per step with the key/value cache (``use_cache=False`` re-runs the whole prefix every step instead).

        ``kwargs`` are ``generate``'s (``num_beams``, ``max_length``, ``do_sample``, ``top_k``, ``top_p``, ...),
        defaulting to ``self.generation_config``. ``beam_scoring`` as
        :class:`~hf_vlp.generation.beam_scoring.OriginalBeamScoringMixin` (``"original"``: transformers 4.x's, which
        open_clip's beam search used). ``end_at_pad``: a greedy or sampled pad token ends its sequence, as open_clip's
        sampling loop does (the pad id 0 is also the ``!`` token). Returns ``[B * num_return_sequences, T]`` ids that
        start with start-of-text (and the prompt) and are padded after end-of-text, as open_clip's.
        """
        if (pixel_values is None) == (image_tokens is None):
            raise ValueError("generate needs exactly one of pixel_values or image_tokens (the image tower's tokens)")
        generation_config = start_generation(self, kwargs, generation_config, "caption from start-of-text")
        if image_tokens is None:
            image_tokens = self.encode_image_tokens(pixel_values, interpolate_pos_encoding)
        start_ids = self.prompt_input_ids(input_ids, attention_mask, image_tokens.shape[0])
        settings = (kwargs, generation_config, self.generation_config)
        if end_at_pad and resolved_generation_value("num_beams", *settings, default=1) == 1:
            pad = resolved_generation_value("pad_token_id", *settings)
            criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
            criteria.append(EndsAtToken(pad))
            kwargs["stopping_criteria"] = criteria
        return self.generate_over_states(
            beam_scoring, kwargs, generation_config, self.cache_layout(), start_ids, "image_tokens", image_tokens
        )

    @torch.no_grad()
    def caption(self, images: Any, processor: Any, prompt: str | None = None, **generate_kwargs: Any) -> list[str]:
        """Caption strings of ``images`` (anything ``processor`` takes, or ``pixel_values`` ``[B, C, H, W]``), one per
        image and returned sequence, decoded without special tokens (and with the prompt's characters cut off when
        one is given). ``generate_kwargs`` go to :meth:`generate`."""
        if isinstance(images, torch.Tensor):
            pixel_values = images
        else:
            pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        input_ids = None
        if prompt:
            input_ids = processor(text=[prompt], padding="longest", return_tensors="pt")["input_ids"].to(self.device)
        output = self.generate(pixel_values, input_ids, **generate_kwargs)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        # cut after end-of-text: the pads (id 0) would read as "!" (the processor's image-text-to-text decoding)
        end = self.config.text_config.eos_token_id
        rows = [row[: row.index(end) + 1] if end in row else row for row in sequences.tolist()]
        tokenizer = getattr(processor, "tokenizer", processor)
        texts = [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]
        return [text[len(prompt) :].strip() if prompt and text.startswith(prompt) else text for text in texts]


__all__ = ["COCA_DECODING", "EndsAtToken", "VlpCocaForConditionalGeneration", "VlpCocaForConditionalGenerationOutput"]
