"""PNG plots written at the end of a training run: the loss curve and the before/after metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def plot_training(log_history: list[dict[str, Any]], metrics: dict[str, dict[str, float]], output: Path) -> list[Path]:
    """Write ``loss_curve.png`` (training loss per logged step) and ``metrics.png`` (before/after bars)."""
    written = []
    points = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]
    figure, axis = plt.subplots(figsize=(6, 4))
    if points:
        steps, losses = zip(*points)
        axis.plot(steps, losses, marker="o", markersize=3)
    axis.set(xlabel="optimizer step", ylabel="training loss", title="Training loss")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(output / "loss_curve.png", dpi=100)
    plt.close(figure)
    written.append(output / "loss_curve.png")

    names = sorted({name for values in metrics.values() for name in values if "chance" not in name})
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
    figure.savefig(output / "metrics.png", dpi=100)
    plt.close(figure)
    written.append(output / "metrics.png")
    return written
