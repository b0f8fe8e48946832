"""ALBEF's tasks for ``hf-vlp train albef --task pretrain|retrieval|vqa|nlvr2|snli-ve``.

Each starts from the tiny recipe model, from ``--vision-init``/``--text-init`` (transformers ViT/DeiT + BERT, through
``from_pretrained_towers``), or from ``--from-pretrained DIR`` (the task's own saved model, or a pre-trained ALBEF,
which feeds every task). All are momentum models: ``MomentumCallback`` runs the EMA step and ramps the distillation
weight over the first epoch (SNLI-VE: no ramp, ``warm_up: False`` in VE.yaml).

Augmentation (``--augment paper``, the default on real data) is the originals' (RandomResizedCrop with scale (0.2, 1)
for pre-training, (0.5, 1) for fine-tuning, bicubic; horizontal flip; RandAugment(2, 7)) with one change: the flip
exchanges "left" and "right" in the text (captions, questions and answers, hypotheses), so that a caption such as
"a red circle on the left" stays true of the mirrored image; NLVR2 is not flipped at all, since its statements use
"left"/"right" for the order of the two images as well. On ``synthetic-shapes`` the default is the flip alone
(``--augment flip``): its captions count and place the shapes, which a crop can cut away.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from ...evaluation.classification import classification_accuracy
from ...evaluation.itm_retrieval import albef_itm_scorer, itm_retrieval_metrics
from ...evaluation.vqa import vqa_accuracy
from ...models.albef import (
    VlpAlbefForImageTextRetrieval,
    VlpAlbefForMaskedLM,
    VlpAlbefForPretraining,
    VlpAlbefForQuestionAnswering,
    VlpAlbefForVisualEntailment,
    VlpAlbefForVisualReasoning,
)
from ...models.albef.modeling_albef_reasoning import ALBEF_PRETRAINED_ARCHITECTURES
from ...synthetic import VQA_ANSWERS
from ..augment import FINETUNE_CROP_SCALE, PRETRAIN_CROP_SCALE, albef_train_transform
from ..callbacks import CollatorEpochCallback, MomentumCallback
from ..collators import (
    AlbefPretrainingCollator,
    ImageTextCollator,
    QuestionAnsweringCollator,
    RetrievalCollator,
    VisualEntailmentCollator,
    VisualReasoningCollator,
    answer_strings,
    first_present,
    stable_image_id,
)
from ..data import AnyDataset, BadSampleCounter, resolve_dataset_spec, take_rows
from ..job import JobArguments
from ..recipes import get_recipe
from .albef_models import (
    albef_processor,
    albef_tokenizer,
    load_albef_model,
    load_processor,
    question_answering_from_saved,
    tiny_albef_config,
    tower_albef_config,
)
from .base import TrainingTask, register_task, saved_model_class

logger = logging.getLogger(__name__)


class AlbefTask(TrainingTask):
    """What every ALBEF task shares: building (tiny / towers / saved), augmentation, momentum callbacks."""

    architecture = "albef"
    image_column = "image"
    crop_scale: tuple[float, float] = FINETUNE_CROP_SCALE
    horizontal_flip = "swap-left-right"
    alpha_warmup_epochs: float = 1.0

    # ------------------------------------------------------------------------------------------------ model

    def build(self, job: JobArguments) -> tuple[nn.Module, Any]:
        if job.preset:
            raise ValueError("--preset selects a released CLIP size; ALBEF starts from the tiny recipe, from "
                             "--vision-init/--text-init or from --from-pretrained.")
        if job.from_pretrained:
            model = self.from_saved(job.from_pretrained)
            processor = load_processor(job.from_pretrained)
            if job.queue_size is not None and job.queue_size != model.config.queue_size:
                raise ValueError(
                    f"--queue-size {job.queue_size}: the saved model's queues hold {model.config.queue_size} entries "
                    "and are kept; drop --queue-size (or start from --vision-init/--text-init)."
                )
        else:
            tokenizer = albef_tokenizer(job)
            if job.vision_init:
                config = tower_albef_config(self.recipe, tokenizer, job)
                model = self.from_towers(config, job.vision_init, job.text_init)
            else:
                config = tiny_albef_config(self.recipe, tokenizer, job)
                model = self.model_classes[0](config)
            processor = albef_processor(tokenizer, config.vision_config.image_size, self.recipe.context_length)
        return model, self.adapt_processor(processor, job)

    def check_source(self, directory: str) -> str:
        """The class that saved ``directory``; an error unless it is this task's or holds pre-trained ALBEF towers."""
        saved = saved_model_class(directory)
        accepted = {cls.__name__ for cls in self.model_classes} | set(ALBEF_PRETRAINED_ARCHITECTURES)
        if saved not in accepted:
            raise ValueError(
                f"{directory} holds a {saved}; albef --task {self.name} starts from one of {sorted(accepted)}."
            )
        return saved

    def from_saved(self, directory: str) -> nn.Module:
        """The task model from a saved model directory (this task's, or a pre-trained ALBEF)."""
        self.check_source(directory)
        return load_albef_model(self.model_classes[0], directory)

    def from_towers(self, config: Any, vision: str, text: str) -> nn.Module:
        """The task model with towers from a transformers ViT/DeiT and BERT (cross-attention initialised fresh)."""
        model, reports = self.model_classes[0].from_pretrained_towers(config, vision=vision, text=text)
        _log_tower_reports(reports)
        return model

    def adapt_processor(self, processor: Any, job: JobArguments) -> Any:
        """Task-specific processor settings (VQA: the candidate answers)."""
        return processor

    # ------------------------------------------------------------------------------------------------- data

    def augmentation(self, job: JobArguments, train: bool) -> str:
        """The augmentation in effect: ``paper``, ``flip`` or ``none`` (see ``JobArguments.augment``)."""
        if not train or job.no_augment:
            return "none"
        if job.augment != "auto":
            return job.augment
        return "flip" if resolve_dataset_spec(job.dataset).kind == "synthetic" else "paper"

    def collator_settings(self, model: nn.Module, job: JobArguments, seed: int, bad_samples: Any, train: bool) -> dict:
        augment = self.augmentation(job, train)
        size = model.config.vision_config.image_size
        return {
            "image_transform": albef_train_transform(size, self.crop_scale) if augment == "paper" else None,
            "skip_bad_samples": job.skip_bad_samples,
            "bad_samples": bad_samples,
            "augmentation_seed": seed,
            "horizontal_flip": self.horizontal_flip if augment != "none" else "none",
        }

    def callbacks(self, model: nn.Module, collator: ImageTextCollator) -> list[TrainerCallback]:
        return [MomentumCallback(alpha_warmup_epochs=self.alpha_warmup_epochs), CollatorEpochCallback(collator)]


