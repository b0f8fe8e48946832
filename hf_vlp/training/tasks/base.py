"""The per-(architecture, task) registry behind ``hf-vlp train ARCH --task TASK`` and ``hf-vlp evaluate DIR``.

A :class:`TrainingTask` says everything the generic runner needs: how to build the model and processor (tiny
recipe config, preset, ``--from-pretrained``, ``--vision-init``/``--text-init``), which dataset columns it reads
(and which ``synthetic-shapes`` rows it trains on), its collator, its Trainer callbacks and its evaluation. A new
architecture or task is one subclass registered with :func:`register_task`; the runner is not edited::

    class BlipCaptionTask(TrainingTask):
        architecture, name, synthetic_task = "blip", "caption", "caption"
        recipe = get_recipe("blip", "caption")
        model_classes = (VlpBlipForConditionalGeneration,)
        collator_class = BlipCaptionCollator
        def build(self, job): ...
        def train_transform(self, image_size): ...
        def evaluate(self, model, processor, job, spec, split, batch_size): ...

    register_task(BlipCaptionTask())
"""

from __future__ import annotations

import abc
import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoProcessor, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_optimizer import is_optimizer_factory

from ..callbacks import CollatorEpochCallback, LossTermsCallback
from ..checkpoints import check_saved_model_files
from ..collators import ContrastiveCollator, ImageTextCollator
from ..data import (
    AnyDataset,
    BadSampleCounter,
    HeldOutSplit,
    ImageTransform,
    has_split,
    load_image_text_dataset,
    resolve_dataset_spec,
    take_rows,
)
from ..job import JobArguments
from ..recipes import Recipe

