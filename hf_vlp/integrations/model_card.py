"""Model cards rendered from the templates in ``model_cards/`` whenever an hf_vlp model is saved or pushed."""

from __future__ import annotations

import importlib.resources
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_PACKAGE = "model_cards"  # the templates ship as package data of this top-level package


def template_text(name: str) -> str:
    """The text of the ``model_cards/<name>.md`` template (package data, read with ``importlib.resources`` from a
    source checkout, an editable or a wheel install alike); a clear error if there is none."""
    try:
        template = importlib.resources.files(TEMPLATE_PACKAGE) / f"{name}.md"
        return template.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise FileNotFoundError(
            f"Model-card template {name}.md not found in the {TEMPLATE_PACKAGE!r} package data ({error}); the "
            "installation is incomplete: reinstall hf_vlp."
        ) from None


def _evaluation_section(metrics: dict[str, float] | None, dataset: str | None) -> str:
    if not metrics:
        return "Not evaluated yet. `hf-vlp evaluate DIR --dataset SPEC` prints zero-shot and retrieval metrics."
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(metrics.items()))
    where = f" on `{dataset}`" if dataset else ""
    return f"Measured{where}:\n\n| metric | value |\n|---|---|\n{rows}"


def _training_losses_section(losses: dict[str, float] | None) -> str:
    """The "Training losses" lines: the total and each objective's term at the last logging step."""
    if not losses:
        return ""
    values = {name: value for name, value in losses.items() if name != "step" and isinstance(value, (int, float))}
    if not values:
        return ""
    ordered = sorted(values, key=lambda name: (name != "loss", name))
    rows = "\n".join(f"| {'loss (total)' if name == 'loss' else name} | {float(values[name]):.4f} |" for name in ordered)
    step = losses.get("step")
    when = f" at step {int(step)}" if isinstance(step, (int, float)) else ""
    return (
        f"Training losses{when} (mean over the last logging window; every logged step is in `metrics.json` and "
        f"`loss_curve.png`):\n\n| loss | value |\n|---|---|\n{rows}"
    )


def render_model_card(
    model: Any,
    *,
    repo_id: str | None = None,
    metrics: dict[str, float] | None = None,
    dataset: str | None = None,
    provenance: str | None = None,
    tags: list[str] | None = None,
    training_losses: dict[str, float] | None = None,
) -> ModelCard:
    """Fill the model's architecture template with its configuration, provenance and measured metrics.

    ``training_losses`` (``{"step": N, "loss": ..., "loss_itc": ...}``, e.g.
    :func:`hf_vlp.training.plots.final_training_losses` of the Trainer's log history) adds a "Training losses" table;
    without it, the values that :class:`~hf_vlp.training.callbacks.LossTermsCallback` left on the model
    (``model.training_losses``) are used when present."""
    name = model.model_card_template
    repo_id = repo_id or getattr(model, "name_or_path", "") or f"your-name/{name}"
    eval_results = [
        EvalResult(
            task_type=model.model_card_pipeline_tag or model.model_card_task or "other",
            dataset_type=dataset or "custom",
            dataset_name=dataset or "custom",
            metric_type=metric,
            metric_value=float(value),
        )
        for metric, value in sorted((metrics or {}).items())
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=model.model_card_pipeline_tag,
        license="mit",
        tags=sorted({"hf_vlp", name, *(tags or [])}),
        model_name=repo_id,
        eval_results=eval_results or None,
    )
    parameters = sum(p.numel() for p in model.parameters())
    fields = {
        "model_name": repo_id.rsplit("/", 1)[-1],
        "repo_id": repo_id,
        "parameters": f"{parameters / 1e6:.1f}M" if parameters >= 1e6 else f"{parameters / 1e3:.1f}K",
        "provenance": provenance or "Initialised or trained with hf_vlp.",
        "evaluation": _evaluation_section(metrics, dataset),
        "training_losses": _training_losses_section(
            training_losses if training_losses is not None else getattr(model, "training_losses", None)
        ),
        **model.model_card_fields(),
    }
    return ModelCard.from_template(card_data, template_str=template_text(name), **fields)