def _log_tower_reports(reports: dict[str, Any]) -> None:
    for report in reports.values():
        logger.info(report.summary())


# --------------------------------------------------------------------------------------------- retrieval-style


def retrieval_gallery(rows: Sequence[dict[str, Any]], max_images: int) -> tuple[list[Any], list[str], list[int]]:
    """Distinct images (first row of each ``image_id``; rows without one are their own image), every caption of
    the first ``max_images`` images, and each caption's image index."""
    images: list[Any] = []
    texts: list[str] = []
    text_to_image: list[int] = []
    index_of: dict[int, int] = {}
    for position, row in enumerate(rows):
        if row.get("image") is None:
            continue  # a bad sample skipped by the dataset
        image_id = stable_image_id(row.get("image_id"), row.get("sample_index", position))
        if image_id not in index_of:
            if len(images) == max_images:
                continue
            index_of[image_id] = len(images)
            images.append(row["image"])
        texts.append(row["text"])
        text_to_image.append(index_of[image_id])
    if not images:
        raise ValueError("The evaluation dataset holds no usable image.")
    return images, texts, text_to_image


class AlbefRetrievalEvaluation:
    """Evaluation of pre-training and retrieval: recall@1/5/10 by ITC and after ITM re-ranking."""

    synthetic_task = "retrieval"
    optional_columns = ("image_id",)

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        dataset = self.load_dataset(spec, split, job, max_samples=job.eval_max_samples)
        rows = _rows_for_images(dataset, job.eval_max_samples)
        images, texts, text_to_image = retrieval_gallery(rows, job.eval_max_samples)
        return itm_retrieval_metrics(
            albef_itm_scorer(model), processor, images, texts, text_to_image, k=job.eval_rerank_k, batch_size=batch_size
        )


