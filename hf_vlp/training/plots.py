"""PNG plots written at the end of a training run: the loss curve (the total and every logged loss term) and the
before/after metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

from ..evaluation.report import NOT_FRACTION_METRICS, metric_sort_key  # noqa: E402
from .callbacks import LOSS_TERM_PREFIX  # noqa: E402


def is_loss_term(name: str) -> bool:
    """A per-objective training loss logged next to the total (``loss_itc``, ``loss_itm``, ``loss_mlm``, ...)."""
    return name.startswith(LOSS_TERM_PREFIX)


def loss_series(log_history: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """``{name: (steps, values)}`` of the training ``loss`` and each loss term, from the training logs (evaluation
    and summary entries left out); the total first, then the terms by name."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for entry in log_history:
        if "loss" not in entry or "step" not in entry:
            continue
        for name in ("loss", *sorted(key for key in entry if is_loss_term(key))):
            value = entry[name]
            if isinstance(value, (int, float)):
                steps, values = series.setdefault(name, ([], []))
                steps.append(entry["step"])
                values.append(float(value))
    return series


def final_training_losses(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged value of the training ``loss`` and of each loss term, plus ``step`` (the last training
    log's step); empty without a training log. The model card's "Training losses" come from here."""
    series = loss_series(log_history)
    if not series:
        return {}
    return {"step": max(steps[-1] for steps, _ in series.values()), **{name: values[-1] for name, (_, values) in series.items()}}


def plot_loss_curve(log_history: list[dict[str, Any]], path: Path) -> list[str]:
    """Write the loss curve to ``path``: the total as a thick line, each loss term thinner; returns the legend's
    labels (empty when nothing was logged)."""
    figure, axis = plt.subplots(figsize=(6, 4))
    labels = []
    for name, (steps, values) in loss_series(log_history).items():
        total = name == "loss"
        label = "loss (total)" if total else name
        axis.plot(steps, values, marker="o", markersize=3 if total else 2, linewidth=2.0 if total else 1.2, label=label)
        labels.append(label)
    axis.set(xlabel="optimizer step", ylabel="training loss", title="Training loss")
    if len(labels) > 1:
        axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return labels


def plot_training(log_history: list[dict[str, Any]], metrics: dict[str, dict[str, float]], output: Path) -> list[Path]:
    """Write ``loss_curve.png`` (training loss and each logged loss term per logged step) and ``metrics.png``
    (before/after bars)."""
    plot_loss_curve(log_history, output / "loss_curve.png")
    plot_metrics(metrics, output / "metrics.png")
    return [output / "loss_curve.png", output / "metrics.png"]


def plot_metrics(metrics: dict[str, dict[str, float]], path: Path) -> list[str]:
    """Bars of every fraction metric per run (``before``/``after``) on one percentage axis, recall@K / top-K in the
    order of K; chance levels and metrics in their own unit (CIDEr) are left out. Returns the plotted names."""
    plotted = {name for values in metrics.values() for name in values}
    names = sorted(
        (name for name in plotted if "chance" not in name and name not in NOT_FRACTION_METRICS), key=metric_sort_key
    )
    figure, axis = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 4))
    width = 0.8 / max(len(metrics), 1)
    for offset, (run, values) in enumerate(metrics.items()):
        positions = [index + offset * width for index in range(len(names))]
        axis.bar(positions, [100 * values.get(name, 0.0) for name in names], width=width, label=run)
    axis.set_xticks([index + width * (len(metrics) - 1) / 2 for index in range(len(names))])
    axis.set_xticklabels(names, rotation=45, ha="right")
    axis.set(ylabel="%", title="Evaluation")
    if metrics:
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return names
