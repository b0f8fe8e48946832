"""The generative VQA head shared by ALBEF and BLIP: a question encoder over the image, an answer decoder
cross-attending to the question states, and one training ``forward``.

``forward`` encodes the ``Q`` questions (or takes precomputed ``question_states``), repeats each question's states for
its ``answers_per_question``, teacher-forces the ``N`` answers through the decoder and, with labels or
``return_loss=True``, returns ``loss = sum(answer_weights * answer_losses) / Q`` where each answer's loss is its summed
(label-smoothed, optionally momentum-distilled) token cross-entropy. A head supplies what differs between the
originals: :meth:`QuestionAnsweringHeadMixin.run_question_encoder` (its towers), ``decode_answers`` (its decoder and
start token) and, with momentum towers, :meth:`QuestionAnsweringHeadMixin.teacher_answer_logits`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Unpack

import torch
from transformers import Cache
from transformers.modeling_outputs import ModelOutput

from ..generation.answers import AnswerGenerationMixin, QuestionAnsweringOutput
from ..modules.attention import AttentionMemory
from ..objectives.lm import IGNORE_INDEX, summed_answer_losses
from .modeling_utils import OutputKwargs
from .towers import ImageTextInputs


def answer_counts(
    counts: torch.Tensor | None, num_questions: int, num_answers: int, device: torch.device
) -> torch.Tensor:
    """``answers_per_question`` as a ``[Q]`` long tensor of positive counts summing to ``N`` (default one each)."""
    if counts is None:
        if num_answers != num_questions:
            raise ValueError(
                f"{num_answers} answers for {num_questions} questions: pass answers_per_question ([Q] counts)"
            )
        return torch.ones(num_questions, dtype=torch.long, device=device)
    counts = torch.as_tensor(counts).reshape(-1).to(device=device, dtype=torch.long)
    if counts.shape[0] != num_questions or int(counts.sum()) != num_answers or bool((counts < 1).any()):
        raise ValueError(
            f"answers_per_question must hold one positive count per question ({num_questions}) summing to the "
            f"number of answers ({num_answers}), got {counts.tolist()}"
        )
    return counts


def question_inputs(
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    interpolate_pos_encoding: bool,
) -> ImageTextInputs:
    """The questions of a VQA call, one image per question."""
    if pixel_values.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"pass one image per question: got {pixel_values.shape[0]} images and {input_ids.shape[0]} questions"
        )
    return ImageTextInputs(input_ids, pixel_values, attention_mask, token_type_ids, interpolate_pos_encoding)


@dataclass(frozen=True)
class AnswerInputs:
    """The answers of a VQA training call: ids and mask ``[N, La]``, ``answers_per_question`` ``[Q]`` and the question
    mask repeated per answer."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    answers_per_question: torch.Tensor | None
    question_mask: torch.Tensor | None


def answer_weight_vector(weights: torch.Tensor | None, num_answers: int, like: torch.Tensor) -> torch.Tensor:
    """``answer_weights`` as ``[N]`` of ``like``'s device and dtype (default ones)."""
    weights = torch.ones(num_answers) if weights is None else weights
    weights = weights.reshape(-1).to(device=like.device, dtype=like.dtype)
    if weights.shape[0] != num_answers:
        raise ValueError(f"answer_weights must hold one weight per answer ({num_answers}), got {weights.shape[0]}")
    return weights


