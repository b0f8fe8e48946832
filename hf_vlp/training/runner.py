"""The ``hf-vlp train`` / ``hf-vlp evaluate`` jobs: build or load a model through its registered task, train it with
the stock Trainer, evaluate before and after, and write the model, processor, model card, metrics and plots.

Everything architecture- or task-specific (model, processor, dataset columns, collator, callbacks, evaluation)
comes from the :class:`~hf_vlp.training.tasks.TrainingTask` registered for ``(architecture, --task)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets
from transformers import Trainer, TrainingArguments, set_seed
from transformers.training_args import ParallelMode
from transformers.utils import logging as transformers_logging

from ..evaluation.progress import evaluation_progress
from ..evaluation.report import format_metrics_table
from ..integrations.compat import enable_fsdp_on_cpu, fsdp_requested
from ..utils.sharding import local_parameter_fraction, peak_rss_mib, vectorize_scalar_parameters
from ..integrations.hub import protect_model_card, push_folder
from ..integrations.model_card import EvaluationData, render_model_card
from ..integrations.provenance import training_sources
from .batch_size import forward_batch, global_batch, process_count
from .checkpoints import (
    CheckpointCompletionCallback,
    check_checkpoint_architecture,
    check_saved_model_files,
    checkpoint_folders,
    checkpoint_global_step,
    resolve_resume_checkpoint,
)
from .data import BadSampleCounter, resolve_dataset_spec
from .job import JobArguments
from .callbacks import log_loss_terms_first
from .plots import final_training_losses, plot_training
from .tasks import TrainingTask, get_task, saved_model_class, task_for_model_class, task_names

logger = logging.getLogger(__name__)

__all__ = [
    "JobArguments",
    "check_one_job",
    "distributed_defaults",
    "evaluate",
    "launched_processes",
    "print_report",
    "train",
]

# Metrics that are not fractions: printed as numbers in their own unit, never as a percentage.

# ------------------------------------------------------------------------------------------------ launching

# Variables a launcher sets to the number of processes it started (torchrun / accelerate launch, MPI).
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_processes(environ: Mapping[str, str] | None = None) -> int:
    """How many processes the launcher started (``WORLD_SIZE`` of torchrun / ``accelerate launch``, or MPI's
    size); 1 when not launched."""
    environ = os.environ if environ is None else environ
    for name in WORLD_SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return max(int(value), 1)
    return 1


def distributed_accelerator() -> str | None:
    """The device type (``cuda``, ``xpu``, ...) whose distributed backend accelerate would use, or ``None`` when the
    processes can only meet on the CPU."""
    from accelerate.utils import get_torch_accelerator_backend
    from accelerate.utils.imports import get_distributed_backend

    device_type, _ = get_torch_accelerator_backend()
    return device_type if device_type is not None and get_distributed_backend(device_type) is not None else None


def distributed_defaults(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``TrainingArguments`` defaults for a multi-process launch (given flags win): with no accelerator that has a
    distributed backend, the processes train on the CPU and form a gloo group (``use_cpu``, ``ddp_backend="gloo"``);
    with one (CUDA: nccl) accelerate picks the backend itself. Without these, transformers leaves CPU processes
    ungrouped and each would train, evaluate and save on its own."""
    if launched_processes(environ) <= 1 or distributed_accelerator() is not None:
        return {}
    return {"use_cpu": True, "ddp_backend": "gloo"}


def _single_process_accelerate_cpu_launch(environ: Mapping[str, str]) -> bool:
    """``accelerate launch --cpu --num_processes N`` (N > 1) without ``--mpirun_hostfile`` starts one plain process:
    it sets ``ACCELERATE_USE_CPU`` and the rendezvous address (only done for several processes) but no world size."""
    uses_cpu = environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    launched = any(name in environ for name in (*WORLD_SIZE_VARIABLES, "RANK", "LOCAL_RANK"))
    return uses_cpu and "MASTER_ADDR" in environ and not launched


