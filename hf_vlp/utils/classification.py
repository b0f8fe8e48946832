"""Pieces shared by the classification heads (CLIP's image classifier, ALBEF/BLIP NLVR2, SNLI-VE, text assignment):
the loss of a config's ``problem_type``, class names, the check of integer class labels, naming a config's classes,
and NLVR2's image-pair layout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F
from transformers import PretrainedConfig

NLVR2_LABELS = ("False", "True")  # ALBEF/BLIP nlvr_dataset.py: label 'True' -> 1, else 0

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def infer_problem_type(num_labels: int, labels: torch.Tensor) -> str:
    """transformers' rule for a config without ``problem_type``: one label -> ``"regression"``; integer
    (``torch.long``/``torch.int``) labels -> ``"single_label_classification"``; otherwise
    ``"multi_label_classification"``."""
    if num_labels == 1:
        return "regression"
    if num_labels > 1 and labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: PretrainedConfig) -> torch.Tensor:
    """The loss of a sequence/image classification head, as transformers' heads compute it.

    ``config.problem_type`` picks it: ``"regression"`` -> MSE (with one label, of the squeezed ``[B]`` logits),
    ``"single_label_classification"`` -> cross-entropy over ``config.num_labels`` classes (``-100`` labels ignored),
    ``"multi_label_classification"`` -> BCE-with-logits against ``[B, num_labels]`` targets. An unset
    ``problem_type`` is inferred by :func:`infer_problem_type` and recorded on ``config`` (as transformers does, so
    later calls and a saved checkpoint keep it). Regression and multi-label targets are cast to the logits' dtype.
    """
    num_labels = config.num_labels
    if config.problem_type is None:
        config.problem_type = infer_problem_type(num_labels, labels)
    labels = labels.to(logits.device)
    problem_type = config.problem_type
    if problem_type == "regression":
        labels = labels.to(logits.dtype)
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        return F.mse_loss(logits, labels)
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1), ignore_index=-100)
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    raise ValueError(f"config.problem_type must be one of {PROBLEM_TYPES} or None, got {problem_type!r}")


def check_class_labels(labels: torch.Tensor, batch: int, names: Sequence[str]) -> torch.Tensor:
    """Validate ``[B]`` integer class labels (every example labelled, ``0 <= label < len(names)``)."""
    num_classes = len(names)
    meaning = ", ".join(f"{index} = {name}" for index, name in enumerate(names))
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices ({meaning}), got dtype {labels.dtype}")
    if tuple(labels.shape) != (batch,):
        raise ValueError(f"labels must have shape [{batch}] (one class per example), got {tuple(labels.shape)}")
    if labels.device.type != "cpu":  # no host sync on accelerators
        torch._assert_async(((labels >= 0) & (labels < num_classes)).all(), f"labels must lie in [0, {num_classes})")
    elif bool((labels == -100).any()):
        raise ValueError(
            f"labels contain -100: every example needs its class ({meaning}); drop unlabelled examples from the "
            "batch instead of masking them"
        )
    elif bool(((labels < 0) | (labels >= num_classes)).any()):
        bad = sorted(set(labels[(labels < 0) | (labels >= num_classes)].tolist()))
        raise ValueError(f"labels {bad} are not classes of this head ({meaning})")
    return labels


def set_task_labels(config: PretrainedConfig, names: Sequence[str]) -> None:
    """Give ``config`` the head's class names unless it already carries as many custom ones."""
    current = dict(config.id2label or {})
    generic = all(str(name).startswith("LABEL_") for name in current.values())
    if len(current) != len(names) or generic:
        config.id2label = dict(enumerate(names))
        config.label2id = {name: index for index, name in enumerate(names)}


def flatten_image_pairs(pixel_values: torch.Tensor) -> torch.Tensor:
    """Check NLVR2's ``[B, 2, C, H, W]`` image pairs; return them as ``[2B, C, H, W]`` for one ViT pass (view the
    tokens back as ``[B, 2, N, D]``)."""
    if pixel_values.ndim != 5 or pixel_values.shape[1] != 2:
        hint = " (stack each example's two images: torch.stack([left, right], dim=1))" if pixel_values.ndim == 4 else ""
        raise ValueError(
            f"pixel_values must be [batch, 2, channels, height, width], the two images of each example, got shape "
            f"{tuple(pixel_values.shape)}{hint}"
        )
    return pixel_values.flatten(0, 1)


__all__ = [
    "NLVR2_LABELS",
    "PROBLEM_TYPES",
    "check_class_labels",
    "classification_loss",
    "flatten_image_pairs",
    "infer_problem_type",
    "set_task_labels",
]
