"""What ALBEF's and BLIP's tasks share: augmentation (the paper's crop + RandAugment, or the flip alone on
``synthetic-shapes``), momentum callbacks, towers from ``--vision-init``/``--text-init``, and one evaluation per task
family — retrieval (recall@K by ITC and after ITM re-ranking, through the models' retrieval interface), VQA (answer
ranking) and image-text classification (NLVR2, SNLI-VE). An architecture's task mixes in its family
(``class AlbefVqaTask(QuestionAnsweringTask, AlbefTask)``) and adds how its models are built.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from transformers import TrainerCallback

from ...evaluation.classification import classification_accuracy
from ...evaluation.itm_retrieval import itm_retrieval_metrics
from ...evaluation.vqa import vqa_accuracy
from ...synthetic import VQA_ANSWERS
from ..callbacks import LogitScaleClampCallback, MomentumCallback
from ..collators import (
    ImageTextCollator,
    QuestionAnsweringCollator,
    RetrievalCollator,
    VisualReasoningCollator,
    first_present,
    stable_image_id,
)
from ..data import AnyDataset, ImageTransform, resolve_dataset_spec, take_rows
from ..job import JobArguments
from ..transforms import FINETUNE_CROP_SCALE
from .base import TrainingTask

logger = logging.getLogger(__name__)


class FusionTask(TrainingTask):
    """A task of a fusion model (ALBEF, BLIP): paper augmentation on real data, the flip alone on synthetic data,
    momentum callbacks when ``alpha_warmup_epochs`` is set, towers from ``--vision-init``/``--text-init``."""

    image_column = "image"
    crop_scale: tuple[float, float] = FINETUNE_CROP_SCALE
    horizontal_flip = "swap-left-right"
    alpha_warmup_epochs: float | None = None  # momentum tasks: the distillation ramp in epochs
    # the architecture's paper transform without the flip: ``(image_size, crop_scale) -> transform``
    paper_transform: Callable[[int, tuple[float, float]], ImageTransform]

    def train_transform(self, image_size: int) -> ImageTransform:
        """The paper's RandomResizedCrop (``crop_scale``) + RandAugment of the architecture; the collator flips."""
        return self.paper_transform(image_size, self.crop_scale)

    def adapt_processor(self, processor: Any, model: nn.Module, job: JobArguments) -> Any:
        """Task-specific processor settings (none by default; VQA adds the candidate answers)."""
        return processor

    def from_towers(self, config: Any, vision: str, text: str) -> nn.Module:
        """The task model with towers from a transformers ViT/DeiT and BERT (cross-attention initialised fresh)."""
        return self.load_towers(self.model_classes[0], config, vision, text)

    @staticmethod
    def load_towers(model_class: type, config: Any, vision: str, text: str) -> nn.Module:
        """``model_class.from_pretrained_towers`` (a ViT/DeiT and a BERT directory), logging what each tower got."""
        model, reports = model_class.from_pretrained_towers(config, vision=vision, text=text)
        for report in reports.values():
            logger.info(report.summary())
        return model

    def augmentation(self, job: JobArguments, train: bool) -> str:
        """The augmentation in effect: ``paper``, ``flip`` or ``none`` (``--augment``; ``auto`` is ``paper``, but
        ``flip`` on synthetic-shapes, whose captions count, size and place the shapes that a crop cuts or enlarges)."""
        if not train or job.no_augment:
            return "none"
        if job.augment != "auto":
            return job.augment
        return "flip" if resolve_dataset_spec(job.dataset).kind == "synthetic" else "paper"

    def callbacks(self, model: nn.Module, collator: ImageTextCollator) -> list[TrainerCallback]:
        """The base callbacks, ``MomentumCallback`` for momentum tasks, and a clamp of ``temp`` into the config's range
        after each optimizer step: the forward's own in-place clamp does not reach the stored value when the
        parameter is sharded (FSDP clamps the gathered copy), and without one the saved ``temp`` could lie outside it."""
        callbacks = super().callbacks(model, collator)
        if isinstance(getattr(model, "temp", None), nn.Parameter):
            config = model.config
            callbacks.insert(0, LogitScaleClampCallback(config.temp_max, config.temp_min, parameter_name="temp"))
        if self.alpha_warmup_epochs is None:
            return callbacks
        return [MomentumCallback(alpha_warmup_epochs=self.alpha_warmup_epochs), *callbacks]


# --------------------------------------------------------------------------------------------------- retrieval


def retrieval_gallery(rows: Sequence[dict[str, Any]]) -> tuple[list[Any], list[str], list[int]]:
    """The distinct images of ``rows`` (rows sharing an ``image_id`` show one image; rows without one are their own
    image), every caption, and each caption's image index."""
    images: list[Any] = []
    texts: list[str] = []
    text_to_image: list[int] = []
    index_of: dict[int, int] = {}
    for position, row in enumerate(rows):
        image_id = stable_image_id(row.get("image_id"), row.get("sample_index", position))
        if image_id not in index_of:
            index_of[image_id] = len(images)
            images.append(row["image"])
        texts.append(row["text"])
        text_to_image.append(index_of[image_id])
    return images, texts, text_to_image


