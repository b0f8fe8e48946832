"""VQA accuracy of answer-ranking models (ALBEF, BLIP ``inference='rank'``): each question's answer is the best of
a fixed candidate list, as the originals evaluate VQAv2.

A prediction scores ``min(1, matches / 3)`` against a list of human answers (the VQAv2 metric, given ten answers)
and 1 / 0 against a single answer. Reported with the chance level (one over the candidates) and the majority
baseline (always answering the most frequent ground-truth answer), since a question type alone narrows the answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .embeddings import _batches, eval_mode, model_device

__all__ = ["answer_score", "vqa_accuracy"]


def answer_score(predicted: str, answers: str | Sequence[str]) -> float:
    """1/0 against one answer; ``min(1, matches / 3)`` against a list of (human) answers."""
    if isinstance(answers, str):
        return float(predicted == answers)
    answers = list(answers)
    if len(answers) == 1:
        return float(predicted == answers[0])
    return min(1.0, sum(answer == predicted for answer in answers) / 3)


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
    scores = [answer_score(predicted, truth) for predicted, truth in zip(predictions, answers)]
    most_common = Counter(truth if isinstance(truth, str) else Counter(truth).most_common(1)[0][0] for truth in answers)
    majority = most_common.most_common(1)[0][0]
    return {
        "vqa_accuracy": sum(scores) / len(scores),
        "vqa_chance": 1.0 / len(candidates),
        "vqa_majority_baseline": sum(answer_score(majority, truth) for truth in answers) / len(answers),
    }