def _rows_for_images(dataset: AnyDataset, max_images: int) -> list[dict[str, Any]]:
    """Rows until ``max_images`` distinct images are covered (all their captions included)."""
    rows: list[dict[str, Any]] = []
    seen: set[Any] = set()
    for row in take_rows(dataset, None):
        image_id = row.get("image_id", row.get("sample_index"))
        if image_id not in seen and len(seen) == max_images:
            break
        seen.add(image_id)
        rows.append(row)
    return rows


class AlbefPretrainTask(AlbefRetrievalEvaluation, AlbefTask):
    """ALBEF pre-training: ITC with momentum distillation, ITM on hard negatives, distilled MLM."""

    name = "pretrain"
    recipe = get_recipe("albef", "pretrain")
    model_classes = (VlpAlbefForPretraining, VlpAlbefForMaskedLM)
    crop_scale = PRETRAIN_CROP_SCALE

    def collator(
        self,
        model: nn.Module,
        processor: Any,
        job: JobArguments,
        seed: int,
        bad_samples: BadSampleCounter | None = None,
        train: bool = True,
    ) -> ImageTextCollator:
        config = model.config
        return AlbefPretrainingCollator(
            processor,
            vocab_size=config.text_config.vocab_size,
            mlm_probability=config.mlm_probability,
            mlm_seed=seed,
            **self.collator_settings(model, job, seed, bad_samples, train),
        )


class AlbefRetrievalTask(AlbefRetrievalEvaluation, AlbefTask):
    """ALBEF image-text retrieval fine-tuning: ITC with image-id positives (in-batch and queued) and ITM."""

    name = "retrieval"
    recipe = get_recipe("albef", "retrieval")
    model_classes = (VlpAlbefForImageTextRetrieval,)

    def collator(
        self,
        model: nn.Module,
        processor: Any,
        job: JobArguments,
        seed: int,
        bad_samples: BadSampleCounter | None = None,
        train: bool = True,
    ) -> ImageTextCollator:
        return RetrievalCollator(processor, **self.collator_settings(model, job, seed, bad_samples, train))


# ---------------------------------------------------------------------------------------------------------- VQA


class AlbefVqaTask(AlbefTask):
    """ALBEF VQA: answer decoder over the fused question states, weighted answers, momentum distillation;
    evaluated by ranking the processor's ``answer_list`` (``rank_answers``)."""

    name = "vqa"
    recipe = get_recipe("albef", "vqa")
    model_classes = (VlpAlbefForQuestionAnswering,)
    synthetic_task = "vqa"
    text_column_candidates = ("question", "text")
    optional_columns = ("answer", "answers")

    def from_saved(self, directory: str) -> nn.Module:
        self.check_source(directory)
        return question_answering_from_saved(directory)

    def from_towers(self, config: Any, vision: str, text: str) -> nn.Module:
        source, reports = VlpAlbefForMaskedLM.from_pretrained_towers(config, vision=vision, text=text)
        _log_tower_reports(reports)
        return VlpAlbefForQuestionAnswering.from_pretraining(source)

    def adapt_processor(self, processor: Any, job: JobArguments) -> Any:
        """The synthetic answers as the candidate list when training on synthetic-shapes without one (otherwise
        evaluation ranks the distinct answers of the evaluation rows; set ``processor.answer_list`` to fix it)."""
        if processor.answer_list is None and resolve_dataset_spec(job.dataset).kind == "synthetic":
            processor.answer_list = list(VQA_ANSWERS)
        return processor

    def collator(
        self,
        model: nn.Module,
        processor: Any,
        job: JobArguments,
        seed: int,
        bad_samples: BadSampleCounter | None = None,
        train: bool = True,
    ) -> ImageTextCollator:
        return QuestionAnsweringCollator(
            processor, answer_key=self.optional_columns, **self.collator_settings(model, job, seed, bad_samples, train)
        )

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        """Accuracy of the top-ranked candidate of ``processor.answer_list`` (VQA score against answer lists)."""
        rows = [row for row in take_rows(self.load_dataset(spec, split, job, max_samples=job.eval_max_samples),
                                         job.eval_max_samples) if row.get("image") is not None]
        if not rows:
            raise ValueError("The evaluation dataset holds no usable row.")
        answers = [answer_strings(first_present(row, self.optional_columns), index) for index, row in enumerate(rows)]
        answer_list = processor.answer_list or sorted(
            {answer for row_answers in answers for answer in ([row_answers] if isinstance(row_answers, str) else row_answers)}
        )
        return vqa_accuracy(
            model, processor, [row["image"] for row in rows], [row["text"] for row in rows], answers, answer_list,
            batch_size=batch_size,
        )