def rows_of_first_images(dataset: AnyDataset, max_images: int) -> list[dict[str, Any]]:
    """Usable rows until ``max_images`` distinct images are covered (all their captions included)."""
    rows: list[dict[str, Any]] = []
    seen: set[Any] = set()
    for position, row in enumerate(take_rows(dataset, None)):
        if row.get("image") is None:
            continue  # a bad sample skipped by the dataset
        image_id = stable_image_id(row.get("image_id"), row.get("sample_index", position))
        if image_id not in seen and len(seen) == max_images:
            break
        seen.add(image_id)
        rows.append(row)
    if not rows:
        raise ValueError("The evaluation dataset holds no usable image.")
    return rows


class RetrievalEvaluation:
    """Pre-training and retrieval tasks: recall@1/5/10 by ITC and after re-ranking each query's top ``k``
    (``--eval-rerank-k``) with the model's own ITM score (``score_matrices``)."""

    synthetic_task = "retrieval"
    optional_columns = ("image_id",)

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        dataset = self.load_dataset(spec, split, job, max_samples=job.eval_max_samples)
        images, texts, text_to_image = retrieval_gallery(rows_of_first_images(dataset, job.eval_max_samples))
        return itm_retrieval_metrics(
            model, processor, images, texts, text_to_image, k=job.eval_rerank_k, batch_size=batch_size
        )


class RetrievalTask(RetrievalEvaluation):
    """Retrieval fine-tuning: ITC with image-id positives (in-batch and queued) and ITM."""

    name = "retrieval"
    collator_class = RetrievalCollator
    alpha_warmup_epochs = 1.0


# --------------------------------------------------------------------------------------------------------- VQA


class QuestionAnsweringTask(abc.ABC):
    """VQA: questions in ``text``, weighted answers; evaluated by ranking the processor's ``answer_list``
    (``rank_answers``); on synthetic-shapes the synthetic answers are the candidates."""

    name = "vqa"
    synthetic_task = "vqa"
    text_column_candidates = ("question", "text")
    optional_columns = ("answer", "answers")
    collator_class = QuestionAnsweringCollator

    def collator_options(self, model: nn.Module, processor: Any, seed: int) -> dict[str, Any]:
        return {"answer_key": self.optional_columns}

    def adapt_processor(self, processor: Any, model: nn.Module, job: JobArguments) -> Any:
        """The synthetic dataset's candidate answers when the processor has none (other datasets: the answers of
        the evaluated split, see :meth:`evaluate`)."""
        processor = super().adapt_processor(processor, model, job)
        if processor.answer_list is None and resolve_dataset_spec(job.dataset).kind == "synthetic":
            processor.answer_list = list(VQA_ANSWERS)
        return processor

    @abc.abstractmethod
    def scored_answers(self, value: Any, index: int) -> str | list[str]:
        """The ground truth a prediction is scored against (see :func:`~hf_vlp.evaluation.vqa.answer_score`)."""

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        """Accuracy of the top-ranked candidate of ``processor.answer_list`` (VQA score against answer lists);
        without an answer list, the distinct answers of the evaluated rows are the candidates."""
        rows = self.usable_rows(spec, split, job)
        answers = [
            self.scored_answers(first_present(row, self.optional_columns), row.get("sample_index", position))
            for position, row in enumerate(rows)
        ]
        answer_list = processor.answer_list
        if answer_list is None:
            as_lists = ([truth] if isinstance(truth, str) else truth for truth in answers)
            answer_list = sorted({answer for truth in as_lists for answer in truth})
            logger.warning("The processor has no answer_list; ranking the %d distinct answers of the evaluated rows.",
                           len(answer_list))
        return vqa_accuracy(
            model, processor, [row["image"] for row in rows], [row["text"] for row in rows], answers, answer_list,
            batch_size=batch_size,
        )


# ------------------------------------------------------------------------------------------- classification


class ClassificationEvaluation:
    """Image-text classification (NLVR2, SNLI-VE): accuracy of the un-augmented collator's batches against the
    model's ``id2label`` classes."""

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        rows = self.usable_rows(spec, split, job)
        collate = self.collator(model, processor, job, seed=0, train=False)
        names = [model.config.id2label[index] for index in range(len(model.config.id2label))]
        return classification_accuracy(model, collate, rows, len(names), batch_size, class_names=names)


class VisualReasoningTask(ClassificationEvaluation):
    """NLVR2: is the statement true of the image pair? Not flipped: the statements use "left"/"right" for the
    order of the two images as well."""

    name = "nlvr2"
    synthetic_task = "nlvr"
    image_column = None  # the first Image column
    synthetic_image_column = "image_left"
    text_column_candidates = ("statement", "sentence", "text")
    optional_columns = ("image_right", "right_image", "nlvr_label")
    horizontal_flip = "none"
    collator_class = VisualReasoningCollator

    def collator_options(self, model: nn.Module, processor: Any, seed: int) -> dict[str, Any]:
        return {"second_image_key": ("image_right", "right_image"), "label_key": "nlvr_label"}


__all__ = [
    "ClassificationEvaluation",
    "FusionTask",
    "QuestionAnsweringTask",
    "RetrievalEvaluation",
    "RetrievalTask",
    "VisualReasoningTask",
    "retrieval_gallery",
    "rows_of_first_images",
]
