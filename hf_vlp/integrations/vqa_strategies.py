"""How the VQA pipeline gets answers from a model: one strategy per ``mode``, each a function of the pipeline
(:class:`Answerer`: its model, processor, device and cached candidate encodings), the question batch, ``top_k`` and the
call's options, returning each question's answers and scores best first.

- ``"rank"`` (:func:`rank_candidates`): a model with ``rank_answers`` ranks the candidate list; scores are the
  candidates' probabilities among the ``rank_k`` kept (a softmax of the ranking scores, unless the model's class says
  ``answer_ranking_scores = "probabilities"``, as ALBEF's does);
- ``"generate"`` (:func:`generate_answers`): a :class:`~hf_vlp.models.question_answering.QuestionAnsweringHeadMixin`
  generates; scores are the answers' probabilities under its decoder (:func:`answer_log_probs`);
- ``"classify"`` (:func:`classify_answers`): a classifier over a fixed answer vocabulary (ViLT's VQA head: the
  answers are ``config.id2label``) scores every answer; scores are its ``answer_scores`` (ViLT: a sigmoid per answer).

A new kind of head (e.g. a classifier over a fixed answer vocabulary) adds an entry to :data:`ANSWER_STRATEGIES`:
``mode -> (does a model support it, the strategy)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from ..generation.utils import (
    decode_generated,
    fill_special_tokens,
    resolved_generation_value,
    special_token_ids_from_tokenizer,
)
from ..models.question_answering import QuestionAnsweringHeadMixin

__all__ = [
    "ANSWER_STRATEGIES",
    "DEFAULT_RANK_K",
    "Answerer",
    "answer_log_probs",
    "classify_answers",
    "generate_answers",
    "rank_candidates",
]

DEFAULT_RANK_K = 128  # candidates kept after the first-token pruning (k_test of the originals' VQA configs)
Answers = tuple[list[list[str]], list[list[float]]]  # per question: answers and their scores, best first


class Answerer(Protocol):
    """What a strategy uses of the pipeline."""

    model: Any
    processor: Any
    device: torch.device

    def encoded_answers(self, candidates: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates' ``input_ids`` and ``attention_mask`` from the processor's ``encode_answers``."""


def rank_candidates(
    answerer: Answerer, inputs: dict[str, torch.Tensor], top_k: int, options: dict[str, Any]
) -> Answers:
    """The ``top_k`` best of ``options["answer_list"]`` by ``model.rank_answers``, with their probabilities among the
    ``options["rank_k"]`` candidates kept (default :data:`DEFAULT_RANK_K`, at least ``top_k``)."""
    model, candidates = answerer.model, options["answer_list"]
    answer_ids, answer_mask = answerer.encoded_answers(candidates)
    k = min(max(options.get("rank_k") or DEFAULT_RANK_K, top_k), len(candidates))
    ranking = model.rank_answers(
        inputs["pixel_values"],
        inputs["input_ids"],
        answer_ids.to(answerer.device),
        attention_mask=inputs["attention_mask"],
        answer_attention_mask=answer_mask.to(answerer.device),
        k=k,
    )
    scores = ranking.scores.float()
    if getattr(model, "answer_ranking_scores", "log_scores") != "probabilities":
        scores = scores.softmax(dim=-1)
    top_k = min(top_k, k)
    answers = [[candidates[index] for index in row] for row in ranking.answer_indices[:, :top_k].tolist()]
    return answers, scores[:, :top_k].tolist()


def answer_mask(sequences: torch.Tensor, end_ids: torch.Tensor) -> torch.Tensor:
    """1 up to and including each sequence's first end token after the start token, 0 after it (padding)."""
    ended = torch.isin(sequences, end_ids.to(sequences.device))
    ended[:, 0] = False
    return ((ended.long().cumsum(dim=1) - ended.long()) == 0).long()


