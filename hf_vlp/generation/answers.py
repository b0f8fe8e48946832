"""What the VQA heads (ALBEF, BLIP) share around their answer decoders: the training/decoding-step output, the
answer-ranking result and ``generate_answers``. Each head keeps its own question encoder, answer decoder, losses and
ranking rule (they differ between the originals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import Cache
from transformers.modeling_outputs import ModelOutput

from .utils import decode_generated, fill_special_tokens, special_token_ids_from_tokenizer


@dataclass
class QuestionAnsweringOutput(ModelOutput):
    """A VQA forward's outputs: ``loss`` = ``sum(answer_weights * answer_losses) / num_questions``,
    ``answer_losses`` ``[N]``, the answer decoder's next-token ``logits`` ``[N, La, vocab]``, the ``question_states``
    ``[Q, Lq, D]`` it attended to, its ``cache`` during generation, and the image tower's and question encoder's
    outputs (``vision_model_output``/``text_model_output``, with ``hidden_states``/``attentions`` when asked for;
    ``None`` when precomputed question states were passed)."""

    loss: torch.Tensor | None = None
    answer_losses: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    question_states: torch.Tensor | None = None
    cache: Cache | None = None
    vision_model_output: ModelOutput | None = None
    text_model_output: ModelOutput | None = None


@dataclass
class AnswerRanking:
    """``rank_answers`` result: ``answer_indices`` ``[Q, k]`` candidate indices best first, ``scores`` ``[Q, k]``
    their scores, ``first_token_probs`` ``[Q, A]`` every candidate's first-token probability."""

    answer_indices: torch.Tensor
    scores: torch.Tensor
    first_token_probs: torch.Tensor


class AnswerGenerationMixin:
    """``generate_answers`` of a VQA head (ALBEF, BLIP): :meth:`generate` decoded to strings. The special tokens
    the generation settings lack are read from the processor's tokenizer, the answers' start token being the
    tokenizer's ``answer_bos_token`` (ALBEF: ``[CLS]``; BLIP: ``[DEC]``, its ``bos_token``)."""

    answer_bos_token = "cls_token"

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
        removed (the originals' ``tokenizer.decode(output, skip_special_tokens=True)``). ``processor`` is the
        model's processor or its tokenizer."""
        generation_config = fill_special_tokens(
            generate_kwargs,
            generate_kwargs.pop("generation_config", None),
            self.generation_config,
            special_token_ids_from_tokenizer(processor, bos_token=self.answer_bos_token),
        )
        output = self.generate(
            pixel_values, input_ids, attention_mask, generation_config=generation_config, **generate_kwargs
        )
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        return decode_generated(processor, sequences)


__all__ = ["AnswerGenerationMixin", "AnswerRanking", "QuestionAnsweringOutput"]
