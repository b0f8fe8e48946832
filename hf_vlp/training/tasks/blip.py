"""BLIP's tasks for ``hf-vlp train blip --task pretrain|retrieval|caption|vqa|nlvr2``.

Each starts from the tiny recipe model, from ``--vision-init``/``--text-init`` (transformers ViT/DeiT + BERT through
``from_pretrained_towers``), or from ``--from-pretrained DIR`` (the task's own saved model, or a pre-trained BLIP,
which feeds every task; see :mod:`.blip_models`). Pre-training and retrieval are momentum models:
``MomentumCallback`` runs the EMA step and ramps the distillation weight over two epochs (pre-training, as
``pretrain.py``) or one (retrieval). Captioning, VQA and NLVR2 have no momentum model, as in the original.

Augmentation (``--augment paper``, the default on real data) is BLIP's (``data/__init__.py``): RandomResizedCrop with
scale (0.2, 1) for pre-training and (0.5, 1) for fine-tuning, bicubic, horizontal flip, then RandomAugment(2, 5) -
ALBEF's operations at magnitude 5. As for ALBEF, the flip exchanges "left" and "right" in the text (captions,
questions and answers) so that positional captions stay true of the mirrored image. NLVR2 is neither flipped nor, as
BLIP's NLVR2 loader does, trained with the image order swapped and "left"/"right" exchanged: both break statements
that use "left"/"right" for positions inside an image. On ``synthetic-shapes`` the default is the flip alone
(``--augment flip``): its captions count, size and place the shapes, which a crop cuts away or enlarges.

Evaluation: pre-training and retrieval report recall@1/5/10 by ITC and after re-ranking each query's top ``k``
(``--eval-rerank-k``) with BLIP's score, ITM match logit + cosine; captioning BLEU-1..4 and CIDEr of the captions the
model's generation config decodes (the original's COCO decoding unless changed: beam 3, max_length 20, min_length 5)
against every reference caption of the image; VQA the accuracy of the best-ranked candidate of the processor's
``answer_list`` (``rank_answers``); NLVR2 accuracy.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback
from transformers.utils import GENERATION_CONFIG_NAME

from ...evaluation.captioning import evaluate_captioner
from ...evaluation.classification import classification_accuracy
from ...evaluation.itm_retrieval import ItmScorer, itm_retrieval_metrics
from ...evaluation.vqa import vqa_accuracy
from ...models.blip import (
    VlpBlipForConditionalGeneration,
    VlpBlipForImageTextRetrieval,
    VlpBlipForPretraining,
    VlpBlipForQuestionAnswering,
    VlpBlipForVisualReasoning,
)
from ...models.blip.modeling_blip import with_first_token
from ...models.blip.modeling_blip_reasoning import BLIP_ENCODER_ARCHITECTURES
from ...synthetic import VQA_ANSWERS
from ..augment import FINETUNE_CROP_SCALE, PRETRAIN_CROP_SCALE, ComposePil, RandAugmentPil
from ..callbacks import CollatorEpochCallback, MomentumCallback
from ..collators import (
    IGNORE_INDEX,
    ContrastiveCollator,
    ImageTextCollator,
    QuestionAnsweringCollator,
    RetrievalCollator,
    VisualReasoningCollator,
    stable_image_id,
    weighted_answers,
)
from ..data import AnyDataset, RandomResizedCropPil, resolve_dataset_spec, take_rows
from ..job import JobArguments
from ..recipes import get_recipe
from .base import TrainingTask, register_task, saved_model_class
from .blip_models import (
    blip_processor,
    blip_tokenizer,
    load_processor,
    load_task_model,
    question_answering_from_saved,
    question_answering_from_towers,
    tiny_blip_config,
    tower_blip_config,
    visual_reasoning_from_saved,
    visual_reasoning_from_towers,
)

logger = logging.getLogger(__name__)

# BLIP's RandomAugment: ALBEF's operations (in BLIP's order) at magnitude 5
BLIP_RAND_AUGMENT_OPS = ("Identity", "AutoContrast", "Brightness", "Sharpness", "Equalize",
                         "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")  # fmt: skip
BLIP_RAND_AUGMENT_MAGNITUDE = 5


def blip_train_transform(image_size: int, scale: tuple[float, float] = FINETUNE_CROP_SCALE) -> ComposePil:
    """BLIP's training transform without the flip (the collator flips): bicubic RandomResizedCrop to ``image_size``
    with ``scale``, then RandomAugment(2, 5)."""
    rand_augment = RandAugmentPil(2, BLIP_RAND_AUGMENT_MAGNITUDE, BLIP_RAND_AUGMENT_OPS)
    return ComposePil([RandomResizedCropPil(image_size, scale=scale), rand_augment])


class BlipCaptionCollator(ImageTextCollator):
    """Captioner batches as ``BLIP_Decoder`` trains: ``prompt + pre_caption(caption)`` (the processor's
    ``add_prompt``) as ``input_ids``/``attention_mask`` with ``labels`` = the ids with ``[PAD]`` and the first
    ``processor.prompt_length`` positions (``[DEC]`` + prompt) set to -100, so the loss covers the caption only."""

    def __init__(self, processor: Any, **kwargs: Any):
        if not hasattr(processor, "prompt_length"):
            raise TypeError(f"{type(processor).__name__} has no caption prompt; pass a VlpBlipProcessor.")
        kwargs.setdefault("max_length", getattr(processor, "max_length", None))
        super().__init__(processor, **kwargs)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collect(rows)
        encoded = self.encode(batch.images, batch.texts, add_prompt=True)
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, IGNORE_INDEX)
        labels[:, : self.processor.prompt_length] = IGNORE_INDEX
        return {**encoded, "labels": labels}


class BlipTask(TrainingTask):
    """What every BLIP task shares: building (tiny / towers / saved), augmentation, callbacks."""

    architecture = "blip"
    image_column = "image"
    crop_scale: tuple[float, float] = FINETUNE_CROP_SCALE
    horizontal_flip = "swap-left-right"
    alpha_warmup_epochs: float | None = None  # momentum tasks: the distillation ramp in epochs
    # other BLIP heads whose saved directories this task starts from (--from-pretrained), besides its own
    source_classes: tuple[str, ...] = ("VlpBlipForPretraining",)

    # ------------------------------------------------------------------------------------------------ model

    def build(self, job: JobArguments) -> tuple[nn.Module, Any]:
        if job.preset:
            raise ValueError("--preset selects a released CLIP size; BLIP starts from the tiny recipe, from "
                             "--vision-init/--text-init or from --from-pretrained.")
        if job.queue_size is not None and self.alpha_warmup_epochs is None:
            raise ValueError(f"--queue-size: blip --task {self.name} has no momentum queues (only pretrain and "
                             "retrieval do); drop it.")
        if job.from_pretrained:
            self.check_source(job.from_pretrained)
            model = self.from_saved(job.from_pretrained, job)
            processor = load_processor(job.from_pretrained)
            self._check_saved_settings(model, job)
        else:
            tokenizer = blip_tokenizer(job)
            if job.vision_init:
                model = self.from_towers(tower_blip_config(self.recipe, tokenizer, job), job.vision_init, job.text_init)
            else:
                model = self.model_classes[0](tiny_blip_config(self.recipe, tokenizer, job))
            processor = blip_processor(tokenizer, model.config.vision_config.image_size, self.recipe.context_length)
        return model, self.adapt_processor(processor, model, job)

    def _check_saved_settings(self, model: nn.Module, job: JobArguments) -> None:
        size = model.config.vision_config.image_size
        if job.image_size and job.image_size != size:
            raise ValueError(f"--image-size {job.image_size}: the saved model works at {size} px; drop --image-size.")
        if job.queue_size is not None and job.queue_size != model.config.queue_size:
            raise ValueError(
                f"--queue-size {job.queue_size}: the saved model's queues hold {model.config.queue_size} entries "
                "and are kept; drop --queue-size (or start from --vision-init/--text-init)."
            )

    def check_source(self, directory: str) -> str:
        """The class that saved ``directory``; an error unless this task starts from it."""
        saved = saved_model_class(directory)
        accepted = list(dict.fromkeys([*(cls.__name__ for cls in self.model_classes), *self.source_classes]))
        if saved not in accepted:
            raise ValueError(f"{directory} holds a {saved}; blip --task {self.name} starts from one of {accepted}.")
        return saved

    def from_saved(self, directory: str, job: JobArguments) -> nn.Module:
        """The task model from a saved model directory (this task's, or a pre-trained BLIP)."""
        return load_task_model(self.model_classes[0], directory)

    def from_towers(self, config: Any, vision: str, text: str) -> nn.Module:
        """The task model with towers from a transformers ViT/DeiT and BERT (cross-attention initialised fresh)."""
        model, reports = self.model_classes[0].from_pretrained_towers(config, vision=vision, text=text)
        _log_tower_reports(reports)
        return model

    def adapt_processor(self, processor: Any, model: nn.Module, job: JobArguments) -> Any:
        """The task's text length (the original's per task), within the model's positions."""
        processor.max_length = min(self.recipe.context_length, model.config.text_config.max_position_embeddings)
        return processor

    # ------------------------------------------------------------------------------------------------- data

    def augmentation(self, job: JobArguments, train: bool) -> str:
        """The augmentation in effect: ``paper``, ``flip`` or ``none`` (``--augment``; ``auto`` is ``paper``, but
        ``flip`` on synthetic-shapes, whose captions count, size and place the shapes that a crop cuts or enlarges)."""
        if not train or job.no_augment:
            return "none"
        if job.augment != "auto":
            return job.augment
        return "flip" if resolve_dataset_spec(job.dataset).kind == "synthetic" else "paper"

    def collator_settings(self, model: nn.Module, job: JobArguments, seed: int, bad_samples: Any, train: bool) -> dict:
        augment = self.augmentation(job, train)
        size = model.config.vision_config.image_size
        return {
            "image_transform": blip_train_transform(size, self.crop_scale) if augment == "paper" else None,
            "skip_bad_samples": job.skip_bad_samples,
            "bad_samples": bad_samples,
            "augmentation_seed": seed,
            "horizontal_flip": self.horizontal_flip if augment != "none" else "none",
        }

    def callbacks(self, model: nn.Module, collator: ImageTextCollator) -> list[TrainerCallback]:
        if self.alpha_warmup_epochs is None:
            return [CollatorEpochCallback(collator)]
        return [MomentumCallback(alpha_warmup_epochs=self.alpha_warmup_epochs), CollatorEpochCallback(collator)]


def _log_tower_reports(reports: dict[str, Any]) -> None:
    for report in reports.values():
        logger.info(report.summary())


def _usable_rows(dataset: AnyDataset, limit: int) -> list[dict[str, Any]]:
    rows = [row for row in take_rows(dataset, limit) if row.get("image") is not None]
    if not rows:
        raise ValueError("The evaluation dataset holds no usable row.")
    return rows


# --------------------------------------------------------------------------------------------- retrieval-style


def blip_itm_scorer(model: nn.Module) -> ItmScorer:
    """BLIP's retrieval scorer for :func:`~hf_vlp.evaluation.itm_retrieval.itm_retrieval_metrics`: ITC on the
    normalised ``vision_proj``/``text_proj`` of the ``[CLS]`` states, re-ranking by the ITM match logit of the
    image-grounded encoder (``[ENC]`` first, re-run from the token ids) PLUS the cosine, as ``train_retrieval.py``.
    Works for any BLIP head holding the encoder role and the contrastive heads (pre-training, retrieval)."""
    needed = ("encode_image", "text_model", "vision_proj", "text_proj", "itm_head")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise TypeError(f"{type(model).__name__} lacks {missing}; pass a BLIP pre-training or retrieval model.")
    enc_token_id = int(model.config.text_config.enc_token_id)

    def text_embeds(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = model.text_model(input_ids, attention_mask, mode="text", return_dict=True).last_hidden_state
        return F.normalize(model.text_proj(states[:, 0]), dim=-1)

    def encode_images(pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = model.encode_image(pixel_values).last_hidden_state
        return states, F.normalize(model.vision_proj(states[:, 0]), dim=-1)

    def encode_texts(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return input_ids, text_embeds(input_ids, attention_mask)  # the fused pass re-reads the ids

    def match_logits(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
        fused = model.text_model(
            with_first_token(input_ids, enc_token_id), attention_mask, encoder_hidden_states=image_states,
            mode="multimodal", return_dict=True,
        ).last_hidden_state
        image_embeds = F.normalize(model.vision_proj(image_states[:, 0]), dim=-1)
        cosine = (image_embeds * text_embeds(input_ids, attention_mask)).sum(-1)
        return model.itm_head(fused[:, 0])[:, 1] + cosine

    return ItmScorer(model, encode_images, encode_texts, match_logits)


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


class BlipRetrievalEvaluation:
    """Evaluation of pre-training and retrieval: recall@1/5/10 by ITC and after BLIP's ITM + cosine re-ranking."""

    synthetic_task = "retrieval"
    optional_columns = ("image_id",)

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        dataset = self.load_dataset(spec, split, job, max_samples=job.eval_max_samples)
        images, texts, text_to_image = retrieval_gallery(rows_of_first_images(dataset, job.eval_max_samples))
        return itm_retrieval_metrics(
            blip_itm_scorer(model), processor, images, texts, text_to_image, k=job.eval_rerank_k, batch_size=batch_size
        )


class BlipPretrainTask(BlipRetrievalEvaluation, BlipTask):
    """BLIP pre-training: ITC with momentum distillation, ITM on hard negatives, captioning LM (label smoothing)."""

    name = "pretrain"
    recipe = get_recipe("blip", "pretrain")
    model_classes = (VlpBlipForPretraining,)
    crop_scale = PRETRAIN_CROP_SCALE
    alpha_warmup_epochs = 2.0

    def collator(self, model, processor, job, seed, bad_samples=None, train=True) -> ImageTextCollator:
        return ContrastiveCollator(
            processor, max_length=processor.max_length, **self.collator_settings(model, job, seed, bad_samples, train)
        )


class BlipRetrievalTask(BlipRetrievalEvaluation, BlipTask):
    """BLIP image-text retrieval fine-tuning: ITC with image-id positives (in-batch and queued) and ITM."""

    name = "retrieval"
    recipe = get_recipe("blip", "retrieval")
    model_classes = (VlpBlipForImageTextRetrieval,)
    source_classes = ("VlpBlipForPretraining", "VlpBlipModel")
    alpha_warmup_epochs = 1.0

    def collator(self, model, processor, job, seed, bad_samples=None, train=True) -> ImageTextCollator:
        return RetrievalCollator(processor, **self.collator_settings(model, job, seed, bad_samples, train))


# --------------------------------------------------------------------------------------------------- captioning


def caption_references(rows: Sequence[dict[str, Any]]) -> tuple[list[Any], list[list[str]]]:
    """Distinct images and each one's reference captions: a ``captions`` list when the rows carry one, else the
    ``text`` of every row sharing the image's ``image_id`` (each row its own image without ids)."""
    images: list[Any] = []
    references: list[list[str]] = []
    index_of: dict[int, int] = {}
    for position, row in enumerate(rows):
        image_id = stable_image_id(row.get("image_id"), row.get("sample_index", position))
        captions = row.get("captions")
        own = list(captions) if isinstance(captions, (list, tuple)) and captions else [row["text"]]
        if image_id in index_of:
            known = references[index_of[image_id]]
            known += [caption for caption in own if caption not in known]
            continue
        index_of[image_id] = len(images)
        images.append(row["image"])
        references.append(own)
    return images, references


class BlipCaptionTask(BlipTask):
    """BLIP image captioning (``BLIP_Decoder``): LM loss on ``"a picture of " + caption`` with the prompt's tokens
    left out of the loss; evaluated by BLEU-4 and CIDEr of beam-searched captions."""

    name = "caption"
    recipe = get_recipe("blip", "caption")
    model_classes = (VlpBlipForConditionalGeneration,)
    synthetic_task = "caption"
    optional_columns = ("captions", "image_id")

    def from_saved(self, directory: str, job: JobArguments) -> nn.Module:
        """The captioner of ``directory``; one without ``generation_config.json`` (a pre-training directory) gets the
        original's COCO decoding instead of the bare config transformers derives from the model config."""
        model = load_task_model(VlpBlipForConditionalGeneration, directory)
        if not (Path(directory) / GENERATION_CONFIG_NAME).is_file():
            model.generation_config = model.default_generation_config()
        return model

    def collator(self, model, processor, job, seed, bad_samples=None, train=True) -> ImageTextCollator:
        return BlipCaptionCollator(processor, **self.collator_settings(model, job, seed, bad_samples, train))

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        """BLEU-1..4 and CIDEr (COCO's scorers) of one caption per image, decoded with the model's generation
        config (the original's COCO decoding by default), against all of the image's reference captions."""
        dataset = self.load_dataset(spec, split, job, max_samples=job.eval_max_samples)
        images, references = caption_references(_usable_rows(dataset, job.eval_max_samples))
        return evaluate_captioner(model, processor, images, references, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------------------- VQA


class BlipVqaTask(BlipTask):
    """BLIP VQA: image-grounded question encoder + answer decoder trained on weighted answers; evaluated by
    ranking the processor's ``answer_list`` (``rank_answers``, the original's ``inference='rank'``)."""

    name = "vqa"
    recipe = get_recipe("blip", "vqa")
    model_classes = (VlpBlipForQuestionAnswering,)
    synthetic_task = "vqa"
    text_column_candidates = ("question", "text")
    optional_columns = ("answer", "answers")

    def from_saved(self, directory: str, job: JobArguments) -> nn.Module:
        return question_answering_from_saved(directory)

    def from_towers(self, config: Any, vision: str, text: str) -> nn.Module:
        model, reports = question_answering_from_towers(config, vision, text)
        _log_tower_reports(reports)
        return model

    def adapt_processor(self, processor: Any, model: nn.Module, job: JobArguments) -> Any:
        """The synthetic dataset's candidate answers when the processor has none (other datasets: the answers of
        the evaluated split, see :meth:`evaluate`)."""
        processor = super().adapt_processor(processor, model, job)
        if processor.answer_list is None and resolve_dataset_spec(job.dataset).kind == "synthetic":
            processor.answer_list = list(VQA_ANSWERS)
        return processor

    def collator(self, model, processor, job, seed, bad_samples=None, train=True) -> ImageTextCollator:
        return QuestionAnsweringCollator(
            processor, answer_key=self.optional_columns, **self.collator_settings(model, job, seed, bad_samples, train)
        )

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        """Accuracy of the top-ranked candidate of ``processor.answer_list`` (VQA score against answer lists);
        without an answer list, the distinct answers of the evaluated rows are the candidates."""
        rows = _usable_rows(self.load_dataset(spec, split, job, max_samples=job.eval_max_samples), job.eval_max_samples)
        answers = []
        for position, row in enumerate(rows):
            value = next((row[key] for key in self.optional_columns if row.get(key) is not None), None)
            answers.append(weighted_answers(value, row.get("sample_index", position))[0])
        answer_list = processor.answer_list
        if answer_list is None:
            answer_list = sorted({answer for row_answers in answers for answer in row_answers})
            logger.warning("The processor has no answer_list; ranking the %d distinct answers of the evaluated rows.",
                           len(answer_list))
        return vqa_accuracy(
            model, processor, [row["image"] for row in rows], [row["text"] for row in rows], answers, answer_list,
            batch_size=batch_size,
        )


# -------------------------------------------------------------------------------------------------------- NLVR2


class BlipNlvr2Task(BlipTask):
    """BLIP NLVR2: is the statement true of the image pair? The encoder cross-attends to both images per layer."""

    name = "nlvr2"
    recipe = get_recipe("blip", "nlvr2")
    model_classes = (VlpBlipForVisualReasoning,)
    source_classes = BLIP_ENCODER_ARCHITECTURES
    synthetic_task = "nlvr"
    image_column = None  # the first Image column (synthetic: image_left)
    text_column_candidates = ("statement", "sentence", "text")
    optional_columns = ("image_right", "right_image", "nlvr_label")
    horizontal_flip = "none"

    def from_saved(self, directory: str, job: JobArguments) -> nn.Module:
        return visual_reasoning_from_saved(directory, image_size=job.image_size)

    def from_towers(self, config: Any, vision: str, text: str) -> nn.Module:
        model, reports = visual_reasoning_from_towers(config, vision, text)
        _log_tower_reports(reports)
        return model

    def load_dataset(self, spec, split, job, bad_samples=None, max_samples=None) -> AnyDataset:
        if resolve_dataset_spec(spec).kind == "synthetic" and not job.image_column:
            job = dataclasses.replace(job, image_column="image_left")
        return super().load_dataset(spec, split, job, bad_samples, max_samples)

    def collator(self, model, processor, job, seed, bad_samples=None, train=True) -> ImageTextCollator:
        return VisualReasoningCollator(
            processor,
            second_image_key=("image_right", "right_image"),
            label_key="nlvr_label",
            **self.collator_settings(model, job, seed, bad_samples, train),
        )

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        rows = _usable_rows(self.load_dataset(spec, split, job, max_samples=job.eval_max_samples), job.eval_max_samples)
        collate = self.collator(model, processor, job, seed=0, train=False)
        names = [model.config.id2label[index] for index in range(len(model.config.id2label))]
        return classification_accuracy(model, collate, rows, len(names), batch_size, class_names=names)


register_task(BlipPretrainTask(), default=True)
for _task in (BlipRetrievalTask(), BlipCaptionTask(), BlipVqaTask(), BlipNlvr2Task()):
    register_task(_task)