class QuestionAnsweringHeadMixin(AnswerGenerationMixin, abc.ABC):
    """A VQA head: question encoder + answer decoder, trained by :meth:`forward`. Put it first among the bases.

    The head provides :meth:`run_question_encoder`, ``decode_answers(answer_input_ids, question_states,
    answer_attention_mask, question_attention_mask, cache=...)`` -> next-token logits ``[N, La, vocab]`` (row i of
    the states, or an ``AttentionMemory`` shared by consecutive rows), and ``question_answering_output_class``.
    """

    question_answering_output_class: type[QuestionAnsweringOutput] = QuestionAnsweringOutput

    @abc.abstractmethod
    def run_question_encoder(self, questions: ImageTextInputs, **options: Any) -> tuple[ModelOutput, ModelOutput]:
        """``(image tower output, question encoder output)`` of one image per question; the question states are the
        latter's ``last_hidden_state`` ``[Q, Lq, D]``. ``options``: ``output_hidden_states``/``output_attentions`` and
        the head's own (ALBEF's ``momentum``)."""

    def encode_question(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **options: Any,
    ) -> torch.Tensor:
        """The question states ``[Q, Lq, D]`` the answer decoder reads (see :meth:`run_question_encoder`)."""
        questions = question_inputs(input_ids, pixel_values, attention_mask, token_type_ids, interpolate_pos_encoding)
        return self.run_question_encoder(questions, **options)[1].last_hidden_state

    def answer_labels(self, answer_input_ids: torch.Tensor) -> torch.Tensor:
        """Token targets of answers: the ids with ``[PAD]`` set to -100 (position 0 never counts: the shift drops it)."""
        pad_id = self.config.text_config.pad_token_id
        return answer_input_ids.masked_fill(answer_input_ids == pad_id, IGNORE_INDEX)

    def teacher_answer_logits(
        self, alpha: float | None, questions: ImageTextInputs | None, answers: AnswerInputs
    ) -> tuple[torch.Tensor | None, float]:
        """``(teacher logits, alpha)`` of momentum distillation over the ``answers``; a head without momentum towers
        has none and rejects a non-zero ``alpha``. ``questions`` is ``None`` when question states were given."""
        if alpha:
            raise ValueError(f"{type(self).__name__} has no momentum distillation: leave alpha unset")
        return None, 0.0

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
        question_states: torch.Tensor | AttentionMemory | None = None,
        cache: Cache | None = None,
        token_type_ids: torch.Tensor | None = None,
        alpha: float | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[OutputKwargs],
    ) -> QuestionAnsweringOutput | tuple:
        """One VQA forward on ``Q`` (image, question) pairs and their ``N`` answers (also :meth:`generate`'s step).

        Args:
            input_ids, pixel_values: ``[Q, Lq]`` questions from the processor and ``[Q, C, H, W]`` their images;
                ``attention_mask`` is the questions' 1/0 padding mask, also applied to the question states the answer
                decoder reads; ``token_type_ids`` go to the question encoder.
            answer_input_ids: ``[N, La]`` answers from the processor, grouped by question in order.
            answers_per_question: ``[Q]`` answers of each question (the originals' ``k``/``n``); default one each.
            answer_weights: ``[N]`` each answer's weight (the originals' ``weights``); default ones.
            labels: ``[N, La]`` targets aligned with the answers (shifted here), -100 ignored; default the answers
                with ``[PAD]`` ignored. Passing labels (or ``return_loss=True``) computes ``answer_losses``/``loss``.
            question_states: ``[Q, Lq, D]`` precomputed :meth:`encode_question` output (or an ``AttentionMemory``)
                used instead of encoding ``input_ids``/``pixel_values``.
            cache: the answer decoder's self-attention cache (generation); ``answer_input_ids`` are then the tokens
                after the cached ones.
            alpha: momentum-distillation weight of a head with momentum towers (ALBEF; default
                ``self.distill_alpha``, ramped by ``MomentumCallback``).
            output_hidden_states, output_attentions: the image tower's and the question encoder's
                (``vision_model_output``, ``text_model_output``).
        """
        if answer_input_ids is None:
            raise ValueError("pass answer_input_ids ([N, La] answers from the processor)")
        vision_outputs = text_outputs = questions = None
        if input_ids is not None and pixel_values is not None:
            questions = question_inputs(
                input_ids, pixel_values, attention_mask, token_type_ids, interpolate_pos_encoding
            )
        if question_states is None:
            if questions is None:
                raise ValueError("pass the questions' input_ids and pixel_values, or precomputed question_states")
            vision_outputs, text_outputs = self.run_question_encoder(questions, **kwargs)
            question_states = text_outputs.last_hidden_state
        compute_loss = bool(return_loss) or labels is not None
        if cache is not None and compute_loss:
            raise ValueError("the cache is for generation: compute losses on whole answers without a cache")
        num_questions, num_answers = len(question_states), answer_input_ids.shape[0]
        if isinstance(question_states, AttentionMemory):
            memory, question_mask, counts = question_states, attention_mask, None
        else:
            counts = answer_counts(answers_per_question, num_questions, num_answers, answer_input_ids.device)
            memory = question_states.repeat_interleave(counts, dim=0)
            question_mask = attention_mask.repeat_interleave(counts, dim=0) if attention_mask is not None else None
        logits = self.decode_answers(answer_input_ids, memory, answer_attention_mask, question_mask, cache=cache)
        loss = answer_losses = None
        if compute_loss:
            if labels is None:
                labels = self.answer_labels(answer_input_ids)
            elif labels.shape != answer_input_ids.shape:
                raise ValueError(
                    f"labels must align with answer_input_ids (shape {tuple(answer_input_ids.shape)}), got "
                    f"{tuple(labels.shape)}; the model shifts them itself"
                )
            weights = answer_weight_vector(answer_weights, num_answers, logits)
            answers = AnswerInputs(answer_input_ids, answer_attention_mask, counts, question_mask)
            teacher_logits, alpha = self.teacher_answer_logits(alpha, questions, answers)
            answer_losses = summed_answer_losses(
                logits, labels.to(logits.device), teacher_logits, alpha, getattr(self.config, "label_smoothing", 0.0)
            )
            loss = (weights * answer_losses).sum() / num_questions
        if isinstance(question_states, AttentionMemory):
            question_states = question_states.states
        return self.question_answering_output_class(
            loss=loss,
            answer_losses=answer_losses,
            logits=logits,
            question_states=question_states,
            cache=cache,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
        )


__all__ = ["AnswerInputs", "QuestionAnsweringHeadMixin", "answer_counts", "answer_weight_vector", "question_inputs"]