def check_one_job(args: TrainingArguments, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a launch whose processes would not train as one job: processes that formed no process group (each
    would train, evaluate and save into the same folder on its own), or an ``accelerate launch --cpu
    --num_processes N`` that started a single process."""
    environ = os.environ if environ is None else environ
    launched = launched_processes(environ)
    if launched > 1 and (args.parallel_mode != ParallelMode.DISTRIBUTED or args.world_size != launched):
        backend = f"--ddp-backend {args.ddp_backend}" if args.ddp_backend else "no --ddp-backend"
        raise ValueError(
            f"The launcher started {launched} processes, but they did not form one process group (device "
            f"{args.device}, {backend}, --use-cpu {args.use_cpu}): each would train, evaluate and save into "
            f"{args.output_dir} on its own. Leave --ddp-backend and --use-cpu out (gloo is used on the CPU, the "
            "accelerator's backend, e.g. nccl, on GPUs), or pick a backend this device supports."
        )
    if launched == 1 and _single_process_accelerate_cpu_launch(environ):
        raise ValueError(
            "`accelerate launch --cpu --num_processes N` started this one process only (accelerate starts several "
            "CPU processes through MPI, --mpirun_hostfile). For N processes on the CPU run `accelerate launch "
            "--multi_gpu --num_processes N -m hf_vlp.cli train ...` or `torchrun --nproc_per_node N -m hf_vlp.cli "
            "train ...` (they form a gloo group); for one process run `hf-vlp train ...` without accelerate launch "
            "(or unset MASTER_ADDR)."
        )


def _all_processes(trainer: Trainer, value: Any) -> list[Any]:
    """``value`` of every process, in rank order (every process must call this); ``[value]`` for one process. A
    barrier follows, so no process leaves the job while another is still inside this collective (a gloo process
    that exits with a collective in flight on its peer can abort: "terminate called without an active exception")."""
    import torch.distributed as dist

    if trainer.args.world_size <= 1 or not dist.is_initialized():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    dist.barrier()
    return gathered


def _gather_bad_samples(trainer: Trainer, bad_samples: BadSampleCounter) -> None:
    """Add every other process's skipped samples to ``bad_samples`` (every process must call this), so the report and
    ``metrics.json`` count the whole job's, not rank 0's share."""
    for snapshot in _all_processes(trainer, bad_samples.snapshot()):
        bad_samples.absorb(snapshot)


def _memory_report(trainer: Trainer, model: Any) -> dict[str, Any]:
    """Peak resident memory of every process (MiB) and the share of the parameters each holds, gathered from all
    processes (every process must call this)."""
    local = {"peak_rss_mib": round(peak_rss_mib(), 1), "parameter_share": round(local_parameter_fraction(model), 4)}
    per_process = _all_processes(trainer, local)
    return {
        "sharding": "fsdp" if trainer.is_fsdp_enabled else ("ddp" if trainer.args.world_size > 1 else "none"),
        "peak_rss_mib": [entry["peak_rss_mib"] for entry in per_process],
        "parameter_share": [entry["parameter_share"] for entry in per_process],
    }


def _describe_sharding(trainer: Trainer) -> str:
    if not trainer.is_fsdp_enabled:
        return ""
    plugin = trainer.accelerator.state.fsdp_plugin
    return f"; FSDP{plugin.fsdp_version} over {process_count(trainer.args)} processes"


def _describe_batch(args: TrainingArguments) -> str:
    processes, accumulation = process_count(args), args.gradient_accumulation_steps
    parts = [f"{args.per_device_train_batch_size} per device"]
    if processes > 1:
        backend = getattr(args.distributed_state, "backend", None) or args.ddp_backend or "distributed"
        parts.append(f"{processes} processes ({backend} on {args.device.type})")
    if accumulation > 1:
        parts.append(f"{accumulation} accumulation steps")
    return f"global batch {global_batch(args)} = " + " x ".join(parts)


# ------------------------------------------------------------------------------------------------ quiet output


def _no_bar(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return factory(*args, **{**kwargs, "disable": True})


class _TruncationWarningOnce(logging.Filter):
    """Lets the first "... truncated" warning of the run through (saying that it is not repeated) and drops the
    later ones: processors warn at every batch whose text is cut."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno < logging.WARNING or "truncated" not in message or "token" not in message:
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg = message + " (Further truncation warnings of this run are not shown.)"
        record.args = None
        return True


@contextlib.contextmanager
def quiet_run() -> Iterator[None]:
    """Readable output for a train/evaluate job: transformers' own nested bars ("Loading weights", "Writing model
    shards") are off (the Trainer's training bar and hub downloads keep theirs), and a text truncation warning is
    shown once instead of at every batch."""
    previous_hook = transformers_logging.set_tqdm_hook(_no_bar)
    once = _TruncationWarningOnce()
    # hf_vlp warns on module loggers (a processor on its class's module's), created here for every loaded module
    names = {name for name in list(sys.modules) if name == "hf_vlp" or name.startswith("hf_vlp.")}
    names.update(name for name in list(logging.root.manager.loggerDict) if name.startswith("hf_vlp."))
    loggers = [logging.getLogger(name) for name in sorted(names)]
    for logger_ in loggers:
        logger_.addFilter(once)
    try:
        with warnings.catch_warnings():
            # FSDP2 warns, once per module class, that an embedding/linear/model output is a view that an in-place
            # op could detach from its hooks; no hf_vlp block modifies a module's output in place (the FSDP tests
            # check gradients against DDP's), so the warning only adds noise to every sharded run.
            warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
            yield
    finally:
        for logger_ in loggers:
            logger_.removeFilter(once)
        transformers_logging.set_tqdm_hook(previous_hook)


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
            f"{forward_batch(args, args.train_batch_size)} sample(s) (--per-device-train-batch-size "
            f"{args.per_device_train_batch_size}, --dataloader-drop-last {args.dataloader_drop_last}). Lower "
            "--per-device-train-batch-size or use more data."
        )