def answer_log_probs(
    model: Any, inputs: dict[str, torch.Tensor], sequences: torch.Tensor, per_question: int, end_ids: torch.Tensor
) -> torch.Tensor:
    """Each answer's summed token log-probability ``[Q * per_question]`` under the model's decoder, teacher-forced
    over the question states with the question padding mask (the start token is given, the end token counts);
    ``sequences`` hold ``per_question`` consecutive answers per question."""
    states = model.encode_question(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
    mask = answer_mask(sequences, end_ids)
    counts = torch.full((states.shape[0],), per_question, dtype=torch.long, device=sequences.device)
    logits = model(
        answer_input_ids=sequences,
        answer_attention_mask=mask,
        question_states=states,
        attention_mask=inputs["attention_mask"],
        answers_per_question=counts,
    ).logits
    log_probs = logits[:, :-1].float().log_softmax(dim=-1).gather(-1, sequences[:, 1:, None]).squeeze(-1)
    return (log_probs * mask[:, 1:]).sum(dim=1)


def _generation_settings(answerer: Answerer, top_k: int, options: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """``generate`` keyword arguments and generation config: the call's ``generate_kwargs``, the special tokens the
    settings lack from the tokenizer, and ``top_k`` returned sequences (beams unless sampling)."""
    model = answerer.model
    kwargs = dict(options.get("generate_kwargs") or {})
    bos_token = getattr(model, "answer_bos_token", "cls_token")
    generation_config = fill_special_tokens(
        kwargs,
        kwargs.pop("generation_config", None),
        model.generation_config,
        special_token_ids_from_tokenizer(answerer.processor, bos_token=bos_token),
    )
    if top_k > 1:
        settings = (kwargs, generation_config, model.generation_config)
        kwargs["num_return_sequences"] = top_k
        if not resolved_generation_value("do_sample", *settings, default=False):
            kwargs["num_beams"] = max(int(resolved_generation_value("num_beams", *settings, default=1)), top_k)
    return kwargs, generation_config


def generate_answers(
    answerer: Answerer, inputs: dict[str, torch.Tensor], top_k: int, options: dict[str, Any]
) -> Answers:
    """The model's generated answers (``top_k`` sequences per question; ``options["generate_kwargs"]`` override the
    model's generation settings), sorted by their probability under the decoder; sequences that decode to the same
    text count once."""
    model = answerer.model
    kwargs, generation_config = _generation_settings(answerer, top_k, options)
    output = model.generate(
        inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], generation_config=generation_config,
        **kwargs,
    )
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    per_question = sequences.shape[0] // inputs["input_ids"].shape[0]
    end_id = resolved_generation_value("eos_token_id", kwargs, generation_config, model.generation_config)
    end_ids = torch.as_tensor([] if end_id is None else end_id, dtype=torch.long).reshape(-1)
    probabilities = answer_log_probs(model, inputs, sequences, per_question, end_ids).exp().tolist()
    texts = decode_generated(answerer.processor, sequences)
    answers, scores = [], []
    for start in range(0, len(texts), per_question):
        best: dict[str, float] = {}
        for text, probability in zip(texts[start : start + per_question], probabilities[start : start + per_question]):
            best[text] = max(probability, best.get(text, 0.0))
        ordered = sorted(best.items(), key=lambda item: item[1], reverse=True)[:top_k]
        answers.append([text for text, _ in ordered])
        scores.append([score for _, score in ordered])
    return answers, scores


def classify_answers(
    answerer: Answerer, inputs: dict[str, torch.Tensor], top_k: int, options: dict[str, Any]
) -> Answers:
    """The ``top_k`` answers of the model's answer vocabulary (``config.id2label``) by ``answer_scores(logits)``."""
    model = answerer.model
    scores = model.answer_scores(model(**inputs).logits)
    best = scores.topk(min(top_k, scores.shape[-1]), dim=-1)
    names = model.config.id2label
    answers = [[names[index] for index in row] for row in best.indices.tolist()]
    return answers, best.values.tolist()


def is_answer_classifier(model: Any) -> bool:
    """A VQA head that classifies over ``config.id2label`` (it has ``answer_scores``)."""
    return callable(getattr(model, "answer_scores", None)) and bool(getattr(model.config, "id2label", None))


Strategy = Callable[[Answerer, dict[str, torch.Tensor], int, dict[str, Any]], Answers]

# mode -> (whether a model supports it, the strategy)
ANSWER_STRATEGIES: dict[str, tuple[Callable[[Any], bool], Strategy]] = {
    "rank": (lambda model: callable(getattr(model, "rank_answers", None)), rank_candidates),
    "generate": (lambda model: isinstance(model, QuestionAnsweringHeadMixin), generate_answers),
    "classify": (is_answer_classifier, classify_answers),
}
