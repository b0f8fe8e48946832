"""VLMo's tasks for ``hf-vlp train vlmo --stage image|text|image-text --task pretrain|vqa|nlvr2|retrieval``.

VLMo pre-trains its multiway transformer stage by stage (the original's README and ``run.py``); ``--stage`` picks the
stage of ``--task pretrain`` (each stage is also a task of its own, ``--task pretrain-image`` / ``pretrain-text``):

- ``--stage image`` (``pretrain-image``): stage 1 is a BEiT (masked image modelling on ImageNet-22K), which the
  original downloads instead of training. It needs ``--vision-init BEIT_DIR`` (a transformers BEiT sized like the
  model), builds the VLMo (tiny recipe, ``--preset`` or ``--from-pretrained``), puts the BEiT's patch embedding,
  attention, layer scale, FFN (as the V-FFN) and relative positions into it
  (:func:`~hf_vlp.utils.tower_init.load_vlmo_from_beit`) and saves it: 0 training steps.
- ``--stage text`` (``pretrain-text``): stage 2, text-only MLM (whole-word masking) of a
  :class:`~hf_vlp.models.vlmo.VlpVlmoForMaskedLM` on the dataset's captions (their images are never decoded) with
  everything frozen but what ``run.py`` trains: the text and modality embeddings, every block's L-FFN
  (``mlp.text`` + ``norm2.text``), the MLM head, the relative-position table and the final norm. The model has no
  VL-FFN yet (the original sets ``vlffn_start_layer_index`` to the depth). Evaluated by the held-out masked-token
  accuracy against chance and the most frequent masked token.
- ``--stage image-text`` (``pretrain``, the default): stage 3, :class:`~hf_vlp.models.vlmo.VlpVlmoForPretraining`
  (ITC twice + ITM on global hard negatives + 0.25 whole-word MLM), everything trainable. From a stage-2 (or stage-1)
  directory the VL-FFN of the top blocks, the ITC projections and the ITM head start fresh (logged). Evaluated by
  zero-shot retrieval (``itc_*``: the dual encoder; ``itm_*``: its top ``--eval-rerank-k`` re-ranked by ITM) and the
  ITM / MLM accuracy of the evaluation pairs.
- ``--task vqa|nlvr2|retrieval`` (``--stage fine``): fine-tuning. VQA and NLVR2 as ViLT's tasks (answer vocabulary
  in ``id2label``, soft scores; image pairs), the VQA classifier at 20 x the learning rate (VLMo's ``lr_mult``);
  retrieval fine-tunes the dual encoder with ITC and is evaluated by its recalls.

Every task starts from the tiny recipe, ``--preset base|large|base_plus`` or ``--from-pretrained DIR`` (any saved
VLMo: every head keeps the model under ``vlmo.*``); with ``--from-pretrained``, ``--image-size`` fine-tunes at another
resolution than pre-training, as VLMo fine-tunes at 384/480 px after 224 (the relative positions are interpolated).
Augmentation (``--augment``): ``paper`` is the original's RandomResizedCrop(scale=(0.5, 1)) + flip + RandAugment(2, 7)
on training images; ``auto`` (the default) is ``paper`` on real data and ``none`` on ``synthetic-shapes``, whose
colours, sizes and positions its answers depend on.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainingArguments, set_seed

from ...evaluation.embeddings import _batches, eval_mode, model_device
from ...evaluation.itm_retrieval import itm_retrieval_metrics
from ...integrations.model_card import render_model_card
from ...integrations.provenance import training_sources
from ...models.vlmo import (
    VlpVlmoConfig,
    VlpVlmoForImageTextRetrieval,
    VlpVlmoForMaskedLM,
    VlpVlmoForPretraining,
    VlpVlmoForQuestionAnswering,
    VlpVlmoForVisualReasoning,
    VlpVlmoImageProcessor,
    VlpVlmoProcessor,
)
from ..collators import ContrastiveCollator, ImageTextCollator, stable_image_id
from ..data import AnyDataset, BadSampleCounter, take_rows
from ..job import JobArguments
from ..recipes import get_recipe
from ..transforms import FINETUNE_CROP_SCALE, albef_train_transform
from ..vilt_collators import ViltVisualReasoningCollator
from ..vlmo_collators import VlmoPretrainingCollator, VlmoTextMlmCollator
from .base import register_task, saved_model_class
from .fusion import FusionTask, RetrievalEvaluation, VisualReasoningTask, retrieval_gallery, rows_of_first_images
from .fusion_models import bert_tokenizer, load_processor
from .classifier_vqa import ClassifierVqaTaskMixin, label_settings
from .vilt import NLVR2_LABELS

logger = logging.getLogger(__name__)

VLMO_ARCHITECTURE_PREFIX = "VlpVlmo"
# --stage of the pre-training tasks -> the task training it
PRETRAINING_STAGES = {"image": "pretrain-image", "text": "pretrain-text", "image-text": "pretrain"}
IMAGE_STAGE_NOTE = (
    "stage 1 trains nothing (0 steps): VLMo's image experts are a BEiT pre-trained on ImageNet-22K, which the "
    "original loads rather than trains"
)

# (group, pattern) of VLMo's parameters: the first pattern found in a parameter's name names its group
PARAMETER_GROUPS: tuple[tuple[str, str], ...] = (
    ("text embeddings", r"(^|\.)text_embeddings\."),
    ("modality embeddings", r"(^|\.)modality_embeddings\."),
    ("image embeddings", r"(^|\.)image_embeddings\."),
    ("relative positions", r"(^|\.)relative_position_bias\."),
    ("attention", r"\.attn\."),
    ("norm1", r"\.norm1\."),
    ("layer scale", r"\.layer_scale[12]$"),
    ("L-FFN", r"\.(mlp|norm2)\.text\."),
    ("V-FFN", r"\.(mlp|norm2)\.image\."),
    ("VL-FFN", r"\.(mlp|norm2)\.vl\."),
    ("final norm", r"^vlmo\.norm\."),
    ("pooler", r"(^|\.)pooler\."),
    ("ITC projections", r"(^|\.)((image|text)_projection\.|logit_scale$)"),
    ("VL-FFN ITC projections", r"(^|\.)(vl_(image|text)_projection\.|logit_vl_scale$)"),
    ("ITM head", r"(^|\.)itm_head\."),
    ("MLM head", r"(^|\.)mlm_head\."),
    ("classifier", r"(^|\.)classifier\."),
    ("second-image modality row", r"(^|\.)second_image_modality_embedding$"),
)
# what the original's run.py trains in the text-only stage (everything else is frozen)
TEXT_STAGE_TRAINABLE = frozenset(
    ("text embeddings", "modality embeddings", "L-FFN", "MLM head", "relative positions", "final norm")
)


# ------------------------------------------------------------------------------------------------- helpers


def announce(message: str) -> None:
    """Log ``message`` and print it from the main process (the command line shows no INFO logs)."""
    logger.info(message)
    if os.environ.get("RANK", "0") == "0":
        print(message, flush=True)


def parameter_group(name: str) -> str:
    """The group (:data:`PARAMETER_GROUPS`) of a VLMo parameter name, ``"other"`` when none matches."""
    for group, pattern in PARAMETER_GROUPS:
        if re.search(pattern, name):
            return group
    return "other"


def _group_order(group: str) -> int:
    names = [name for name, _ in PARAMETER_GROUPS]
    return names.index(group) if group in names else len(names)


def parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """Parameters per group, ``{"trainable": {group: count}, "frozen": {group: count}}`` in the groups' order."""
    counts: dict[str, Counter] = {"trainable": Counter(), "frozen": Counter()}
    for name, parameter in model.named_parameters():
        counts["trainable" if parameter.requires_grad else "frozen"][parameter_group(name)] += parameter.numel()
    return {side: dict(sorted(found.items(), key=lambda item: _group_order(item[0]))) for side, found in counts.items()}