def _check_one_batch(dataset: Any, args: TrainingArguments, job: JobArguments) -> None:
    """A map-style training set smaller than one global batch gives no batch with ``dataloader_drop_last``."""
    if not isinstance(dataset, datasets.Dataset) or not args.dataloader_drop_last:
        return
    processes, per_step = process_count(args), forward_batch(args, args.train_batch_size)
    if len(dataset) < per_step:
        across = f" x {processes} processes" if processes > 1 else ""
        raise ValueError(
            f"The training set {job.dataset!r} (split {job.train_split!r}) has {len(dataset)} sample(s), fewer than "
            f"one batch of {per_step} (--per-device-train-batch-size {args.per_device_train_batch_size}{across}), "
            "and --dataloader-drop-last is on: not one step would be trained. Lower --per-device-train-batch-size "
            f"to at most {max(len(dataset) // processes, 1)} or use more data."
        )


def train(architecture: str, job: JobArguments, args: TrainingArguments) -> dict[str, Any]:
    """Train ``architecture``'s ``job.task`` with the stock Trainer; returns the metrics also written to
    ``metrics.json``.

    Under torchrun / ``accelerate launch`` every process runs this and they train as one job (one process group, the
    global batch split across them); only the main process evaluates, saves, writes the card and plots and prints.
    """
    check_one_job(args)
    with quiet_run():
        metrics = _train(architecture, job, args)
    _leave_process_group()
    return metrics


