"""VQA accuracy of answer-ranking models (ALBEF, BLIP ``inference='rank'``): each question's answer is the best of
a fixed candidate list, as the originals evaluate VQAv2.

Predictions are scored by the packaged ``vqa_accuracy`` metric module: the official VQAv2 accuracy, answers
normalised and averaged over the leave-one-out subsets of the human answers (:mod:`hf_vlp.evaluation.vqa_answers`;
a single answer is matched exactly after normalisation). Reported with the chance level (one over the candidates) and
the majority baseline (always answering the most frequent normalised ground-truth answer, scored the same way), since
a question type alone narrows the answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .embeddings import _batches, eval_mode, model_device
from .metric_modules import load_metric
from .vqa_answers import normalize_vqa_answer, vqa_score

__all__ = ["answer_score", "majority_answer", "vqa_accuracy"]


def answer_score(predicted: str, answers: str | Sequence[str]) -> float:
    """The VQA accuracy of one prediction against one question's answers (:func:`~.vqa_answers.vqa_score`)."""
    return vqa_score(predicted, answers)


def _answer_lists(answers: Sequence[str | Sequence[str]]) -> list[list[str]]:
    return [[truth] if isinstance(truth, str) else list(truth) for truth in answers]


def majority_answer(answers: Sequence[str | Sequence[str]]) -> str:
    """The most frequent of the questions' most frequent normalised answers (the majority baseline's answer)."""
    normalised = ([normalize_vqa_answer(answer) for answer in truth] for truth in _answer_lists(answers))
    per_question = Counter(Counter(truth).most_common(1)[0][0] for truth in normalised)
    return per_question.most_common(1)[0][0]


@torch.no_grad()
def vqa_accuracy(
    model: nn.Module,
    processor: Any,
    images: Sequence[Any],
    questions: Sequence[str],
    answers: Sequence[str | Sequence[str]],
    answer_list: Sequence[str],
    k: int = 128,
    batch_size: int = 32,
) -> dict[str, float]:
    """``vqa_accuracy``, ``vqa_chance`` and ``vqa_majority_baseline`` of ``model.rank_answers`` over
    ``answer_list`` (tokenised once with ``processor.encode_answers``; questions with ``text_kind="question"``).
    ``k`` candidates survive the first-token pruning (capped at the list's length)."""
    if not (len(images) == len(questions) == len(answers)) or not len(images):
        raise ValueError(
            f"Need as many images, questions and answers, at least one: got {len(images)}, {len(questions)}, "
            f"{len(answers)}."
        )
    if not callable(getattr(model, "rank_answers", None)):
        raise TypeError(f"{type(model).__name__} has no rank_answers; VQA accuracy needs an answer-ranking model.")
    candidates = list(answer_list)
    device = model_device(model)
    encoded_answers = processor.encode_answers(candidates, return_tensors="pt")
    answer_ids = encoded_answers["input_ids"].to(device)
    answer_mask = encoded_answers["attention_mask"].to(device)
    predictions: list[str] = []
    with eval_mode(model):
        for start, batch in zip(range(0, len(images), batch_size), _batches(list(images), batch_size)):
            encoded = processor(
                images=batch, text=list(questions[start : start + len(batch)]), text_kind="question", return_tensors="pt"
            )
            ranking = model.rank_answers(
                encoded["pixel_values"].to(device),
                encoded["input_ids"].to(device),
                answer_ids,
                attention_mask=encoded["attention_mask"].to(device),
                answer_attention_mask=answer_mask,
                k=min(k, len(candidates)),
            )
            predictions += [candidates[index] for index in ranking.answer_indices[:, 0].tolist()]
    references = _answer_lists(answers)
    metric = load_metric("vqa_accuracy")
    majority = [majority_answer(references)] * len(references)
    return {
        "vqa_accuracy": metric.compute(predictions=predictions, references=references)["vqa_accuracy"],
        "vqa_chance": 1.0 / len(candidates),
        "vqa_majority_baseline": metric.compute(predictions=majority, references=references)["vqa_accuracy"],
    }