class TrainingTask(abc.ABC):
    """One task of one architecture. Subclasses set the class attributes and implement :meth:`build` and
    :meth:`evaluate`; the other methods have defaults that fit most tasks.

    Attributes:
        architecture / name: what ``hf-vlp train ARCH --task NAME`` selects.
        recipe: the task's :class:`~hf_vlp.training.recipes.Recipe` (tiny config, Trainer and job defaults).
        model_classes: saved-model classes this task trains and evaluates (the first is the class it trains);
            ``hf-vlp evaluate DIR`` picks the task whose list holds the directory's ``config.architectures[0]``.
        synthetic_task: which ``synthetic-shapes`` rows (``task=``) the task reads.
        image_column / text_column_candidates: the default image column and the text columns tried in order
            (``--image-column``/``--text-column`` win); ``keep_columns`` must exist, ``optional_columns`` are
            carried along when present. ``synthetic_image_column`` replaces ``image_column`` on synthetic-shapes.
        collator_class: the collator of the task's batches, built by :meth:`collator`.
        horizontal_flip: the collator's flip mode while augmenting (see ``ImageTextCollator``).
    """

    architecture: str
    name: str
    recipe: Recipe
    model_classes: tuple[type, ...] = ()
    synthetic_task: str = "caption"
    image_column: str | None = None
    synthetic_image_column: str | None = None
    text_column_candidates: tuple[str, ...] | None = None
    keep_columns: tuple[str, ...] = ()
    optional_columns: tuple[str, ...] = ()
    collator_class: type[ImageTextCollator] = ContrastiveCollator
    horizontal_flip: str = "none"

    # ------------------------------------------------------------------------------------------------ model

    @abc.abstractmethod
    def build(self, job: JobArguments) -> tuple[nn.Module, Any]:
        """The model and processor to train: from ``job.from_pretrained``, the towers, a preset or the tiny recipe."""

    def load_saved(self, directory: str) -> tuple[nn.Module, Any]:
        """A saved model of this task and its processor, for ``hf-vlp evaluate``."""
        cls = self.model_classes[0]
        for candidate in self.model_classes:
            if candidate.__name__ == saved_model_class(directory):
                cls = candidate
        check_saved_model_files(directory, cls)  # a one-line error for a truncated or mixed-up folder
        return cls.from_pretrained(directory, dtype=torch.float32), AutoProcessor.from_pretrained(directory)

    # ------------------------------------------------------------------------------------------------- data

    def load_dataset(
        self,
        spec: str,
        split: str,
        job: JobArguments,
        bad_samples: BadSampleCounter | None = None,
        max_samples: int | None = None,
    ) -> AnyDataset:
        """``split`` of ``spec`` with this task's columns (``synthetic-shapes`` gets this task's rows; with
        ``max_samples`` only that many are generated). A dataset without the evaluation split gets a held-out slice
        of its training split instead (see :meth:`held_out_split`)."""
        options: dict[str, Any] = {}
        resolved = resolve_dataset_spec(spec)
        hold_out = None if resolved.kind == "synthetic" else self.held_out_split(spec, split, job)
        if hold_out is not None:
            split = job.train_split
        image_column = self.image_column
        if resolved.kind == "synthetic":
            image_column = self.synthetic_image_column or image_column
            asked = resolved.options.get("task", self.synthetic_task)
            if asked != self.synthetic_task:
                raise ValueError(
                    f"{self.architecture} --task {self.name} trains on synthetic-shapes task={self.synthetic_task} "
                    f"rows, but the spec {spec!r} asks for task={asked}; drop task= from the spec."
                )
            options["task"] = self.synthetic_task
            if max_samples is not None:
                options["num_samples"] = min(max_samples, resolved.options.get("num_samples", max_samples))
        return load_image_text_dataset(
            spec,
            split=split,
            image_column=job.image_column or image_column,
            text_column=job.text_column,
            skip_bad_samples=job.skip_bad_samples,
            bad_samples=bad_samples,
            keep_columns=self.keep_columns,
            optional_columns=self.optional_columns,
            text_column_candidates=self.text_column_candidates,
            hold_out=hold_out,
            **options,
        )

    def usable_rows(self, spec: str, split: str, job: JobArguments) -> list[dict[str, Any]]:
        """The first ``--eval-max-samples`` rows of ``split`` whose image decoded."""
        dataset = self.load_dataset(spec, split, job, max_samples=job.eval_max_samples)
        rows = [row for row in take_rows(dataset, job.eval_max_samples) if row.get("image") is not None]
        if not rows:
            raise ValueError("The evaluation dataset holds no usable row.")
        return rows

    @staticmethod
    def held_out_split(spec: str, split: str, job: JobArguments) -> HeldOutSplit | None:
        """The held-out slice to apply when loading ``split`` of ``spec``, or ``None`` to load the split as it is.

        A dataset without ``job.eval_split`` (an imagefolder or captions table with a train split only, webdataset
        shards, a saved single ``Dataset``) is evaluated on a deterministic slice of its ``job.train_split``
        (``ceil(--eval-split-ratio x rows)``, at most ``--eval-max-samples``); when that evaluation comes from the
        training dataset itself (no other ``--eval-dataset``, no ``--skip-eval``) the training set leaves those rows
        out, so the two never overlap. An explicit ``--eval-split`` equal to ``--train-split`` is taken as asked.
        """
        if job.eval_split == job.train_split or split not in (job.train_split, job.eval_split):
            return None
        if split == job.train_split:
            if spec != job.dataset or job.skip_eval or (job.eval_dataset or job.dataset) != job.dataset:
                return None
            part = "train"
        else:
            part = "eval"
        if has_split(spec, job.eval_split):
            return None
        return HeldOutSplit(
            ratio=job.eval_split_ratio,
            max_rows=job.eval_max_samples,
            part=part,
            missing_split=job.eval_split,
        )

    def collator(
        self,
        model: nn.Module,
        processor: Any,
        job: JobArguments,
        seed: int,
        bad_samples: BadSampleCounter | None = None,
        train: bool = True,
    ) -> ImageTextCollator:
        """The collator of training batches (``train``: with augmentation) or of evaluation batches:
        ``collator_class`` with the task's :meth:`collator_options` and the shared :meth:`collator_settings`."""
        return self.collator_class(
            processor,
            **self.collator_options(model, processor, seed),
            **self.collator_settings(model, job, seed, bad_samples, train),
        )

    def collator_options(self, model: nn.Module, processor: Any, seed: int) -> dict[str, Any]:
        """Keyword arguments of ``collator_class`` proper to this task (label columns, MLM settings, ...)."""
        return {}

    def collator_settings(
        self, model: nn.Module, job: JobArguments, seed: int, bad_samples: BadSampleCounter | None, train: bool
    ) -> dict[str, Any]:
        """What every collator takes: the augmentation in effect, bad-sample handling and the augmentation seed."""
        augment = self.augmentation(job, train)
        paper = augment == "paper"
        return {
            "image_transform": self.train_transform(self.model_image_size(model)) if paper else None,
            "skip_bad_samples": job.skip_bad_samples,
            "bad_samples": bad_samples,
            "augmentation_seed": seed,
            "horizontal_flip": self.horizontal_flip if augment != "none" else "none",
        }

    def augmentation(self, job: JobArguments, train: bool) -> str:
        """The augmentation in effect: ``paper`` (:meth:`train_transform`, then the flip) or ``none``
        (evaluation, ``--no-augment``)."""
        return "paper" if train and not job.no_augment else "none"

    def train_transform(self, image_size: int) -> ImageTransform | None:
        """The paper's training transform at ``image_size`` px (none by default)."""
        return None

    def model_image_size(self, model: nn.Module) -> int:
        """The model's input resolution (its vision tower's ``image_size``), for :meth:`train_transform`."""
        config = model.config
        vision = getattr(config, "vision_config", None)
        return vision.image_size if vision is not None else config.image_size

    def optimizer_cls_and_kwargs(self, model: nn.Module, args: TrainingArguments) -> tuple[Any, dict[str, Any]] | None:
        """The Trainer's ``optimizer_cls_and_kwargs``: ``None`` (its own optimizer and parameter groups) unless the
        recipe has ``lr_multipliers``, which need per-module learning rates (:class:`ParameterGroupOptimizer`)."""
        if not self.recipe.lr_multipliers:
            return None
        return functools.partial(ParameterGroupOptimizer, args, dict(self.recipe.lr_multipliers)), {}

    def callbacks(self, model: nn.Module, collator: ImageTextCollator) -> list[TrainerCallback]:
        """Trainer callbacks; by default the collator's epoch (per-epoch augmentation draws) and the logging of the
        model's loss terms (``loss_itc``, ``loss_itm``, ... next to the total)."""
        return [CollatorEpochCallback(collator), LossTermsCallback()]

    # ------------------------------------------------------------------------------------------- evaluation

    @abc.abstractmethod
    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        """Metrics (fractions in [0, 1], chance levels included) of ``model`` on ``split`` of ``spec``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.architecture}/{self.name})"


def lr_multiplier(name: str, multipliers: dict[str, float]) -> float:
    """The learning-rate factor of parameter ``name``: that of the first module path in ``multipliers`` the name
    lies under (``"classifier"`` matches ``classifier.dense.weight`` and ``module.classifier.dense.weight``), else 1."""
    for module, factor in multipliers.items():
        if re.search(rf"(?:^|\.){re.escape(module)}\.", name):
            return float(factor)
    return 1.0


class ParameterGroupOptimizer:
    """An optimizer factory for ``Trainer(optimizer_cls_and_kwargs=...)`` giving some modules a multiple of the
    learning rate (e.g. ViLT's VQA classifier x 10, its ``lr_mult``).

    Called with the model the Trainer optimises, it builds the optimizer ``--optim`` names (with ``--learning-rate``,
    the Adam betas and epsilon) over parameter groups: the Trainer's own split (weight decay except on biases and
    LayerNorm weights, ``Trainer.get_decay_parameter_names``), each further split by :func:`lr_multiplier`, whose
    groups get ``lr = learning_rate x factor``; the schedule then scales every group alike. Frozen parameters are
    left out, as the Trainer does. The group order is fixed (factor, then decay first), so checkpoints resume.
    """

    def __init__(self, args: TrainingArguments, multipliers: dict[str, float]):
        self.args = args
        self.multipliers = multipliers

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        decayed = set(Trainer.get_decay_parameter_names(None, model))
        groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                groups.setdefault((lr_multiplier(name, self.multipliers), name in decayed), []).append(parameter)
        return [
            {
                "params": parameters,
                "weight_decay": self.args.weight_decay if decay else 0.0,
                "lr": self.args.learning_rate * factor,
            }
            for (factor, decay), parameters in sorted(groups.items(), key=lambda item: (item[0][0], not item[0][1]))
        ]

    def __call__(self, model: nn.Module, **_: Any) -> torch.optim.Optimizer:
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        if is_optimizer_factory(optimizer_cls) or {"params", "model", "optimizer_dict"} & set(kwargs):
            raise ValueError(
                f"--optim {self.args.optim} builds its own parameter groups; this task's per-module learning rates "
                f"({self.multipliers}) need a standard optimizer such as --optim adamw_torch."
            )
        return optimizer_cls(self.param_groups(model), **kwargs)


_REGISTRY: dict[str, dict[str, TrainingTask]] = {}
_DEFAULT_TASKS: dict[str, str] = {}


def register_task(task: TrainingTask, default: bool = False) -> TrainingTask:
    """Make ``task`` available to ``hf-vlp train``; ``default`` marks it as the architecture's task when ``--task``
    is not given (the first one registered is the default otherwise). Registering a name again replaces it."""
    if not isinstance(task, TrainingTask):
        raise TypeError(f"register_task takes a TrainingTask instance, got {type(task).__name__}.")
    tasks = _REGISTRY.setdefault(task.architecture, {})
    tasks[task.name] = task
    if default or task.architecture not in _DEFAULT_TASKS:
        _DEFAULT_TASKS[task.architecture] = task.name
    return task


def architectures() -> list[str]:
    """Architectures with at least one registered task."""
    return sorted(_REGISTRY)


def task_names(architecture: str) -> list[str]:
    """The tasks of ``architecture``, default first."""
    _check_architecture(architecture)
    default = _DEFAULT_TASKS[architecture]
    return [default, *(name for name in _REGISTRY[architecture] if name != default)]


def _check_architecture(architecture: str) -> None:
    if architecture not in _REGISTRY:
        raise ValueError(f"No training tasks for architecture {architecture!r}; available: {architectures()}.")


def get_task(architecture: str, name: str | None = None) -> TrainingTask:
    """The registered task (``None``: the architecture's default); unknown names get an error listing the tasks."""
    _check_architecture(architecture)
    name = name or _DEFAULT_TASKS[architecture]
    tasks = _REGISTRY[architecture]
    if name not in tasks:
        raise ValueError(
            f"{architecture} has no task {name!r}; its tasks are: {', '.join(task_names(architecture))}."
        )
    return tasks[name]


def saved_model_class(directory: str | Path) -> str:
    """The class name a saved model directory was written by (``config.json``'s ``architectures[0]``)."""
    config_file = Path(directory) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory} has no config.json; pass a directory written by save_pretrained.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_file} is truncated or not JSON ({error}); save the model again.") from None
    names: Sequence[str] = (config.get("architectures") if isinstance(config, dict) else None) or []
    if not names:
        raise ValueError(f"{config_file} names no model class (no 'architectures' entry); save it with save_pretrained.")
    return names[0]


def task_for_model_class(class_name: str) -> TrainingTask:
    """The task that trains and evaluates saved models of class ``class_name``."""
    for tasks in _REGISTRY.values():
        for task in tasks.values():
            if any(cls.__name__ == class_name for cls in task.model_classes):
                return task
    known = sorted({cls.__name__ for tasks in _REGISTRY.values() for task in tasks.values() for cls in task.model_classes})
    raise ValueError(f"No training task evaluates {class_name} models; known model classes: {known}.")
