"""VQA as classification over a fixed answer vocabulary (ViLT's and VLMo's VQA heads), shared by their tasks.

The vocabulary is the training split's answers (each question's most frequent answer, kept from
``min_answer_count`` questions on, in order of first appearance: ViLT's ``vqa_dict``; synthetic-shapes: its answers)
and is stored in the model config (``id2label``/``label2id``/``num_labels``) before training; a model that already
has one (a saved VQA model) keeps it. Batches carry soft scores over it; evaluation is the VQA accuracy of the
arg-max answer.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import datasets
import torch
from torch import nn

from ...evaluation.embeddings import _batches, eval_mode, model_device
from ...evaluation.metric_modules import load_metric
from ...evaluation.vqa import majority_answer
from ...evaluation.vqa_answers import normalize_vqa_answer
from ...synthetic import VQA_ANSWERS
from ..collators import answer_strings, first_present
from ..data import AnyDataset, resolve_dataset_spec, take_rows
from ..job import JobArguments
from ..vilt_collators import ViltQuestionAnsweringCollator
from .base import saved_model_class

logger = logging.getLogger(__name__)

# answer columns of VQA rows: annotators' answers first (soft scores), then a single answer
VQA_ANSWER_COLUMNS = ("answers", "answer", "multiple_choice_answer")


def label_settings(id2label: dict[int, str]) -> dict[str, Any]:
    """Config fields of a label set (``id2label``, ``label2id``; ``num_labels`` follows)."""
    id2label = {int(index): str(name) for index, name in id2label.items()}
    return {"id2label": id2label, "label2id": {name: index for index, name in id2label.items()}}


def answer_vocabulary(answers: Sequence[Any], min_count: int = 1) -> list[str]:
    """The VQA answer vocabulary of a training split, as the original's ``vqa_dict``: each question's most frequent
    normalised answer (its ``multiple_choice_answer``), kept when at least ``min_count`` questions have it, in order of
    first appearance. ``answers`` holds one entry per question: a string or a list of (annotators') answers."""
    majors: list[str] = []
    for position, value in enumerate(answers):
        truth = answer_strings(value, position)
        truth = [truth] if isinstance(truth, str) else truth
        majors.append(Counter(normalize_vqa_answer(answer) for answer in truth).most_common(1)[0][0])
    counts = Counter(majors)
    vocabulary = [answer for answer in dict.fromkeys(majors) if counts[answer] >= min_count]
    if not vocabulary:
        raise ValueError(f"No answer of the training split occurs {min_count} times or more; lower min_answer_count.")
    return vocabulary


def answer_column_values(dataset: AnyDataset) -> list[Any]:
    """Each row's answer(s) (the first of :data:`VQA_ANSWER_COLUMNS` it holds) without decoding the images of a
    map-style dataset; a streamed one is read through (images included)."""
    if isinstance(dataset, datasets.Dataset):
        raw = dataset.with_format(None)  # the stored columns, without the decoding transform
        present = [name for name in VQA_ANSWER_COLUMNS if name in raw.column_names]
        if not present:
            raise ValueError(f"The VQA training set has none of the answer columns {VQA_ANSWER_COLUMNS}.")
        columns = {name: list(raw[name]) for name in present}
        rows = [{name: columns[name][index] for name in present} for index in range(len(raw))]
    else:
        logger.warning("Reading the streamed training set once to collect its answer vocabulary.")
        rows = list(take_rows(dataset))
    return [first_present(row, VQA_ANSWER_COLUMNS) for row in rows]


class ClassifierVqaTaskMixin:
    """What a classifier-VQA task adds to its architecture's task class: the columns and collator, the answer
    vocabulary in the config (:meth:`answer_settings`, on a fresh model and on a saved model of another head), the
    soft-score batches and the evaluation. Put it first among the task's bases; ``vqa_model_class`` is the VQA head."""

    name = "vqa"
    synthetic_task = "vqa"
    text_column_candidates = ("question", "text")
    optional_columns = VQA_ANSWER_COLUMNS
    collator_class = ViltQuestionAnsweringCollator
    vqa_model_class: type[nn.Module]

    def answer_settings(self, job: JobArguments) -> dict[str, Any]:
        """The config fields of the training split's answer vocabulary."""
        return label_settings(dict(enumerate(self.answer_vocabulary(job))))

    def from_saved(self, directory: str, job: JobArguments, **config_changes: Any) -> nn.Module:
        """A saved VQA model keeps its answer vocabulary; any other saved model of the architecture gets the training
        split's and a fresh classifier."""
        if saved_model_class(directory) != self.vqa_model_class.__name__:
            config_changes = {**self.answer_settings(job), **config_changes}
        return super().from_saved(directory, job, **config_changes)

    def answer_vocabulary(self, job: JobArguments) -> list[str]:
        """The training split's answer vocabulary (:func:`answer_vocabulary`); synthetic-shapes: its answers."""
        if resolve_dataset_spec(job.dataset).kind == "synthetic":
            return list(VQA_ANSWERS)
        values = answer_column_values(self.load_dataset(job.dataset, job.train_split, job))
        vocabulary = answer_vocabulary(values, int(self.recipe.task_options.get("min_answer_count", 1)))
        logger.info("VQA answer vocabulary: %d answers from %d training questions.", len(vocabulary), len(values))
        return vocabulary

    def collator_options(self, model: nn.Module, processor: Any, seed: int) -> dict[str, Any]:
        return {"label2id": dict(model.config.label2id), "answer_key": VQA_ANSWER_COLUMNS}

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        """``vqa_accuracy`` of the arg-max answer (the official VQA accuracy against every human answer of a
        question; a question whose answers are outside the vocabulary scores 0), ``vqa_chance`` (one over the
        answers) and ``vqa_majority_baseline`` (always the most frequent ground-truth answer)."""
        rows = self.usable_rows(spec, split, job)
        truths = [
            answer_strings(first_present(row, VQA_ANSWER_COLUMNS), row.get("sample_index", position))
            for position, row in enumerate(rows)
        ]
        predictions = classifier_answers(model, processor, [row["image"] for row in rows],
                                         [row["text"] for row in rows], batch_size)
        metric = load_metric("vqa_accuracy")
        references = [[truth] if isinstance(truth, str) else list(truth) for truth in truths]
        majority = [majority_answer(references)] * len(references)
        return {
            "vqa_accuracy": metric.compute(predictions=predictions, references=references)["vqa_accuracy"],
            "vqa_chance": 1.0 / model.config.num_labels,
            "vqa_majority_baseline": metric.compute(predictions=majority, references=references)["vqa_accuracy"],
        }


@torch.no_grad()
def classifier_answers(
    model: nn.Module, processor: Any, images: Sequence[Any], questions: Sequence[str], batch_size: int = 64
) -> list[str]:
    """The arg-max answer (``config.id2label``) of a VQA classifier for each (image, question)."""
    device = model_device(model)
    names = model.config.id2label
    answers: list[str] = []
    with eval_mode(model):
        for start, batch in zip(range(0, len(images), batch_size), _batches(list(images), batch_size)):
            encoded = processor(images=batch, text=list(questions[start : start + len(batch)]), return_tensors="pt")
            logits = model(**{key: value.to(device) for key, value in encoded.items()}).logits
            answers += [names[index] for index in logits.argmax(-1).tolist()]
    return answers


__all__ = [
    "VQA_ANSWER_COLUMNS",
    "ClassifierVqaTaskMixin",
    "answer_column_values",
    "answer_vocabulary",
    "classifier_answers",
    "label_settings",
]
