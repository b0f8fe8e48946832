"""The ``hf-vlp train`` / ``hf-vlp evaluate`` jobs: build or load a model through its registered task, train it with
the stock Trainer, evaluate before and after, and write the model, processor, model card, metrics and plots.

Everything architecture- or task-specific (model, processor, dataset columns, collator, callbacks, evaluation)
comes from the :class:`~hf_vlp.training.tasks.TrainingTask` registered for ``(architecture, --task)``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import datasets
from transformers import Trainer, TrainingArguments, set_seed

from ..evaluation.report import format_metrics_table
from ..integrations.model_card import render_model_card
from .checkpoints import (
    CheckpointCompletionCallback,
    check_checkpoint_architecture,
    check_saved_model_files,
    checkpoint_folders,
    checkpoint_global_step,
    resolve_resume_checkpoint,
)
from .data import BadSampleCounter
from .job import JobArguments
from .plots import plot_training
from .tasks import TrainingTask, get_task, saved_model_class, task_for_model_class, task_names

logger = logging.getLogger(__name__)

__all__ = ["JobArguments", "evaluate", "print_report", "train"]


def _prepare_output_dir(args: TrainingArguments, job: JobArguments, resume: str | None) -> None:
    """Refuse to train into a non-empty output folder (its model would be replaced and checkpoint rotation would
    delete its checkpoints) unless resuming or ``--overwrite-output-dir``; the latter removes the earlier run's
    checkpoints, so that ``--resume-from-checkpoint last`` can never pick one of them up later."""
    output = Path(args.output_dir)
    if resume is not None or not output.is_dir() or not any(output.iterdir()):
        return
    if not job.overwrite_output_dir:
        contents = sorted(path.name for path in output.iterdir())
        shown = ", ".join(contents[:4]) + (", ..." if len(contents) > 4 else "")
        raise ValueError(
            f"Output folder {output} is not empty ({shown}): training into it would replace the model there and let "
            "checkpoint rotation delete its checkpoints. Pass --overwrite-output-dir to replace it, or "
            "--resume-from-checkpoint last to continue its run."
        )
    stale = checkpoint_folders(output)
    if stale and args.should_save:
        for folder in stale:
            shutil.rmtree(folder)
        logger.warning(
            "--overwrite-output-dir: removed the earlier run's checkpoint(s) from %s: %s.",
            output, ", ".join(folder.name for folder in stale),
        )


def _check_steps_trained(trainer: Trainer, resume: str | None, resumed_step: int, job: JobArguments) -> None:
    """After ``trainer.train``: warn when a resumed checkpoint was already at the end of the run (nothing was left to
    train), and fail when a run trained 0 steps for want of a batch."""
    state, args = trainer.state, trainer.args
    if resume is not None and 0 < state.max_steps <= resumed_step:
        logger.warning(
            "--resume-from-checkpoint: %s is at step %d, already >= the run's %d steps (--max-steps / "
            "--num-train-epochs); nothing was left to train and its model is saved as it is. Raise --max-steps to "
            "train further.",
            resume, resumed_step, state.max_steps,
        )
    elif state.global_step <= resumed_step:
        raise ValueError(
            f"Training ran 0 steps: the training set {job.dataset!r} (split {job.train_split!r}) gave no batch of "
            f"{args.train_batch_size * max(args.world_size, 1)} sample(s) (--per-device-train-batch-size "
            f"{args.per_device_train_batch_size}, --dataloader-drop-last {args.dataloader_drop_last}). Lower "
            "--per-device-train-batch-size or use more data."
        )


def _check_one_batch(dataset: Any, args: TrainingArguments, job: JobArguments) -> None:
    """A map-style training set smaller than one global batch gives no batch with ``dataloader_drop_last``."""
    if not isinstance(dataset, datasets.Dataset) or not args.dataloader_drop_last:
        return
    processes = max(args.world_size, 1)
    global_batch = args.train_batch_size * processes
    if len(dataset) < global_batch:
        across = f" x {processes} processes" if processes > 1 else ""
        raise ValueError(
            f"The training set {job.dataset!r} (split {job.train_split!r}) has {len(dataset)} sample(s), fewer than "
            f"one batch of {global_batch} (--per-device-train-batch-size {args.per_device_train_batch_size}{across}), "
            "and --dataloader-drop-last is on: not one step would be trained. Lower --per-device-train-batch-size "
            f"to at most {max(len(dataset) // processes, 1)} or use more data."
        )


def train(architecture: str, job: JobArguments, args: TrainingArguments) -> dict[str, Any]:
    """Train ``architecture``'s ``job.task`` with the stock Trainer; returns the metrics also written to
    ``metrics.json``."""
    task = get_task(architecture, job.task)
    resume = resolve_resume_checkpoint(args.resume_from_checkpoint, args.output_dir)
    _prepare_output_dir(args, job, resume)
    if job.from_pretrained is not None:
        check_saved_model_files(job.from_pretrained)
    set_seed(args.seed)  # the model is built before the Trainer seeds anything
    model, processor = task.build(job)
    resumed_step = 0
    if resume is not None:
        check_checkpoint_architecture(resume, model, f"{architecture} --task {task.name}")
        resumed_step = checkpoint_global_step(resume) or 0
    bad_samples = BadSampleCounter()
    train_dataset = task.load_dataset(job.dataset, job.train_split, job, bad_samples)
    _check_one_batch(train_dataset, args, job)
    collator = task.collator(model, processor, job, args.seed, bad_samples, train=True)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=processor,
        callbacks=[*task.callbacks(model, collator), CheckpointCompletionCallback()],
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
    _check_steps_trained(trainer, resume, resumed_step, job)
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