def _amount(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.1f}k" if count >= 1e3 else str(count)


def describe_counts(counts: dict[str, dict[str, int]]) -> str:
    """``trainable: text embeddings 10.6k, ... (total); frozen: attention 49.2k, ... (total)``."""
    parts = []
    for side, groups in counts.items():
        listed = ", ".join(f"{group} {_amount(count)}" for group, count in groups.items()) or "none"
        parts.append(f"{side}: {listed} ({_amount(sum(groups.values()))} in all)")
    return "; ".join(parts)


def describe_groups(names: Sequence[str]) -> str:
    """The groups of parameter ``names`` with their blocks, e.g. ``VL-FFN (blocks 2-3), ITM head``."""
    blocks: dict[str, set[int]] = {}
    for name in names:
        found = re.search(r"\.layers\.(\d+)\.", name)
        blocks.setdefault(parameter_group(name), set()).update([int(found.group(1))] if found else [])
    return ", ".join(
        group + (f" (blocks {min(layers)}-{max(layers)})" if layers else "")
        for group, layers in sorted(blocks.items(), key=lambda item: _group_order(item[0]))
    )


def freeze_for_text_stage(model: nn.Module) -> None:
    """Freeze everything the original's text-only stage leaves as it is: attention, ``norm1``, layer scale, V-FFN,
    VL-FFN, image embeddings, pooler and the heads other than MLM; the :data:`TEXT_STAGE_TRAINABLE` groups train."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(parameter_group(name) in TEXT_STAGE_TRAINABLE)


def released_vl_ffn_start(num_layers: int) -> int:
    """Where the image-text stage puts the VL-FFN of a model saved without one: the top 3 of 24 blocks (VLMo-Large,
    VLMo-Base-plus), else the top 2 (VLMo-Base's 2 of 12, the tiny model's 2 of 4)."""
    return max(num_layers - (3 if num_layers >= 24 else 2), 0)


def vlmo_processor(tokenizer: PreTrainedTokenizerBase, config: VlpVlmoConfig) -> VlpVlmoProcessor:
    """VLMo's processor for ``config``: square ``image_size`` images, text padded to ``max_text_length`` tokens."""
    return VlpVlmoProcessor(VlpVlmoImageProcessor(size=config.image_size), tokenizer, max_length=config.max_text_length)


