"""ViLT's tasks for ``hf-vlp train vilt --task pretrain|vqa|nlvr2|retrieval``.

Each starts from the tiny recipe model or from ``--from-pretrained DIR``: a saved ViLT of any head (every head keeps
the encoder under ``vilt.*``), e.g. a pre-trained one, which feeds every task as the original's ``load_path`` does.
Heads the directory lacks start fresh (the VQA classifier), or from what it holds as the original initialises them:
NLVR2's second-image modality row from the image row, retrieval's ``rank_output`` from the ITM head's match row. There
is no tower initialisation (``--vision-init``): ViLT's transformer is a ViT whose text embeddings are learnt from
scratch, so a converted ViLT (``conversion/``) is the way to start from the released weights.

- ``pretrain``: MLM (whole-word masking) + ITM (half the batch with another image of the batch) + 0.1 x WPA
  (:class:`~hf_vlp.training.collators.ViltPretrainingCollator`); at most ``max_image_length`` patches per image
  (recipe ``task_options``: 200). Evaluated by zero-shot retrieval (ITM match logit over every image-text pair of the
  gallery, ``itm_*`` recalls) and the ITM / MLM accuracy of the evaluation rows.
- ``vqa``: classification over the answer vocabulary with soft scores (BCE x answers). The vocabulary is the training
  split's answers (each question's most frequent answer, kept from ``min_answer_count`` questions on, in order of first
  appearance: the original's ``vqa_dict``) and is stored in the model config (``id2label``/``label2id``/
  ``num_labels``) before training; a model that already has one (a saved VQA model) keeps it. The classifier trains at
  10 x the learning rate (``Recipe.lr_multipliers``). Evaluated by the VQA accuracy of the arg-max answer.
- ``nlvr2``: the pair method (the statement encoded with each image); accuracy.
- ``retrieval``: each image with its caption and ``texts_per_image - 1`` negative captions of the batch, cross-entropy
  over ``rank_output`` (the ITM head frozen, as the original); evaluated by exhaustive retrieval (``itm_*`` recalls,
  every pair scored).

Augmentation (``--augment``): ``paper`` is the original's, RandAugment(2, 9) on the training images of the fine-tuning
tasks and none in pre-training; ``auto`` (the default) is ``paper`` on real data and ``none`` on ``synthetic-shapes``,
whose colours, counts and positions RandAugment's solarize/posterize and 30-px translations change; ``flip`` mirrors
images with "left"/"right" exchanged in the text (not in the original; never for NLVR2). Fine-tuning and evaluation
use every patch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ...evaluation.classification import classification_accuracy
from ...evaluation.embeddings import _batches, eval_mode, model_device
from ...evaluation.itm_retrieval import itm_retrieval_metrics
from ...models.vilt import (
    VlpViltConfig,
    VlpViltForImageTextRetrieval,
    VlpViltForMaskedLM,
    VlpViltForPretraining,
    VlpViltForQuestionAnswering,
    VlpViltForVisualReasoning,
    VlpViltImageProcessor,
    VlpViltProcessor,
)
from ..vilt_collators import (
    ViltPretrainingCollator,
    ViltRetrievalCollator,
    ViltVisualReasoningCollator,
)
from ..data import ImageTransform, resolve_dataset_spec
from ..job import JobArguments
from ..recipes import Recipe, get_recipe
from ..transforms import vilt_train_transform
from .base import register_task, saved_model_class
from .classifier_vqa import ClassifierVqaTaskMixin, label_settings
from .fusion import FusionTask, RetrievalEvaluation, VisualReasoningTask, retrieval_gallery, rows_of_first_images
from .fusion_models import bert_tokenizer, load_processor

logger = logging.getLogger(__name__)

VILT_ARCHITECTURE_PREFIX = "VlpVilt"
NLVR2_LABELS = {0: "False", 1: "True"}


# ------------------------------------------------------------------------------------------------- building


def vilt_processor(tokenizer: PreTrainedTokenizerBase, config: VlpViltConfig, max_length: int) -> VlpViltProcessor:
    """ViLT's processor for ``config``: shorter side ``image_size``, longer side at most 1333/800 of it, sides floored
    to multiples of the patch size; text padded to ``max_length`` tokens (the original's 40)."""
    image_processor = VlpViltImageProcessor(size={"shortest_edge": config.image_size}, size_divisor=config.patch_size)
    return VlpViltProcessor(image_processor, tokenizer, max_length=min(max_length, config.max_position_embeddings))


def tiny_vilt_config(
    recipe: Recipe, tokenizer: PreTrainedTokenizerBase, job: JobArguments, **settings: Any
) -> VlpViltConfig:
    """The recipe's tiny ViLT sized to the tokenizer (vocabulary, special ids) and ``--image-size``, with
    ``settings`` (labels, ...) on top."""
    values = dict(recipe.tiny_config)
    if job.image_size:
        values["image_size"] = job.image_size
    values.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        mask_token_id=tokenizer.mask_token_id,
        max_position_embeddings=max(values.get("max_position_embeddings", 0), recipe.context_length),
        **settings,
    )
    return VlpViltConfig(**values)


