"""Loading the packaged ``evaluate`` metric modules (:mod:`hf_vlp.metrics`) from the installed package, offline.

``evaluate.load(path)`` of a local module reads no network (``HF_EVALUATE_OFFLINE=1`` changes nothing for it): it copies
the script into ``$HF_MODULES_CACHE/evaluate_modules/metrics/<name>/<hash of the script>/`` under a file lock and
imports it from there, so concurrent processes (pytest workers, distributed ranks) share the copy safely. The modules
load with ``keep_in_memory=True`` by default: predictions stay in memory instead of Arrow files under
``$HF_METRICS_CACHE`` that parallel processes would have to tell apart by ``experiment_id``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..metrics import METRICS_DIR

__all__ = ["METRIC_NAMES", "compute_metric", "load_metric", "metric_path"]

METRIC_NAMES = ("coco_caption", "retrieval_recall", "vqa_accuracy")


def metric_path(name: str) -> Path:
    """The folder of the packaged metric module ``name`` (what ``evaluate.load`` takes)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown hf_vlp metric {name!r}; the packaged metrics are {list(METRIC_NAMES)}.")
    folder = METRICS_DIR / name
    if not (folder / f"{name}.py").is_file():
        raise FileNotFoundError(
            f"The metric module {folder / f'{name}.py'} is missing from the installed hf_vlp; reinstall the package "
            "(pip install --force-reinstall hf_vlp)."
        )
    return folder


def load_metric(name: str, config_name: str | None = None, **load_kwargs: Any) -> Any:
    """``evaluate.load`` of the packaged metric ``name`` (one of :data:`METRIC_NAMES`), in memory unless
    ``keep_in_memory=False`` is passed (needed for ``num_process > 1``). ``config_name`` picks a module's input format
    (``retrieval_recall``: ``"scores"`` or ``"ranks"``)."""
    import evaluate

    load_kwargs.setdefault("keep_in_memory", load_kwargs.get("num_process", 1) == 1)
    return evaluate.load(str(metric_path(name)), config_name, **load_kwargs)


def compute_metric(name: str, config_name: str | None = None, **inputs: Any) -> dict[str, Any]:
    """One ``compute`` of the packaged metric ``name`` on ``inputs`` (its features and keyword arguments)."""
    return load_metric(name, config_name).compute(**inputs)
