"""One evaluation report for a dual encoder on an image-text dataset: zero-shot accuracy and retrieval recall.

Used by ``hf-vlp evaluate`` and before/after training by ``hf-vlp train``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets

from .retrieval import retrieval_metrics_from_model
from .zero_shot import zero_shot_accuracy


def dataset_class_names(dataset: Any) -> list[str] | None:
    """Class names of a ``label`` ClassLabel column, if the dataset has one."""
    features = getattr(dataset, "features", None) or {}
    label = features.get("label")
    return list(label.names) if isinstance(label, datasets.ClassLabel) else None


def _column(dataset: Any, name: str, limit: int) -> list[Any]:
    """``limit`` values of one column, decoded lazily batch by batch through the dataset's transform."""
    values: list[Any] = []
    for start in range(0, limit, 256):
        values.extend(dataset[start : min(start + 256, limit)][name])
    return values


def evaluate_dual_encoder(
    model: Any,
    processor: Any,
    dataset: Any,
    *,
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    max_samples: int | None = None,
    batch_size: int = 128,
) -> dict[str, float]:
    """Zero-shot top-1/top-5 (when the rows carry class labels) and image<->text recall@1/5/10.

    Row ``i``'s caption is the positive for row ``i``'s image. Returns fractions in [0, 1], plus the chance levels.
    """
    size = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    if size == 0:
        raise ValueError("The evaluation dataset is empty.")
    class_names = list(class_names) if class_names is not None else dataset_class_names(dataset)
    images = _column(dataset, "image", size)
    texts = _column(dataset, "text", size)
    metrics: dict[str, float] = {}
    if class_names and "label" in dataset.column_names:
        labels = _column(dataset, "label", size)
        zero_shot = zero_shot_accuracy(model, processor, images, labels, class_names, templates=templates, batch_size=batch_size)
        metrics.update({f"zero_shot_{name}": value for name, value in zero_shot.items()})
    retrieval = retrieval_metrics_from_model(model, processor, images, texts, batch_size=batch_size)
    metrics.update({f"retrieval_{name}": value for name, value in retrieval.items()})
    metrics["retrieval_chance_r1"] = 1.0 / size
    return metrics


def format_metrics_table(columns: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per metric, one column per run (e.g. ``before``/``after``), values in %."""
    names = sorted({name for metrics in columns.values() for name in metrics})
    width = max(len(name) for name in names) if names else 6
    header = f"{'metric':<{width}}  " + "  ".join(f"{title:>9}" for title in columns)
    lines = [header, "-" * len(header)]
    for name in names:
        cells = []
        for metrics in columns.values():
            value = metrics.get(name)
            cells.append(f"{100 * value:>8.2f}%" if value is not None else f"{'-':>9}")
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