# --------------------------------------------------------------------------------------------------- tasks


class ViltTask(FusionTask):
    """What every ViLT task shares: building (tiny / saved ViLT), patch sampling, augmentation, callbacks."""

    architecture = "vilt"
    image_column = "image"
    # fine-tuning: RandAugment(2, 9) with --augment paper; pre-training: none
    rand_augment = True

    # ------------------------------------------------------------------------------------------------ model

    def build(self, job: JobArguments) -> tuple[nn.Module, Any]:
        if job.preset:
            raise ValueError("--preset selects a released CLIP size; ViLT starts from the tiny recipe or from "
                             "--from-pretrained (a saved or converted ViLT).")
        if job.vision_init or job.text_init:
            raise ValueError("--vision-init/--text-init: ViLT has no separate towers (its text embeddings are learnt "
                             "from scratch over a ViT); start from the tiny recipe or from --from-pretrained (a saved "
                             "or converted ViLT).")
        if job.queue_size is not None:
            raise ValueError(f"--queue-size: vilt --task {self.name} has no feature queues; drop it.")
        if job.from_pretrained:
            self.check_source(job.from_pretrained)
            model = self.from_saved(job.from_pretrained, job)
            processor = load_processor(job.from_pretrained)
            if job.image_size and job.image_size != model.config.image_size:
                raise ValueError(f"--image-size {job.image_size}: the saved model works at {model.config.image_size} "
                                 "px; drop --image-size.")
        else:
            tokenizer = bert_tokenizer(job)
            model = self.model_classes[0](tiny_vilt_config(self.recipe, tokenizer, job, **self.tiny_settings(job)))
            processor = vilt_processor(tokenizer, model.config, self.recipe.context_length)
        # patch sampling of this task (pre-training 200, fine-tuning all), saved with the model
        model.config.max_image_length = self.recipe.task_options.get("max_image_length", -1)
        return model, self.adapt_processor(processor, model, job)

    def tiny_settings(self, job: JobArguments) -> dict[str, Any]:
        """Config fields of the tiny model proper to this task (labels); a two-label placeholder by default (the VQA
        vocabulary is set when a VQA model is built)."""
        return {"num_labels": 2}

    def check_source(self, directory: str) -> str:
        """The class that saved ``directory``; an error unless it is a ViLT (any head: they share ``vilt.*``)."""
        saved = saved_model_class(directory)
        if not saved.startswith(VILT_ARCHITECTURE_PREFIX):
            raise ValueError(f"{directory} holds a {saved}; vilt --task {self.name} starts from a saved ViLT "
                             f"({', '.join(cls.__name__ for cls in ALL_VILT_CLASSES)}).")
        return saved

    def from_saved(self, directory: str, job: JobArguments, **config_changes: Any) -> nn.Module:
        """The task model from a saved ViLT directory; the weights it lacks (another head's) are initialised, and so
        is a head of another task saved under the same name (the VQA and NLVR2 ``classifier``s), and logged."""
        cls = self.model_classes[0]
        saved = saved_model_class(directory)
        config = VlpViltConfig.from_pretrained(directory)
        for name, value in config_changes.items():
            setattr(config, name, value)
        model, info = cls.from_pretrained(
            directory, config=config, dtype=torch.float32, output_loading_info=True,
            ignore_mismatched_sizes=saved != cls.__name__,
        )
        fresh = [*info["missing_keys"], *(entry[0] for entry in info.get("mismatched_keys", []))]
        if fresh:
            heads = sorted({key.split(".")[0] for key in fresh})
            logger.info("%s holds a %s: the %s of %s start from their initialisation.", directory, saved,
                        ", ".join(heads), cls.__name__)
        return model

    # ------------------------------------------------------------------------------------------------- data

    def augmentation(self, job: JobArguments, train: bool) -> str:
        """``paper`` (RandAugment(2, 9) in fine-tuning, none in pre-training), ``flip`` or ``none``; ``auto`` is
        ``paper``, but ``none`` on synthetic-shapes, whose captions RandAugment's colour and position changes break."""
        if not train or job.no_augment:
            return "none"
        if job.augment != "auto":
            return job.augment
        return "none" if resolve_dataset_spec(job.dataset).kind == "synthetic" else "paper"

    def train_transform(self, image_size: int) -> ImageTransform | None:
        """ViLT's RandAugment(2, 9) before the processor's resize (fine-tuning tasks only)."""
        return vilt_train_transform() if self.rand_augment else None

    def model_image_size(self, model: nn.Module) -> int:
        return model.config.image_size

    def collator_settings(
        self, model: nn.Module, job: JobArguments, seed: int, bad_samples: Any, train: bool
    ) -> dict[str, Any]:
        """The shared settings, flipping only with ``--augment flip`` (the original never flips)."""
        settings = super().collator_settings(model, job, seed, bad_samples, train)
        if self.augmentation(job, train) != "flip":
            settings["horizontal_flip"] = "none"
        return settings


