"""Pipeline integration: hf_vlp's zero-shot classification default and its visual question answering task.

Visual question answering: transformers 5 has no VQA task any more; :data:`VQA_TASK`
(``"vlp-visual-question-answering"``) runs
:class:`~hf_vlp.integrations.vqa_pipeline.VlpVisualQuestionAnsweringPipeline` (answer ranking or generation with
ALBEF's and BLIP's VQA heads), registered with :func:`register_pipelines`.

Zero-shot classification: hf_vlp models keep their zero-shot prompt template in the processor config.

transformers' zero-shot image-classification pipeline formats candidate labels with a fixed default
("This is a photo of {}.") and tokenises them with the bare tokenizer, padded to the longest prompt. The subclass below
reads ``prompt_template`` from the ``processor_config.json`` saved next to an hf_vlp model and uses it as the default
(an explicit ``hypothesis_template`` still wins), and tokenises the prompts with that saved processor, as the model
was trained or converted (CoCa's text embedding depends on the padding: open_clip pads every text with id 0 to the
full context); every other model behaves exactly as with the stock pipeline.
"""

from __future__ import annotations

import json
from typing import Any

from transformers import AutoProcessor
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
    "saved_processor",
    "saved_prompt_template",
]

ZERO_SHOT_TASK = "zero-shot-image-classification"


def _saved_processor_config(model: Any) -> str | None:
    """The path of the ``processor_config.json`` saved with an hf_vlp model, or ``None``."""
    config = getattr(model, "config", None)
    if not str(getattr(config, "model_type", "")).startswith("hf_vlp_") or not getattr(model, "name_or_path", ""):
        return None
    return cached_file(
        model.name_or_path,
        PROCESSOR_NAME,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )


def saved_prompt_template(model: Any) -> str | None:
    """The ``prompt_template`` stored with an hf_vlp model's processor, or ``None``."""
    path = _saved_processor_config(model)
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle).get("prompt_template")


def saved_processor(model: Any) -> Any | None:
    """The processor saved with an hf_vlp model (its folder or repository), or ``None``."""
    if _saved_processor_config(model) is None:
        return None
    return AutoProcessor.from_pretrained(model.name_or_path)


class VlpZeroShotImageClassificationPipeline(ZeroShotImageClassificationPipeline):
    """The stock zero-shot pipeline, defaulting to the model's saved prompt template and tokenising the prompts with
    the model's saved processor (the tokenizer alone, as the stock pipeline, when ``tokenizer_kwargs`` are given)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        template = saved_prompt_template(self.model)
        if template is not None:
            self._preprocess_params.setdefault("hypothesis_template", template)
        self.text_processor = saved_processor(self.model)

    def preprocess(
        self,
        image: Any,
        candidate_labels: list[str] | None = None,
        hypothesis_template: str = "This is a photo of {}.",
        timeout: float | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        inputs = super().preprocess(image, candidate_labels, hypothesis_template, timeout, tokenizer_kwargs)
        if self.text_processor is not None and not tokenizer_kwargs:
            prompts = [hypothesis_template.format(label) for label in candidate_labels]
            inputs["text_inputs"] = [self.text_processor(text=prompts, return_tensors="pt")]
        return inputs


def register_pipelines() -> None:
    """Route the zero-shot task through :class:`VlpZeroShotImageClassificationPipeline` (a strict superset) and
    register :data:`VQA_TASK` (idempotent)."""
    transformers_pipelines.SUPPORTED_TASKS[ZERO_SHOT_TASK]["impl"] = VlpZeroShotImageClassificationPipeline
    register_vqa_pipeline()
