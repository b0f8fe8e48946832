"""Running registered tasks the way ``hf-vlp train ARCH --task TASK`` does, for the ALBEF and BLIP task tests.

Imported as ``tests.training.task_runs`` (the repository-root ``conftest.py`` puts the root on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import TrainingArguments

from hf_vlp.training.job import JobArguments
from hf_vlp.training.recipes import get_recipe
from hf_vlp.training.runner import train


def recipe_job(architecture: str, task: str, **overrides) -> JobArguments:
    """The job of ``hf-vlp train ARCH --task TASK`` with the recipe's job defaults, then ``overrides``."""
    return JobArguments(task=task, **{**get_recipe(architecture, task).job_defaults, **overrides})


def recipe_training_args(architecture: str, task: str, output_dir, **overrides) -> TrainingArguments:
    """The recipe's Trainer defaults on the CPU, without checkpoints or progress bars, then ``overrides``."""
    settings = {
        **get_recipe(architecture, task).training_defaults,
        "output_dir": str(output_dir),
        "save_strategy": "no",
        "disable_tqdm": True,
        "use_cpu": True,
        **overrides,
    }
    return TrainingArguments(**settings)


def chance_mean_recall(metrics: dict[str, float]) -> float:
    """Mean of recall@1/5/10 of a random ranking over the gallery's images."""
    images = round(1 / metrics["retrieval_chance_r1"])
    return sum(min(k, images) / images for k in (1, 5, 10)) / 3


def pretraining_run(architecture: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The tiny recipe's pre-training run (defaults as ``hf-vlp train ARCH --task pretrain``): its output directory
    and metrics."""
    output = tmp_path_factory.mktemp(f"{architecture}-pretrain")
    job, args = recipe_job(architecture, "pretrain"), recipe_training_args(architecture, "pretrain", output)
    return output, train(architecture, job, args)


def fine_tuning_run(architecture: str, task: str, pretrained: Path, output_dir: Path) -> dict[str, float]:
    """The metrics after fine-tuning ``task`` from the pre-training run's directory with the recipe's defaults."""
    job = recipe_job(architecture, task, from_pretrained=str(pretrained))
    return train(architecture, job, recipe_training_args(architecture, task, output_dir))["after"]