# --------------------------------------------------------------------------------------------- pre-training


class ViltPretrainTask(RetrievalEvaluation, ViltTask):
    """ViLT pre-training: whole-word MLM + ITM + word-patch alignment."""

    name = "pretrain"
    recipe = get_recipe("vilt", "pretrain")
    model_classes = (VlpViltForPretraining, VlpViltForMaskedLM)
    collator_class = ViltPretrainingCollator
    rand_augment = False

    def collator_options(self, model: nn.Module, processor: Any, seed: int) -> dict[str, Any]:
        config = model.config
        return {
            "vocab_size": config.vocab_size,
            "mlm_probability": config.mlm_probability,
            "whole_word_masking": config.whole_word_masking,
            "count_padding_as_words": bool(self.recipe.task_options.get("count_padding_as_words", False)),
            "seed": seed,
        }

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        """Zero-shot retrieval (the ITM match logit of every image-text pair: ``itm_*`` recalls and
        ``retrieval_chance_r1``) and, on the same rows collated as in training (no augmentation, fixed seed),
        ``itm_accuracy`` and ``mlm_accuracy`` (of the masked tokens). An MLM-only model (``VlpViltForMaskedLM``) has no
        ITM head: its ``mlm_accuracy`` only."""
        dataset = self.load_dataset(spec, split, job, max_samples=job.eval_max_samples)
        rows = rows_of_first_images(dataset, job.eval_max_samples)
        metrics: dict[str, float] = {}
        if isinstance(model, VlpViltForPretraining):
            images, texts, text_to_image = retrieval_gallery(rows)
            metrics |= itm_retrieval_metrics(model, processor, images, texts, text_to_image, batch_size=batch_size)
        return metrics | self.pretraining_accuracy(model, processor, job, rows, batch_size)

    def pretraining_accuracy(
        self, model: nn.Module, processor: Any, job: JobArguments, rows: Sequence[dict[str, Any]], batch_size: int
    ) -> dict[str, float]:
        """``itm_accuracy`` and ``mlm_accuracy`` of ``rows`` collated as in training (without augmentation)."""
        collate = self.collator(model, processor, job, seed=0, train=False)
        device = model_device(model)
        pretraining = isinstance(model, VlpViltForPretraining)
        itm_right = itm_total = mlm_right = mlm_total = 0
        with eval_mode(model), torch.no_grad():
            for batch in _batches(list(rows), batch_size):
                inputs = {key: value.to(device) for key, value in collate(batch).items()}
                if pretraining:
                    outputs = model(**inputs)
                    itm_right += int((outputs.itm_logits.argmax(-1) == inputs["itm_labels"]).sum())
                    itm_total += inputs["itm_labels"].numel()
                    mlm_logits = outputs.mlm_logits
                else:  # MLM alone: the masked captions with their own images
                    mlm_logits = model(
                        inputs["mlm_input_ids"], inputs["attention_mask"], pixel_values=inputs["pixel_values"],
                        pixel_mask=inputs.get("pixel_mask"),
                    ).logits
                masked = inputs["labels"] != -100
                mlm_right += int((mlm_logits.argmax(-1)[masked] == inputs["labels"][masked]).sum())
                mlm_total += int(masked.sum())
        metrics = {"mlm_accuracy": mlm_right / max(mlm_total, 1)}
        if pretraining:
            metrics["itm_accuracy"] = itm_right / max(itm_total, 1)
        return metrics


