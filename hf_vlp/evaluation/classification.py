"""Accuracy of image-text classifiers (NLVR2, SNLI-VE) on collated batches.

The task's own collator (without augmentation) turns rows into the model's inputs with ``labels``; the model runs
in eval mode without the labels and its ``logits`` are arg-maxed. Besides the accuracy, the chance level (one over
the classes) and the majority baseline (share of the most frequent label) are reported, so "above chance" can be
read off the same table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .embeddings import _batches, eval_mode, model_device

__all__ = ["classification_accuracy"]


@torch.no_grad()
def classification_accuracy(
    model: nn.Module,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    num_classes: int,
    batch_size: int = 64,
    class_names: Sequence[str] | None = None,
    prefix: str = "",
) -> dict[str, float]:
    """``{prefix}accuracy``, ``{prefix}chance``, ``{prefix}majority_baseline`` and per-class accuracy
    ``{prefix}accuracy_<class>`` of ``model(**inputs).logits.argmax(-1)`` against the collated ``labels``."""
    if not len(rows):
        raise ValueError("The evaluation set is empty.")
    device = model_device(model)
    predictions, labels = [], []
    with eval_mode(model):
        for batch in _batches(rows, batch_size):
            inputs = collate(batch)
            if "labels" not in inputs:
                raise ValueError(f"The collator returned no labels (keys {sorted(inputs)}); classification needs them.")
            labels.append(inputs.pop("labels"))
            inputs = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
            logits = model(**inputs).logits
            if logits.shape[-1] != num_classes:
                raise ValueError(f"The model predicts {logits.shape[-1]} classes, the task has {num_classes}.")
            predictions.append(logits.argmax(dim=-1).cpu())
    predicted, truth = torch.cat(predictions), torch.cat(labels)
    counts = Counter(truth.tolist())
    metrics = {
        f"{prefix}accuracy": (predicted == truth).float().mean().item(),
        f"{prefix}chance": 1.0 / num_classes,
        f"{prefix}majority_baseline": max(counts.values()) / truth.numel(),
    }
    for class_id in sorted(counts):
        name = class_names[class_id] if class_names is not None else str(class_id)
        chosen = truth == class_id
        metrics[f"{prefix}accuracy_{name}"] = (predicted[chosen] == class_id).float().mean().item()
    return metrics