def _leave_process_group() -> None:
    """End this process's part of the job cleanly: destroy the process group once its last collective is done (the
    other ranks leave while rank 0 still evaluates and writes, which needs no collective). A process that exits with
    its gloo group alive can abort in the group's destructor ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _train(architecture: str, job: JobArguments, args: TrainingArguments) -> dict[str, Any]:
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
    if fsdp_requested(args):
        vectorize_scalar_parameters(model)  # fully_shard shards along dim 0; saved back as scalars
        enable_fsdp_on_cpu(args)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=processor,
        callbacks=[*task.callbacks(model, collator), CheckpointCompletionCallback()],
        optimizer_cls_and_kwargs=task.optimizer_cls_and_kwargs(model, args),
    )
    log_loss_terms_first(trainer)  # the loss terms reach every reporter (TensorBoard, W&B) with the total
    protect_model_card(trainer)  # trainer.push_to_hub() keeps hf_vlp's card instead of writing its generic one
    eval_spec = job.eval_dataset or job.dataset
    is_main = trainer.is_world_process_zero()
    processes = process_count(args)
    metrics: dict[str, Any] = {
        "architecture": architecture,
        "task": task.name,
        "dataset": job.dataset,
        "eval_dataset": eval_spec,
        "processes": processes,
        "global_train_batch_size": global_batch(args),
    }
    if is_main:
        print(f"hf-vlp train {architecture} --task {task.name}: {_describe_batch(args)}{_describe_sharding(trainer)}",
              flush=True)
    eval_batch = args.per_device_eval_batch_size
    if is_main and not job.skip_eval:
        with evaluation_progress("evaluating before training", disable=args.disable_tqdm):
            metrics["before"] = task.evaluate(model, processor, job, eval_spec, job.eval_split, eval_batch)
    result = trainer.train(resume_from_checkpoint=resume)
    _check_steps_trained(trainer, resume, resumed_step, job)
    metrics["train"] = dict(result.metrics)
    _gather_bad_samples(trainer, bad_samples)
    metrics["bad_samples"] = bad_samples.count
    metrics["memory"] = _memory_report(trainer, model)
    if trainer.is_fsdp_enabled:  # the final model is one consolidated folder, whatever the checkpoints' format
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(args.output_dir)  # writes on the main process only (FSDP: gathers the full model first)
    if not is_main:
        return metrics
    if trainer.is_fsdp_enabled:  # the in-memory model is a shard; evaluate and describe the consolidated one
        model, _ = task.load_saved(args.output_dir)
    if not job.skip_eval:
        with evaluation_progress("evaluating after training", disable=args.disable_tqdm):
            metrics["after"] = task.evaluate(model, processor, job, eval_spec, job.eval_split, eval_batch)
    output = Path(args.output_dir)
    history = trainer.state.log_history
    (output / "metrics.json").write_text(json.dumps({**metrics, "log_history": history}, indent=2))
    plot_training(history, {k: metrics[k] for k in ("before", "after") if k in metrics}, output)
    task_flag = f" --task {task.name}" if len(task_names(architecture)) > 1 else ""
    provenance = (
        f"Trained with `hf-vlp train {architecture}{task_flag}` on `{job.dataset}` for "
        f"{trainer.state.global_step} steps{_starting_point(job)}."
    )
    if getattr(model, "model_card_template", None):  # hf_vlp models; a model registered from outside may have none
        card = render_model_card(
            model, metrics=metrics.get("after"), dataset=_evaluation_data(task, job, eval_spec), provenance=provenance,
            training_losses=final_training_losses(history), model_name=output.name, license=job.license,
            sources=training_sources(job.from_pretrained, job.vision_init, job.text_init), datasets=[job.dataset],
        )
        card.save(output / "README.md")
    if args.push_to_hub:  # the Trainer pushed when saving, before the evaluation: push the card with the metrics too
        push_folder(output, getattr(trainer, "hub_model_id", None) or args.hub_model_id or output.name,
                    private=args.hub_private_repo, revision=args.hub_revision, token=args.hub_token,
                    commit_message=f"hf-vlp train {architecture}{task_flag}: model, card with metrics")
    print_report(metrics, output, bad_samples)
    return metrics


def _starting_point(job: JobArguments) -> str:
    """", starting from `X`" for the card's provenance line."""
    if job.from_pretrained:
        return f", starting from `{job.from_pretrained}`"
    if job.vision_init:
        return f", starting from the image tower `{job.vision_init}` and the text tower `{job.text_init}`"
    return ", starting from random weights"


def _evaluation_data(task: TrainingTask, job: JobArguments, spec: str) -> EvaluationData:
    """Where the card's metrics were measured: the evaluation split, or the slice held out of the training split of a
    dataset that has none (:meth:`TrainingTask.held_out_split`)."""
    hold_out = None
    if resolve_dataset_spec(spec).kind != "synthetic":
        try:
            hold_out = task.held_out_split(spec, job.eval_split, job)
        except (OSError, ValueError):  # the splits cannot be listed again: describe the split asked for
            hold_out = None
    if hold_out is not None:
        return EvaluationData(spec, job.train_split, held_out=True, held_out_share=job.eval_split_ratio,
                              max_rows=job.eval_max_samples)
    trained_on = spec == job.dataset and job.eval_split == job.train_split
    return EvaluationData(spec, job.eval_split, max_rows=job.eval_max_samples, trained_on=trained_on)


def print_report(metrics: dict[str, Any], output: Path, bad_samples: BadSampleCounter) -> None:
    columns = {name: metrics[name] for name in ("before", "after") if name in metrics}
    if columns:
        print("\n" + format_metrics_table(columns))
    train = metrics.get("train", {})
    print(
        f"\ntrain loss {train.get('train_loss', float('nan')):.4f} in {train.get('train_runtime', 0):.1f}s "
        f"({train.get('train_samples_per_second', 0):.1f} samples/s)"
    )
    memory = metrics.get("memory")
    if memory and len(memory["peak_rss_mib"]) > 1:
        shares = ", ".join(f"{share:.0%}" for share in memory["parameter_share"])
        peaks = ", ".join(f"{peak:.0f}" for peak in memory["peak_rss_mib"])
        print(f"{memory['sharding'].upper()}: parameters held per process {shares}; peak RSS per process {peaks} MiB")
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
    with quiet_run():
        model, processor = task.load_saved(model_dir)
        with evaluation_progress(f"evaluating {model_dir}"):
            metrics = task.evaluate(model, processor, job, job.eval_dataset or job.dataset, job.eval_split, batch_size)
    print(format_metrics_table({Path(model_dir).name or "model": metrics}))
    return metrics