# ------------------------------------------------------------------------------------------------ retrieval


class ViltRetrievalTask(RetrievalEvaluation, ViltTask):
    """ViLT retrieval fine-tuning: ``rank_output`` over each image's caption and negative captions."""

    name = "retrieval"
    recipe = get_recipe("vilt", "retrieval")
    model_classes = (VlpViltForImageTextRetrieval,)
    collator_class = ViltRetrievalCollator

    def collator_options(self, model: nn.Module, processor: Any, seed: int) -> dict[str, Any]:
        return {"texts_per_image": int(self.recipe.task_options.get("texts_per_image", 16)), "seed": seed}


# ---------------------------------------------------------------------------------------------------------- VQA


class ViltVqaTask(ClassifierVqaTaskMixin, ViltTask):
    """ViLT VQA: multi-label classification over the answer vocabulary with soft scores."""

    recipe = get_recipe("vilt", "vqa")
    model_classes = (VlpViltForQuestionAnswering,)
    vqa_model_class = VlpViltForQuestionAnswering

    def tiny_settings(self, job: JobArguments) -> dict[str, Any]:
        return self.answer_settings(job)


# -------------------------------------------------------------------------------------------------------- NLVR2


class ViltNlvr2Task(VisualReasoningTask, ViltTask):
    """ViLT NLVR2 by the pair method: is the statement true of the image pair?"""

    recipe = get_recipe("vilt", "nlvr2")
    model_classes = (VlpViltForVisualReasoning,)
    collator_class = ViltVisualReasoningCollator

    def tiny_settings(self, job: JobArguments) -> dict[str, Any]:
        return label_settings(NLVR2_LABELS)

    def from_saved(self, directory: str, job: JobArguments, **config_changes: Any) -> nn.Module:
        return super().from_saved(directory, job, **label_settings(NLVR2_LABELS), **config_changes)

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        """``accuracy``, ``chance``, ``majority_baseline`` and per-class accuracy (``accuracy_False``/``_True``)."""
        rows = self.usable_rows(spec, split, job)
        collate = self.collator(model, processor, job, seed=0, train=False)
        names = [NLVR2_LABELS[index] for index in sorted(NLVR2_LABELS)]
        return classification_accuracy(model, collate, rows, len(names), batch_size, class_names=names)


ALL_VILT_CLASSES = (
    VlpViltForPretraining,
    VlpViltForMaskedLM,
    VlpViltForQuestionAnswering,
    VlpViltForVisualReasoning,
    VlpViltForImageTextRetrieval,
)

register_task(ViltPretrainTask(), default=True)
for _task in (ViltVqaTask(), ViltNlvr2Task(), ViltRetrievalTask()):
    register_task(_task)
