"""Pipeline integration: hf_vlp's zero-shot classification default and its visual question answering task.

Visual question answering: transformers 5 has no VQA task any more; :data:`VQA_TASK`
(``"vlp-visual-question-answering"``) runs
:class:`~hf_vlp.integrations.vqa_pipeline.VlpVisualQuestionAnsweringPipeline` (answer ranking or generation with
ALBEF's and BLIP's VQA heads), registered with :func:`register_pipelines`.

Zero-shot classification: hf_vlp models keep their zero-shot prompt template in the processor config.

transformers' zero-shot image-classification pipeline formats candidate labels with a fixed default
("This is a photo of {}."). The subclass below reads ``prompt_template`` from the ``processor_config.json`` saved
next to an hf_vlp model and uses it as the default; an explicit ``hypothesis_template`` still wins, and every other
model behaves exactly as with the stock pipeline.
"""

from __future__ import annotations

import json
from typing import Any

from transformers import pipelines as transformers_pipelines
from transformers.pipelines.zero_shot_image_classification import ZeroShotImageClassificationPipeline
from transformers.utils import PROCESSOR_NAME, cached_file

from .vqa_pipeline import VQA_TASK, VlpVisualQuestionAnsweringPipeline, register_vqa_pipeline

__all__ = [
    "VQA_TASK",
    "ZERO_SHOT_TASK",
    "VlpVisualQuestionAnsweringPipeline",
    "VlpZeroShotImageClassificationPipeline",
    "register_pipelines",
    "saved_prompt_template",
]

ZERO_SHOT_TASK = "zero-shot-image-classification"


def saved_prompt_template(model: Any) -> str | None:
    """The ``prompt_template`` stored with an hf_vlp model's processor, or ``None``."""
    config = getattr(model, "config", None)
    if not str(getattr(config, "model_type", "")).startswith("hf_vlp_") or not getattr(model, "name_or_path", ""):
        return None
    path = cached_file(
        model.name_or_path,
        PROCESSOR_NAME,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle).get("prompt_template")


class VlpZeroShotImageClassificationPipeline(ZeroShotImageClassificationPipeline):
    """The stock zero-shot pipeline, defaulting to the model's saved prompt template."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        template = saved_prompt_template(self.model)
        if template is not None:
            self._preprocess_params.setdefault("hypothesis_template", template)


def register_pipelines() -> None:
    """Route the zero-shot task through :class:`VlpZeroShotImageClassificationPipeline` (a strict superset) and
    register :data:`VQA_TASK` (idempotent)."""
    transformers_pipelines.SUPPORTED_TASKS[ZERO_SHOT_TASK]["impl"] = VlpZeroShotImageClassificationPipeline
    register_vqa_pipeline()