class ParameterGroupsCallback(TrainerCallback):
    """Adds the trainable and frozen parameters per group to the run's final summary log, hence to
    ``TrainOutput.metrics`` and ``metrics.json``'s ``train`` (``trainable_parameters``, ``frozen_parameters``)."""

    def __init__(self, counts: dict[str, dict[str, int]]):
        self.counts = counts

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs is not None and "train_runtime" in logs:
            logs["trainable_parameters"] = dict(self.counts["trainable"])
            logs["frozen_parameters"] = dict(self.counts["frozen"])


class MaskedTokenTally:
    """Masked-token accuracy over batches, with the accuracy of always predicting the most frequent masked token."""

    def __init__(self) -> None:
        self.right = 0
        self.targets: Counter = Counter()

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        masked = labels != -100
        self.right += int((logits.argmax(-1)[masked] == labels[masked]).sum())
        self.targets.update(labels[masked].tolist())

    def metrics(self) -> dict[str, float]:
        total = max(sum(self.targets.values()), 1)
        majority = self.targets.most_common(1)[0][1] if self.targets else 0
        return {"mlm_accuracy": self.right / total, "mlm_majority_baseline": majority / total}


def _on_device(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}


# --------------------------------------------------------------------------------------------------- tasks


class VlmoTask(FusionTask):
    """What every VLMo task shares: its stage, building (tiny recipe, ``--preset``, saved VLMo), augmentation."""

    architecture = "vlmo"
    stage = "fine"
    builds_vl_ffn = True  # the text-only stage (and the image stage before it) has none, as the original
    paper_transform = staticmethod(albef_train_transform)  # VLMo's RandomAugment(2, 7) is ALBEF's
    crop_scale = FINETUNE_CROP_SCALE  # square_transform_randaug: scale (0.5, 1) in every stage and task

    @property
    def stage_tasks(self) -> dict[str, str]:
        """``--stage`` -> the task training it, for :func:`~hf_vlp.training.tasks.task_for_stage`."""
        return dict(PRETRAINING_STAGES) if self.stage in PRETRAINING_STAGES else {self.stage: self.name}

    # ------------------------------------------------------------------------------------------------ model

    def check_job(self, job: JobArguments) -> None:
        """Refuse what this task cannot start from or run (another stage, towers, queues)."""
        from . import task_for_stage

        if job.stage is not None and task_for_stage(self.architecture, self.name, job.stage) is not self:
            raise ValueError(f"vlmo --task {self.name} trains stage {self.stage}, not --stage {job.stage}: run --task "
                             f"{self.stage_tasks[job.stage]} (`hf-vlp train vlmo --stage {job.stage}` picks it).")
        if job.vision_init and self.stage != "image":
            raise ValueError("--vision-init/--text-init: VLMo starts from a BEiT in --stage image only (--vision-init "
                             "BEIT_DIR); other stages start from the tiny recipe, --preset or --from-pretrained.")
        if job.queue_size is not None:
            raise ValueError(f"--queue-size: vlmo --task {self.name} has no feature queues; drop it.")
        if job.preset and job.from_pretrained:
            raise ValueError("--preset builds a VLMo from scratch; drop it with --from-pretrained.")

    def build(self, job: JobArguments) -> tuple[nn.Module, Any]:
        self.check_job(job)
        if not job.from_pretrained:
            tokenizer = bert_tokenizer(job)
            model = self.model_classes[0](self.new_config(tokenizer, job))
            return model, vlmo_processor(tokenizer, model.config)
        self.check_source(job.from_pretrained)
        model = self.from_saved(job.from_pretrained, job)
        processor = load_processor(job.from_pretrained)
        if job.image_size and job.image_size != model.config.image_size:
            processor.image_processor.size = {"height": job.image_size, "width": job.image_size}
            announce(f"--image-size {job.image_size}: {job.from_pretrained} was trained at {model.config.image_size} "
                     f"px; its relative positions are interpolated to the {job.image_size // model.config.patch_size}"
                     f"-patch grid (VLMo fine-tunes at 384/480 px after 224-px pre-training).")
        return model, processor

    def new_config(self, tokenizer: PreTrainedTokenizerBase, job: JobArguments) -> VlpVlmoConfig:
        """The tiny recipe model (or the released size ``--preset``) sized to the tokenizer and ``--image-size``, with
        the task's :meth:`config_settings`."""
        settings: dict[str, Any] = dict(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            mask_token_id=tokenizer.mask_token_id,
            **self.config_settings(job),
        )
        if job.image_size:
            settings["image_size"] = job.image_size
        if job.preset:
            config = VlpVlmoConfig.from_preset(job.preset, **settings)
        else:
            config = VlpVlmoConfig(**{**self.recipe.tiny_config, **settings})
        if not self.builds_vl_ffn:
            config.vl_ffn_start_layer = config.num_hidden_layers
        return config

    def config_settings(self, job: JobArguments) -> dict[str, Any]:
        """Config fields proper to this task (labels); a two-label placeholder by default."""
        return {"num_labels": 2}

    def check_source(self, directory: str) -> str:
        """The class that saved ``directory``; an error unless it is a VLMo (any head: they share ``vlmo.*``)."""
        saved = saved_model_class(directory)
        if not saved.startswith(VLMO_ARCHITECTURE_PREFIX):
            raise ValueError(f"{directory} holds a {saved}; vlmo --task {self.name} starts from a saved VLMo "
                             f"({', '.join(cls.__name__ for cls in ALL_VLMO_CLASSES)}).")
        return saved

    def saved_config_changes(self, config: VlpVlmoConfig) -> dict[str, Any]:
        """Changes to a saved model's config before this task loads it (none by default)."""
        return {}

    def from_saved(self, directory: str, job: JobArguments, **config_changes: Any) -> nn.Module:
        """The task model from a saved VLMo directory; what it lacks (another head's weights, the VL-FFN of a
        text-stage model) or holds in another shape (another task's classifier) starts from its initialisation,
        and is said."""
        cls = self.model_classes[0]
        saved = saved_model_class(directory)
        config = VlpVlmoConfig.from_pretrained(directory)
        for name, value in {**self.saved_config_changes(config), **config_changes}.items():
            setattr(config, name, value)
        model, info = cls.from_pretrained(
            directory, config=config, dtype=torch.float32, output_loading_info=True,
            ignore_mismatched_sizes=saved != cls.__name__,
        )
        fresh = [*info["missing_keys"], *(entry[0] for entry in info.get("mismatched_keys", []))]
        if fresh:
            announce(f"{directory} holds a {saved}; {cls.__name__} initialises what it lacks: {describe_groups(fresh)}.")
        return model

    # ------------------------------------------------------------------------------------------------- data

    def augmentation(self, job: JobArguments, train: bool) -> str:
        """``paper``, ``flip`` or ``none``; ``auto`` is ``paper``, but ``none`` on synthetic-shapes, whose answers
        and captions depend on the colours, sizes and positions that a crop or RandAugment changes."""
        augment = super().augmentation(job, train)
        return "none" if augment == "flip" and job.augment == "auto" else augment


