"""Registered (architecture, task) pairs of ``hf-vlp train``; see :mod:`hf_vlp.training.tasks.base`.

Importing this package registers the built-in tasks. An architecture's module registers its tasks when imported;
add it to ``_BUILTIN_MODULES`` (or import it before calling the runner) to make ``hf-vlp train`` see it.
``--stage`` (VLMo's stage-wise pre-training) picks among the tasks of one family: :func:`task_for_stage`.
"""

from __future__ import annotations

import importlib

from .base import (
    TrainingTask,
    architectures,
    get_task,
    register_task,
    saved_model_class,
    task_for_model_class,
    task_names,
)

_BUILTIN_MODULES = ("clip", "albef", "blip", "vilt", "vlmo", "coca")


def task_for_stage(architecture: str, name: str | None = None, stage: str | None = None) -> TrainingTask:
    """The task ``hf-vlp train ARCH [--task NAME] [--stage STAGE]`` runs: NAME's (the default task without one), or
    with ``--stage`` the task of NAME's family training that stage. A task lists its family as ``stage_tasks``
    (stage -> task name), e.g. VLMo's pre-training ``{"image": "pretrain-image", "text": "pretrain-text",
    "image-text": "pretrain"}`` and its VQA ``{"fine": "vqa"}``; a stage outside it is an error naming the task(s)
    that train it."""
    task = get_task(architecture, name)
    if stage is None:
        return task
    stages: dict[str, str] = getattr(task, "stage_tasks", None) or {}
    if stage in stages:
        return get_task(architecture, stages[stage])
    families = [getattr(get_task(architecture, other), "stage_tasks", None) or {} for other in task_names(architecture)]
    trained_by = sorted({family[stage] for family in families if stage in family})
    if not trained_by:
        raise ValueError(f"{architecture} has no training stage {stage!r}; drop --stage.")
    raise ValueError(
        f"--stage {stage} does not apply to {architecture} --task {task.name} (stages: {', '.join(stages)}): "
        f"{architecture} --stage {stage} trains --task {' | '.join(trained_by)}."
    )


for _module in _BUILTIN_MODULES:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "TrainingTask",
    "architectures",
    "get_task",
    "register_task",
    "saved_model_class",
    "task_for_model_class",
    "task_for_stage",
    "task_names",
]
