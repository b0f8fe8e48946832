"""Registered (architecture, task) pairs of ``hf-vlp train``; see :mod:`hf_vlp.training.tasks.base`.

Importing this package registers the built-in tasks. An architecture's module registers its tasks when imported;
add it to ``_BUILTIN_MODULES`` (or import it before calling the runner) to make ``hf-vlp train`` see it.
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

_BUILTIN_MODULES = ("clip", "albef", "blip", "vilt")

for _module in _BUILTIN_MODULES:
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "TrainingTask",
    "architectures",
    "get_task",
    "register_task",
    "saved_model_class",
    "task_for_model_class",
    "task_names",
]
