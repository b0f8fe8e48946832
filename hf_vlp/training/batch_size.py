"""The batch sizes of a (possibly multi-process) run, from its ``TrainingArguments``: one rule instead of a formula per
caller. A forward on every process sees ``per-device batch x processes`` samples (what the contrastive loss gathers
and the momentum queues take); an optimizer step sees that times the gradient-accumulation steps."""

from __future__ import annotations

from transformers import TrainingArguments


def process_count(args: TrainingArguments) -> int:
    """The processes training together (1 without a launcher)."""
    return max(args.world_size, 1)


def forward_batch(args: TrainingArguments, per_device: int | None = None) -> int:
    """Samples in one forward across all processes: ``per_device`` (default ``per_device_train_batch_size``) x
    processes."""
    return (per_device or args.per_device_train_batch_size) * process_count(args)


def global_batch(args: TrainingArguments) -> int:
    """Samples per optimizer step: :func:`forward_batch` x ``gradient_accumulation_steps``."""
    return forward_batch(args) * args.gradient_accumulation_steps
