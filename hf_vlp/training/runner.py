"""The ``hf-vlp train`` / ``hf-vlp evaluate`` jobs: build or load a model through its registered task, train it with
the stock Trainer, evaluate before and after, and write the model, processor, model card, metrics and plots.

Everything architecture- or task-specific (model, processor, dataset columns, collator, callbacks, evaluation)
comes from the :class:`~hf_vlp.training.tasks.TrainingTask` registered for ``(architecture, --task)``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from ..evaluation.report import format_metrics_table
from ..integrations.model_card import render_model_card
from .data import BadSampleCounter
from .job import JobArguments
from .plots import plot_training
from .tasks import TrainingTask, get_task, saved_model_class, task_for_model_class, task_names

logger = logging.getLogger(__name__)

__all__ = ["JobArguments", "evaluate", "print_report", "train"]


def _resume_path(resume: str | None, output_dir: str) -> str | None:
    if resume in (None, "", "false", "False"):
        return None
    if resume in ("last", "true", "True"):
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise FileNotFoundError(f"--resume-from-checkpoint {resume}: no checkpoint-* folder in {output_dir}")
        return last
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume-from-checkpoint: {resume} is not a checkpoint folder")
    return resume


def train(architecture: str, job: JobArguments, args: TrainingArguments) -> dict[str, Any]:
    """Train ``architecture``'s ``job.task`` with the stock Trainer; returns the metrics also written to
    ``metrics.json``."""
    task = get_task(architecture, job.task)
    resume = _resume_path(args.resume_from_checkpoint, args.output_dir)
    set_seed(args.seed)  # the model is built before the Trainer seeds anything
    model, processor = task.build(job)
    bad_samples = BadSampleCounter()
    train_dataset = task.load_dataset(job.dataset, job.train_split, job, bad_samples)
    collator = task.collator(model, processor, job, args.seed, bad_samples, train=True)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=processor,
        callbacks=task.callbacks(model, collator),
    )
    eval_spec = job.eval_dataset or job.dataset
    is_main = trainer.is_world_process_zero()
    metrics: dict[str, Any] = {
        "architecture": architecture,
        "task": task.name,
        "dataset": job.dataset,
        "eval_dataset": eval_spec,
    }
    eval_batch = args.per_device_eval_batch_size
    if is_main and not job.skip_eval:
        metrics["before"] = task.evaluate(model, processor, job, eval_spec, job.eval_split, eval_batch)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics["train"] = dict(result.metrics)
    metrics["bad_samples"] = bad_samples.count
    trainer.save_model(args.output_dir)
    if not is_main:
        return metrics
    if not job.skip_eval:
        metrics["after"] = task.evaluate(model, processor, job, eval_spec, job.eval_split, eval_batch)
    output = Path(args.output_dir)
    history = trainer.state.log_history
    (output / "metrics.json").write_text(json.dumps({**metrics, "log_history": history}, indent=2))
    plot_training(history, {k: metrics[k] for k in ("before", "after") if k in metrics}, output)
    task_flag = f" --task {task.name}" if len(task_names(architecture)) > 1 else ""
    provenance = (
        f"Trained with `hf-vlp train {architecture}{task_flag}` on `{job.dataset}` for "
        f"{trainer.state.global_step} steps."
    )
    if getattr(model, "model_card_template", None):  # hf_vlp models; a model registered from outside may have none
        card = render_model_card(model, metrics=metrics.get("after"), dataset=eval_spec, provenance=provenance)
        card.save(output / "README.md")
    print_report(metrics, output, bad_samples)
    return metrics


def print_report(metrics: dict[str, Any], output: Path, bad_samples: BadSampleCounter) -> None:
    columns = {name: metrics[name] for name in ("before", "after") if name in metrics}
    if columns:
        print("\n" + format_metrics_table(columns))
    train = metrics.get("train", {})
    print(
        f"\ntrain loss {train.get('train_loss', float('nan')):.4f} in {train.get('train_runtime', 0):.1f}s "
        f"({train.get('train_samples_per_second', 0):.1f} samples/s)"
    )
    if bad_samples.count:
        print(bad_samples.summary())
    print(f"saved model, processor, README.md, metrics.json, loss_curve.png, metrics.png to {output}")


def task_of_saved_model(model_dir: str) -> TrainingTask:
    """The registered task whose model class wrote ``model_dir``."""
    return task_for_model_class(saved_model_class(model_dir))


def evaluate(model_dir: str, job: JobArguments, batch_size: int = 128) -> dict[str, float]:
    """``hf-vlp evaluate DIR --dataset SPEC``: the task's metrics table for any saved model (the task is read from
    the model class that wrote ``DIR``)."""
    task = task_of_saved_model(model_dir)
    model, processor = task.load_saved(model_dir)
    metrics = task.evaluate(model, processor, job, job.eval_dataset or job.dataset, job.eval_split, batch_size)
    print(format_metrics_table({Path(model_dir).name or "model": metrics}))
    return metrics
