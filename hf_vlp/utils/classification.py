"""Pieces shared by the ALBEF and BLIP classification heads (NLVR2, SNLI-VE, text assignment): class names, the
check of integer class labels, naming a config's classes, and NLVR2's image-pair layout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PretrainedConfig

NLVR2_LABELS = ("False", "True")  # ALBEF/BLIP nlvr_dataset.py: label 'True' -> 1, else 0


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


__all__ = ["NLVR2_LABELS", "check_class_labels", "flatten_image_pairs", "set_task_labels"]
