"""One evaluation report for a dual encoder on an image-text dataset: zero-shot accuracy and retrieval recall.

Used by ``hf-vlp evaluate`` and before/after training by ``hf-vlp train``.
"""

from __future__ import annotations

import itertools
import math
import re
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


def _columns(dataset: Any, names: Sequence[str], limit: int | None) -> dict[str, list[Any]]:
    """The first ``limit`` values of some columns: sliced batch by batch from a map-style dataset (decoded lazily
    through its transform), or read row by row from a streamed one."""
    values: dict[str, list[Any]] = {name: [] for name in names}
    if isinstance(dataset, datasets.IterableDataset):
        for row in itertools.islice(dataset, limit):
            for name in names:
                values[name].append(row[name])
        return values
    size = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, size, 256):
        batch = dataset[start : min(start + 256, size)]
        for name in names:
            values[name].extend(batch[name])
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

    Row ``i``'s caption is the positive for row ``i``'s image; at most ``max_samples`` rows are used (the first
    ones; streamed datasets included). Returns fractions in [0, 1], plus the chance levels.
    """
    class_names = list(class_names) if class_names is not None else dataset_class_names(dataset)
    with_labels = bool(class_names) and "label" in (dataset.column_names or ())
    columns = _columns(dataset, ["image", "text", *(["label"] if with_labels else [])], max_samples)
    kept = [i for i, image in enumerate(columns["image"]) if image is not None]  # drops skipped bad samples
    columns = {name: [values[i] for i in kept] for name, values in columns.items()}
    images, texts, size = columns["image"], columns["text"], len(columns["image"])
    if size == 0:
        raise ValueError("The evaluation dataset is empty.")
    metrics: dict[str, float] = {}
    if with_labels:
        labels = columns["label"]
        zero_shot = zero_shot_accuracy(model, processor, images, labels, class_names, templates=templates, batch_size=batch_size)
        metrics.update({f"zero_shot_{name}": value for name, value in zero_shot.items()})
    retrieval = retrieval_metrics_from_model(model, processor, images, texts, batch_size=batch_size)
    metrics.update({f"retrieval_{name}": value for name, value in retrieval.items()})
    metrics["retrieval_chance_r1"] = 1.0 / size
    return metrics


# metrics reported in their own unit, not as a fraction shown in percent
NOT_FRACTION_METRICS = frozenset({"CIDEr"})


def metric_sort_key(name: str) -> tuple[Any, ...]:
    """Order metric names with their numbers compared as numbers: ``r1``, ``r5``, ``r10`` (not ``r1``, ``r10``,
    ``r5``); ``Bleu_4`` before ``CIDEr``."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def format_metrics_table(columns: dict[str, dict[str, float]]) -> str:
    """A plain-text table, one row per metric and one column per run (``before``/``after``): fractions as
    percentages, other metrics (CIDEr, or any metric with a value outside [0, 1]) as numbers in their own unit."""
    names = sorted({name for metrics in columns.values() for name in metrics}, key=metric_sort_key)
    width = max([len("metric"), *(len(name) for name in names)])
    header = f"{'metric':<{width}}  " + "  ".join(f"{title:>9}" for title in columns)
    lines = [header, "-" * len(header)]
    for name in names:
        values = [metrics.get(name) for metrics in columns.values()]
        numbers = [value for value in values if isinstance(value, (int, float))]
        fraction = name not in NOT_FRACTION_METRICS and all(
            0.0 <= value <= 1.0 or math.isnan(value) for value in numbers
        )
        cells = []
        for value in values:
            if not isinstance(value, (int, float)):
                cells.append(f"{'-':>9}")
            elif fraction:
                cells.append(f"{100 * value:>8.2f}%")
            else:
                cells.append(f"{value:>9.4f}")
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)