# ------------------------------------------------------------------------------------- stage 1: image (BEiT)


class VlmoImageStageTask(VlmoTask):
    """``--stage image``: the image experts from a BEiT, nothing trained (see :meth:`run_job`)."""

    name = "pretrain-image"
    stage = "image"
    builds_vl_ffn = False
    recipe = get_recipe("vlmo", "pretrain-image")
    model_classes = (VlpVlmoForMaskedLM,)  # what the text stage trains next

    def check_job(self, job: JobArguments) -> None:
        super().check_job(job)
        if not job.vision_init:
            raise ValueError(
                "--stage image needs --vision-init BEIT_DIR: VLMo's first stage is a BEiT (masked image modelling on "
                "ImageNet-22K), which the original loads instead of training. Pass a transformers BEiT directory "
                "sized like the model (e.g. microsoft/beit-base-patch16-224-pt22k-ft22k saved with save_pretrained, "
                "with --preset base)."
            )

    def initialise(self, job: JobArguments) -> tuple[nn.Module, Any, Any]:
        """The model and processor with the BEiT's weights in, and the loader's report (announced)."""
        from ...utils.tower_init import load_vlmo_from_beit

        model, processor = super().build(job)
        report = load_vlmo_from_beit(model.vlmo, job.vision_init)
        announce(report.summary())
        return model, processor, report

    def build(self, job: JobArguments) -> tuple[nn.Module, Any]:
        return self.initialise(job)[:2]

    @staticmethod
    def nothing_to_train() -> ValueError:
        return ValueError(f"vlmo --stage image has no data and no metrics: {IMAGE_STAGE_NOTE}. Run it with `hf-vlp "
                          "train vlmo --stage image --vision-init BEIT_DIR` (run_job), which saves the model as it is.")

    def load_dataset(self, spec: str, split: str, job: JobArguments, bad_samples: BadSampleCounter | None = None,
                     max_samples: int | None = None) -> AnyDataset:
        raise self.nothing_to_train()

    def evaluate(self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str,
                 batch_size: int) -> dict[str, float]:
        raise self.nothing_to_train()

    def run_job(self, job: JobArguments, args: TrainingArguments) -> dict[str, Any]:
        """Stage 1 as the released code runs it: no training. The model gets the BEiT's image experts and is saved
        with its processor, a model card and ``metrics.json`` (0 steps, what the loader copied) in ``--output-dir``."""
        from ..runner import _prepare_output_dir, launched_processes, quiet_run

        if launched_processes() > 1:
            raise ValueError("vlmo --stage image trains nothing: run it as one process (no torchrun / accelerate).")
        output = Path(args.output_dir)
        with quiet_run():
            _prepare_output_dir(args, job, None)
            set_seed(args.seed)
            model, processor, report = self.initialise(job)
            model.save_pretrained(output)
            processor.save_pretrained(output)
            metrics = {
                "architecture": self.architecture,
                "task": self.name,
                "stage": self.stage,
                "train": {"global_step": 0, "note": IMAGE_STAGE_NOTE},
                "beit": {"source": job.vision_init, "copied": len(report.copied), "interpolated": len(report.interpolated),
                         "dropped": len(report.dropped), "left_as_initialised": len(report.not_initialised)},
            }
            (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
            into = f" into `{job.from_pretrained}`" if job.from_pretrained else ""
            provenance = (f"Made with `hf-vlp train vlmo --stage image` from the BEiT `{job.vision_init}`{into}: "
                          f"{IMAGE_STAGE_NOTE}. Its patch embedding, attention, layer scale, FFN (the V-FFN) and "
                          "relative positions were copied in.")
            card = render_model_card(model, provenance=provenance, model_name=output.name, license=job.license,
                                     sources=training_sources(job.from_pretrained, job.vision_init))
            card.save(output / "README.md")
        print(f"hf-vlp train vlmo --stage image: {IMAGE_STAGE_NOTE}.\nsaved model, processor, README.md, metrics.json "
              f"to {output}", flush=True)
        return metrics


# ---------------------------------------------------------------------------------------- stage 2: text only


class VlmoTextStageTask(VlmoTask):
    """``--stage text``: text-only MLM of the text experts, the rest frozen."""

    name = "pretrain-text"
    stage = "text"
    builds_vl_ffn = False
    recipe = get_recipe("vlmo", "pretrain-text")
    model_classes = (VlpVlmoForMaskedLM,)
    synthetic_task = "retrieval"  # five caption variants per image: more text than one caption each
    collator_class = VlmoTextMlmCollator

    def build(self, job: JobArguments) -> tuple[nn.Module, Any]:
        model, processor = super().build(job)
        freeze_for_text_stage(model)
        announce(f"vlmo --stage text trains the text experts only (the original's run.py): "
                 f"{describe_counts(parameter_counts(model))}")
        return model, processor

    def load_dataset(self, spec: str, split: str, job: JobArguments, bad_samples: BadSampleCounter | None = None,
                     max_samples: int | None = None) -> AnyDataset:
        """The captions alone: a map-style dataset loses its image column before anything decodes it (a streamed
        one still decodes its rows; the collator reads only their text)."""
        dataset = super().load_dataset(spec, split, job, bad_samples, max_samples)
        if isinstance(dataset, datasets.Dataset):
            return dataset.with_format(None).remove_columns("image")
        return dataset

    def collator_options(self, model: nn.Module, processor: Any, seed: int) -> dict[str, Any]:
        config = model.config
        return {"vocab_size": config.vocab_size, "mlm_probability": config.mlm_probability,
                "whole_word_masking": config.whole_word_masking, "seed": seed}

    def callbacks(self, model: nn.Module, collator: ImageTextCollator) -> list[TrainerCallback]:
        return [*super().callbacks(model, collator), ParameterGroupsCallback(parameter_counts(model))]

    def evaluate(self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str,
                 batch_size: int) -> dict[str, float]:
        """``mlm_accuracy`` of the held-out captions masked as in training (fixed seed), ``mlm_majority_baseline``
        (always the most frequent masked token) and ``mlm_chance`` (one over the vocabulary)."""
        rows = list(take_rows(self.load_dataset(spec, split, job, max_samples=job.eval_max_samples)))
        collate = self.collator(model, processor, job, seed=0, train=False)
        device, tally = model_device(model), MaskedTokenTally()
        with eval_mode(model), torch.no_grad():
            for batch in _batches(rows, batch_size):
                inputs = _on_device(collate(batch), device)
                tally.add(model(inputs["input_ids"], inputs["attention_mask"]).logits, inputs["labels"])
        return {**tally.metrics(), "mlm_chance": 1.0 / model.config.vocab_size}


# ---------------------------------------------------------------------------------------- stage 3: image-text


class VlmoPretrainTask(VlmoTask):
    """``--stage image-text``: ITC (dual encoder + VL-FFN path) + ITM on global hard negatives + 0.25 MLM."""

    name = "pretrain"
    stage = "image-text"
    recipe = get_recipe("vlmo", "pretrain")
    model_classes = (VlpVlmoForPretraining,)
    synthetic_task = "retrieval"
    optional_columns = ("image_id",)
    collator_class = VlmoPretrainingCollator

    def saved_config_changes(self, config: VlpVlmoConfig) -> dict[str, Any]:
        """A text-stage model has no VL-FFN: it gets one in the top blocks, as the original's third stage."""
        if config.vl_ffn_start_layer < config.num_hidden_layers:
            return {}
        return {"vl_ffn_start_layer": released_vl_ffn_start(config.num_hidden_layers)}

    def collator_options(self, model: nn.Module, processor: Any, seed: int) -> dict[str, Any]:
        config = model.config
        return {"vocab_size": config.vocab_size, "mlm_probability": config.mlm_probability,
                "whole_word_masking": config.whole_word_masking, "seed": seed}

    def evaluate(self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str,
                 batch_size: int) -> dict[str, float]:
        """Zero-shot retrieval over the first ``--eval-max-samples`` images and all their captions (``itc_*``: the
        dual encoder, ``itm_*``: re-ranked by ITM; ``retrieval_chance_r1``) and, on one caption per image collated
        as in training (no augmentation, fixed seed), ``itm_accuracy`` (positives and both hard negatives:
        ``itm_majority_baseline`` = 2/3) and ``mlm_accuracy`` with ``mlm_majority_baseline``."""
        rows = rows_of_first_images(self.load_dataset(spec, split, job, max_samples=job.eval_max_samples),
                                    job.eval_max_samples)
        images, texts, text_to_image = retrieval_gallery(rows)
        metrics = itm_retrieval_metrics(model, processor, images, texts, text_to_image, k=job.eval_rerank_k,
                                        batch_size=batch_size)
        firsts: dict[int, dict[str, Any]] = {}
        for position, row in enumerate(rows):
            firsts.setdefault(stable_image_id(row.get("image_id"), row.get("sample_index", position)), row)
        return metrics | self.pretraining_accuracy(model, processor, job, list(firsts.values()), batch_size)

    def pretraining_accuracy(self, model: nn.Module, processor: Any, job: JobArguments,
                             rows: Sequence[dict[str, Any]], batch_size: int) -> dict[str, float]:
        """ITM and MLM accuracy of ``rows`` (distinct images) in batches of at least two (ITM needs a negative)."""
        collate = self.collator(model, processor, job, seed=0, train=False)
        device, tally = model_device(model), MaskedTokenTally()
        generator = torch.Generator(device=device).manual_seed(0)
        itm_right = itm_total = 0
        with eval_mode(model), torch.no_grad():
            for batch in _batches(list(rows), batch_size):
                if len(batch) < 2:
                    continue
                outputs = model(**_on_device(collate(batch), device), generator=generator)
                itm_right += int((outputs.itm_logits.argmax(-1) == outputs.itm_labels).sum())
                itm_total += outputs.itm_labels.numel()
                tally.add(outputs.mlm_logits, outputs.mlm_labels)
        return {"itm_accuracy": itm_right / max(itm_total, 1), "itm_majority_baseline": 2 / 3, **tally.metrics()}


# --------------------------------------------------------------------------------------------- fine-tuning


class VlmoVqaTask(ClassifierVqaTaskMixin, VlmoTask):
    """VLMo VQA: classification over the answer vocabulary with soft scores on VLMo's fused ``[CLS]`` (ViLT's task,
    :mod:`~hf_vlp.training.tasks.classifier_vqa`); the classifier at 20 x the learning rate."""

    recipe = get_recipe("vlmo", "vqa")
    model_classes = (VlpVlmoForQuestionAnswering,)
    vqa_model_class = VlpVlmoForQuestionAnswering

    def config_settings(self, job: JobArguments) -> dict[str, Any]:
        return self.answer_settings(job)


class VlmoNlvr2Task(VisualReasoningTask, VlmoTask):
    """VLMo NLVR2 by the pair method: the statement fused with each image, the classifier on both pooled vectors."""

    recipe = get_recipe("vlmo", "nlvr2")
    model_classes = (VlpVlmoForVisualReasoning,)
    collator_class = ViltVisualReasoningCollator

    def config_settings(self, job: JobArguments) -> dict[str, Any]:
        return label_settings(NLVR2_LABELS)

    def from_saved(self, directory: str, job: JobArguments, **config_changes: Any) -> nn.Module:
        return super().from_saved(directory, job, **label_settings(NLVR2_LABELS), **config_changes)


class VlmoRetrievalTask(RetrievalEvaluation, VlmoTask):
    """VLMo retrieval: the dual encoder fine-tuned with ITC over the batch (plus ITM on hard negatives with
    ``config.retrieval_itm_weight > 0``); evaluated by its recalls (``itc_*``) and ITM re-ranking (``itm_*``)."""

    name = "retrieval"
    recipe = get_recipe("vlmo", "retrieval")
    model_classes = (VlpVlmoForImageTextRetrieval,)
    collator_class = ContrastiveCollator

    def collator_options(self, model: nn.Module, processor: Any, seed: int) -> dict[str, Any]:
        return {"max_length": getattr(processor, "max_length", None)}


ALL_VLMO_CLASSES = (
    VlpVlmoForPretraining,
    VlpVlmoForMaskedLM,
    VlpVlmoForQuestionAnswering,
    VlpVlmoForVisualReasoning,
    VlpVlmoForImageTextRetrieval,
)

# the text stage before the image stage: `hf-vlp evaluate` of a saved VlpVlmoForMaskedLM finds the text stage first
register_task(VlmoPretrainTask(), default=True)
for _task in (VlmoTextStageTask(), VlmoImageStageTask(), VlmoVqaTask(), VlmoNlvr2Task(), VlmoRetrievalTask()):
    register_task(_task)