# ---------------------------------------------------------------------------------------- NLVR2 and SNLI-VE


class AlbefClassificationTask(AlbefTask):
    """What NLVR2 and SNLI-VE share: start from a pre-trained ALBEF with ``from_albef_pretrained``, evaluate
    accuracy with the (un-augmented) collator."""

    def from_saved(self, directory: str) -> nn.Module:
        cls = self.model_classes[0]
        if saved_model_class(directory) in cls.compatible_architectures:
            return cls.from_pretrained(directory, dtype=torch.float32)
        return cls.from_albef_pretrained(directory, dtype=torch.float32)

    def from_towers(self, config: Any, vision: str, text: str) -> nn.Module:
        source, reports = VlpAlbefForMaskedLM.from_pretrained_towers(config, vision=vision, text=text)
        _log_tower_reports(reports)
        return self.model_classes[0].from_albef_pretrained(source)

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        dataset = self.load_dataset(spec, split, job, max_samples=job.eval_max_samples)
        rows = [row for row in take_rows(dataset, job.eval_max_samples) if row.get("image") is not None]
        collate = self.collator(model, processor, job, seed=0, train=False)
        names = [model.config.id2label[index] for index in range(len(model.config.id2label))]
        return classification_accuracy(model, collate, rows, len(names), batch_size, class_names=names)


class AlbefNlvr2Task(AlbefClassificationTask):
    """ALBEF NLVR2: is the statement true of the image pair? (No text-assignment pre-training step here.)"""

    name = "nlvr2"
    recipe = get_recipe("albef", "nlvr2")
    model_classes = (VlpAlbefForVisualReasoning,)
    synthetic_task = "nlvr"
    image_column = None  # the first Image column (synthetic: image_left)
    text_column_candidates = ("statement", "sentence", "text")
    optional_columns = ("image_right", "right_image", "nlvr_label")
    horizontal_flip = "none"

    def load_dataset(
        self,
        spec: str,
        split: str,
        job: JobArguments,
        bad_samples: BadSampleCounter | None = None,
        max_samples: int | None = None,
    ) -> AnyDataset:
        if resolve_dataset_spec(spec).kind == "synthetic" and not job.image_column:
            job = _with_image_column(job, "image_left")
        return super().load_dataset(spec, split, job, bad_samples, max_samples)

    def collator(
        self,
        model: nn.Module,
        processor: Any,
        job: JobArguments,
        seed: int,
        bad_samples: BadSampleCounter | None = None,
        train: bool = True,
    ) -> ImageTextCollator:
        return VisualReasoningCollator(
            processor,
            second_image_key=("image_right", "right_image"),
            label_key="nlvr_label",
            **self.collator_settings(model, job, seed, bad_samples, train),
        )


def _with_image_column(job: JobArguments, column: str) -> JobArguments:
    return dataclasses.replace(job, image_column=column)


class AlbefSnliVeTask(AlbefClassificationTask):
    """ALBEF SNLI-VE: does the image entail, contradict or leave open the hypothesis?"""

    name = "snli-ve"
    recipe = get_recipe("albef", "snli-ve")
    model_classes = (VlpAlbefForVisualEntailment,)
    synthetic_task = "snli-ve"
    text_column_candidates = ("hypothesis", "sentence2", "text")
    optional_columns = ("gold_label",)
    alpha_warmup_epochs = 0.0

    def collator(
        self,
        model: nn.Module,
        processor: Any,
        job: JobArguments,
        seed: int,
        bad_samples: BadSampleCounter | None = None,
        train: bool = True,
    ) -> ImageTextCollator:
        return VisualEntailmentCollator(
            processor,
            label2id=dict(model.config.label2id),
            label_key="gold_label",
            **self.collator_settings(model, job, seed, bad_samples, train),
        )


register_task(AlbefPretrainTask(), default=True)
for _task in (AlbefRetrievalTask(), AlbefVqaTask(), AlbefNlvr2Task(), AlbefSnliVeTask()):
    register_task(_task)
