"""Model cards rendered from the templates in ``model_cards/`` whenever an hf_vlp model is saved, trained, converted
or pushed.

The metadata says only what is true of the checkpoint: ``license`` from its source (:mod:`.provenance`) or its
author, ``base_model`` when the source has a Hub id, ``datasets`` only for Hub dataset ids, ``pipeline_tag`` only
when that transformers pipeline loads every weight of the head (:func:`verified_pipeline_tag`), and a
``model-index`` with one task per metric family, chance levels left out and values rounded to 4 significant digits.

The "How to use" section names the class that fits the head and the repository id; it is rendered with a
placeholder id (``your-name/<name>``) until the card is pushed, when :func:`retarget_card` puts the real id in and
describes the remote code the repository then holds - keeping everything else, measured metrics included.
"""

from __future__ import annotations

import copy
import importlib
import importlib.resources
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .provenance import ModelSource, resolve_license

TEMPLATE_PACKAGE = "model_cards"  # the templates ship as package data of this top-level package
PLACEHOLDER_OWNER = "your-name"  # the owner of the repository id a card names until it is pushed
HF_VLP_TAG = "hf_vlp"
REPO_ID_MARKER = "<!-- hf_vlp:repo_id={} -->"
_REPO_ID_MARKER = re.compile(r"<!-- hf_vlp:repo_id=(?P<id>\S+?) -->")
REMOTE_CODE_START, REMOTE_CODE_END = "<!-- hf_vlp:remote-code:start -->", "<!-- hf_vlp:remote-code:end -->"
DEFAULT_VQA_TASK = "vlp-visual-question-answering"  # hf_vlp.integrations.pipelines.VQA_TASK
SIGNIFICANT_DIGITS = 4
_SYNTHETIC = "synthetic-shapes"
_HUB_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


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


# --------------------------------------------------------------------------------------------------- datasets


def is_hub_dataset_id(spec: str | None) -> bool:
    """Whether a dataset spec names a Hub dataset (``org/name``), not ``synthetic-shapes``, a local path or shards."""
    if not spec or spec.split(":", 1)[0] == _SYNTHETIC or spec.startswith(("/", ".", "~")):
        return False
    return bool(_HUB_DATASET_ID.match(spec)) and not Path(spec).expanduser().exists()


def dataset_kind(spec: str) -> str:
    """``hub``, ``synthetic`` (hf_vlp's generated shapes) or ``local`` (a folder, file or shards)."""
    if is_hub_dataset_id(spec):
        return "hub"
    return "synthetic" if spec.split(":", 1)[0] == _SYNTHETIC else "local"


@dataclass(frozen=True)
class EvaluationData:
    """Where a card's metrics were measured: the dataset ``spec``, the ``split`` the rows came from and, when the
    dataset had no evaluation split, that they are a slice held out of ``split`` (``held_out_share`` of its rows)
    that training left out. ``max_rows``: at most this many rows were evaluated; ``trained_on``: the rows are
    training rows (evaluation split = training split)."""

    spec: str
    split: str | None = None
    held_out: bool = False
    held_out_share: float | None = None
    max_rows: int | None = None
    trained_on: bool = False

    @property
    def name(self) -> str:
        """The dataset's name in the model-index: the Hub id, ``synthetic-shapes`` or a local folder's name."""
        kind = dataset_kind(self.spec)
        if kind == "local":
            return Path(self.spec.rstrip("/")).name or self.spec
        return self.spec if kind == "hub" else _SYNTHETIC

    @property
    def hub_type(self) -> str:
        """``dataset.type`` of the model-index: a Hub id only when it is one."""
        return {"hub": self.spec, "synthetic": _SYNTHETIC}.get(dataset_kind(self.spec), "custom")

    def describe(self) -> str:
        """"the `validation` split of [`org/data`](...) (at most 1000 rows)" and the like, for the card's text."""
        details = []
        kind = dataset_kind(self.spec)
        if kind == "hub":
            where = f"[`{self.spec}`](https://huggingface.co/datasets/{self.spec})"
        elif kind == "synthetic":
            where = f"`{self.spec}`, hf_vlp's generated shapes"
            details.append("each split is drawn from its own random stream")
        else:
            where = f"the local dataset `{self.spec}`"
        if self.held_out:
            share = f"{self.held_out_share:.0%} of its rows" if self.held_out_share else "part of its rows"
            text = f"a slice held out of the `{self.split}` split of {where}"
            details += [share, "the dataset has no evaluation split, and training left these rows out"]
        else:
            text = f"the `{self.split}` split of {where}" if self.split else where
        if self.max_rows:
            details.append(f"at most {self.max_rows} rows")
        if details:
            text += f" ({'; '.join(details)})"
        if self.trained_on:
            text += ", rows the model was trained on: these numbers overstate how it does on new data"
        return text


# --------------------------------------------------------------------------------------------------- metrics

# metric family -> (model-index task type, task name); the classification family takes the head's own task
_FAMILIES: dict[str, tuple[str, str]] = {
    "zero_shot": ("zero-shot-image-classification", "Zero-shot image classification"),
    "retrieval": ("image-text-retrieval", "Image-text retrieval"),
    "captioning": ("image-to-text", "Image captioning"),
    "vqa": ("visual-question-answering", "Visual question answering"),
}
_TASK_NAMES = {
    "visual-reasoning": "Visual reasoning (NLVR2)",
    "visual-entailment": "Visual entailment (SNLI-VE)",
    "text-assignment": "Text assignment",
    "image-classification": "Image classification",
}


def is_reference_metric(name: str) -> bool:
    """Chance levels and majority baselines: printed for comparison, not results of the model."""
    return "chance" in name or "majority_baseline" in name


def metric_family(name: str) -> str:
    """``zero_shot``, ``retrieval``, ``captioning``, ``vqa`` or ``classification`` (any other metric)."""
    if name.startswith("zero_shot_"):
        return "zero_shot"
    if name.startswith(("retrieval_", "itc_", "itm_")):
        return "retrieval"
    if name.startswith("Bleu_") or name in {"CIDEr", "METEOR", "ROUGE_L", "SPICE"}:
        return "captioning"
    if name.startswith("vqa_"):
        return "vqa"
    return "classification"


def _metric_type(name: str) -> str:
    """The Hub metric id of a metric name (``accuracy``, ``recall``, ``bleu``, ``cider``...)."""
    lowered = name.lower()
    if re.search(r"(^|_)(i2t|t2i)_r\d+$|mean_recall$", lowered):
        return "recall"
    if lowered.startswith("bleu_"):
        return "bleu"
    if lowered in {"cider", "meteor", "rouge_l", "spice"}:
        return lowered
    return "accuracy"


def metric_order(name: str) -> tuple[Any, ...]:
    """Metric names in reading order, numbers compared as numbers: ``r1``, ``r5``, ``r10``; ``Bleu_4`` before
    ``CIDEr``."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits."""
    return float(f"{value:.{digits}g}")


def _eval_results(
    model: Any, metrics: Mapping[str, float], data: EvaluationData | None
) -> list[EvalResult]:
    """One ``EvalResult`` per measured metric, grouped by the model-index into one task per metric family."""
    task = getattr(model, "model_card_task", None) or "image-classification"
    families = {**_FAMILIES, "classification": (task, _TASK_NAMES.get(task, task.replace("-", " ").capitalize()))}
    dataset = data or EvaluationData("custom")
    results = []
    for name, value in sorted(metrics.items(), key=lambda item: (metric_family(item[0]), metric_order(item[0]))):
        if is_reference_metric(name) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        task_type, task_name = families[metric_family(name)]
        results.append(EvalResult(
            task_type=task_type, task_name=task_name, dataset_type=dataset.hub_type,
            dataset_name=f"{dataset.name} (held-out slice)" if dataset.held_out else dataset.name,
            dataset_split=dataset.split, metric_type=_metric_type(name), metric_name=name,
            metric_value=significant(float(value)),
        ))
    return results


def _format(value: Any) -> str:
    return f"{value:.{SIGNIFICANT_DIGITS}g}" if isinstance(value, (int, float)) else str(value)


def _evaluation_section(metrics: Mapping[str, float] | None, data: EvaluationData | None) -> str:
    if not metrics:
        return "Not evaluated yet. `hf-vlp evaluate DIR --dataset SPEC` prints the metrics of the model's task."
    measured = {name: value for name, value in metrics.items() if not is_reference_metric(name)}
    references = {name: value for name, value in metrics.items() if is_reference_metric(name)}
    ordered = sorted(measured, key=lambda name: (metric_family(name), metric_order(name)))
    rows = "\n".join(f"| {name} | {_format(measured[name])} |" for name in ordered)
    where = f" on {data.describe()}" if data else ""
    text = f"Measured{where}:\n\n| metric | value |\n|---|---|\n{rows}"
    if references:
        listed = ", ".join(f"{name} {_format(references[name])}" for name in sorted(references, key=metric_order))
        text += f"\n\nFor comparison, not results of this model: {listed}."
    return text


def _training_losses_section(losses: dict[str, float] | None) -> str:
    """The "Training losses" lines: the total and each objective's term at the last logging step."""
    if not losses:
        return ""
    values = {name: value for name, value in losses.items() if name != "step" and isinstance(value, (int, float))}
    if not values:
        return ""
    ordered = sorted(values, key=lambda name: (name != "loss", name))
    rows = "\n".join(
        f"| {'loss (total)' if name == 'loss' else name} | {float(values[name]):.4f} |" for name in ordered
    )
    step = losses.get("step")
    when = f" at step {int(step)}" if isinstance(step, (int, float)) else ""
    return (
        f"Training losses{when} (mean over the last logging window; every logged step is in `metrics.json` and "
        f"`loss_curve.png`):\n\n| loss | value |\n|---|---|\n{rows}"
    )


# --------------------------------------------------------------------------------------------------- pipelines

# the transformers pipelines a vision-language head may load in; a card claims one only when verified
PIPELINE_CANDIDATES = ("zero-shot-image-classification", "image-text-to-text", "image-classification")


# the Auto classes a card may name, with transformers' public mapping each consults (hf_vlp registers into them)
AUTO_MAPPINGS = {
    "AutoModel": "MODEL_MAPPING",
    "AutoModelForZeroShotImageClassification": "MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING",
    "AutoModelForImageTextToText": "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING",
    "AutoModelForVisualQuestionAnswering": "MODEL_FOR_VISUAL_QUESTION_ANSWERING_MAPPING",
    "AutoModelForImageClassification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING",
    "AutoModelForPreTraining": "MODEL_FOR_PRETRAINING_MAPPING",
    "AutoModelForMaskedLM": "MODEL_FOR_MASKED_LM_MAPPING",
}


def mapped_class(auto_class: str, config: Any) -> type | None:
    """The class the Auto class named ``auto_class`` builds for ``config`` (``None``: none registered, or an Auto
    class this module does not know)."""
    import transformers

    mapping = getattr(transformers, AUTO_MAPPINGS.get(auto_class, ""), None)
    try:
        return mapping[type(config)] if mapping is not None else None
    except KeyError:
        return None


def pipeline_model_class(task: str, config: Any) -> type | None:
    """The model class transformers' ``task`` pipeline builds for ``config`` (``None``: no such pipeline, e.g.
    ``visual-question-answering``, removed in transformers 5, or no class registered for this config)."""
    from transformers.pipelines import PIPELINE_REGISTRY

    try:
        _, targeted, _ = PIPELINE_REGISTRY.check_task(task)
    except KeyError:
        return None
    for auto_class in targeted.get("pt", ()):
        built = mapped_class(auto_class.__name__, config)
        if built is not None:
            return built
    return None


def pipeline_loads(model: Any, task: str) -> bool:
    """Whether ``task``'s pipeline, given a folder saved from ``model``, builds this head or a class all of whose
    weights the folder holds (``VlpBlipModel`` from a BLIP retrieval folder); never one it would fill with random
    weights (a captioner from a VQA folder)."""
    import torch

    config = getattr(model, "config", None)
    target = pipeline_model_class(task, config) if config is not None else None
    if target is None:
        return False
    if target is type(model):
        return True
    try:
        with torch.device("meta"):  # the other class's weight names, without allocating its weights
            built = target(copy.deepcopy(config))
    except (ValueError, TypeError, RuntimeError):  # it cannot even be built from this config
        return False
    return set(built.state_dict()) <= set(model.state_dict())


def verified_pipeline_tag(model: Any) -> str | None:
    """The model's claimed ``model_card_pipeline_tag`` if that pipeline loads it, else the first of
    :data:`PIPELINE_CANDIDATES` that does, else ``None``."""
    claimed = getattr(model, "model_card_pipeline_tag", None)
    for task in dict.fromkeys([claimed, *PIPELINE_CANDIDATES]):
        if task and pipeline_loads(model, task):
            return task
    return None


def _hf_vlp_module(name: str) -> Any:
    """An hf_vlp module, imported by name (remote code, which has no hf_vlp, must not bundle it); ``None`` without
    hf_vlp."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def vqa_task() -> str:
    """The task name of hf_vlp's visual-question-answering pipeline."""
    return getattr(_hf_vlp_module("hf_vlp.integrations.pipelines"), "VQA_TASK", DEFAULT_VQA_TASK)


# --------------------------------------------------------------------------------------------------- how to use


def auto_class_of(model: Any) -> str | None:
    """The transformers Auto class that builds exactly this head from its config (with hf_vlp imported), if any."""
    config = getattr(model, "config", None)
    for auto_class in AUTO_MAPPINGS if config is not None else ():
        if mapped_class(auto_class, config) is type(model):
            return auto_class
    return None


def _is_vqa_head(model: Any) -> bool:
    config = getattr(model, "config", None)
    return config is not None and mapped_class("AutoModelForVisualQuestionAnswering", config) is type(model)


_FUSION_MODEL = '''
inputs = processor(images=images, text=captions, return_tensors="pt")  # one caption per image
outputs = model(**inputs, output_itm=True)
outputs.logits_per_image  # contrastive similarities / temperature, [n_images, n_texts]
outputs.itm_logits        # image-text matching logits of the pairs (image b, text b); column 1 = match'''
_PRETRAINING = '''
inputs = processor(images=images, text=captions, return_tensors="pt")
outputs = model(**inputs, return_loss=True)
outputs.loss  # the pre-training objectives; fine-tune for a task with `hf-vlp train ... --from-pretrained`'''
_RETRIEVAL = '''
inputs = processor(images=images, text=captions, padding="max_length", return_tensors="pt")
scores = model.rank(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], k=16)
scores.image_to_text  # [n_images, n_texts]: ITM re-ranking scores of each image's 16 best ITC candidates'''
_PAIR_CLASSIFIER = '''
left = processor(images=left_images, return_tensors="pt")["pixel_values"]
right = processor(images=right_images, return_tensors="pt")["pixel_values"]
text = processor(text=statements, return_tensors="pt")
logits = model(input_ids=text["input_ids"], pixel_values=torch.stack([left, right], dim=1),
               attention_mask=text["attention_mask"]).logits
[model.config.id2label[i] for i in logits.argmax(-1).tolist()]  # is each statement true of its image pair?'''
_VQA = '''
vqa = pipeline("{vqa_task}", model="{repo}")
vqa(image, "what is the dog doing?", top_k=3)  # ranks the processor's answer_list, else generates answers'''
_GENERIC = '''
inputs = processor(images=images, text=texts, return_tensors="pt")
outputs = model(**inputs)  # {head}.forward documents what this head takes and returns'''
_VISION_TOWER = '''
outputs = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
outputs.pooler_output  # the image tower's pooled features'''
_CLIP_TEXT_TOWER = '''
outputs = model(input_ids=processor(text=texts, return_tensors="pt")["input_ids"])
outputs.pooler_output  # the text tower's pooled (end-of-text) features'''

_VILT_RANK = '''
scores = model.rank(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], inputs["pixel_mask"])
scores.image_to_text  # [n_images, n_texts]: every pair scored by the joint encoder'''
_VILT_USAGE = {
    "VlpViltModel": '''
inputs = processor(images=images, text=texts, return_tensors="pt")  # pixel_values, pixel_mask, input_ids, ...
outputs = model(**inputs)
outputs.pooler_output  # the pooled [CLS] state of each (image b, text b) pair''',
    "VlpViltForPretraining": '''
inputs = processor(images=images, text=captions, return_tensors="pt")
outputs = model(**inputs)
outputs.itm_logits  # image-text matching of the pairs (image b, text b); column 1 = match''' + _VILT_RANK,
    "VlpViltForImageTextRetrieval": '''
inputs = processor(images=images, text=captions, return_tensors="pt")''' + _VILT_RANK,
    "VlpViltForMaskedLM": '''
inputs = processor(images=image, text="a [MASK] square on the left", return_tensors="pt")
logits = model(**inputs).logits  # [1, 40, vocab]: the image tells the masked word''',
    "VlpViltForQuestionAnswering": '''
vqa = pipeline("{vqa_task}", model="{repo}")
vqa(image, "how many shapes are there?", top_k=3)  # scores every answer of model.config.id2label''',
    "VlpViltForVisualReasoning": '''
inputs = processor(images=left_images, images_2=right_images, text=statements, return_tensors="pt")
logits = model(**inputs).logits  # [n, 2]: 1 = the statement is true of the image pair''',
}

_VLMO_RANK = '''
scores = model.rank(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])  # dual encoder: cosine
scores = model.rank(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], k=16)  # + fused ITM'''
_VLMO_USAGE = {
    "VlpVlmoModel": '''
classifier = pipeline("zero-shot-image-classification", model="{repo}")
classifier(image, candidate_labels=["a cat", "a dog"])  # the dual encoder: image-only and text-only passes
inputs = processor(images=images, text=captions, return_tensors="pt")
model.get_multimodal_features(**inputs).pooler_output  # the fusion encoder's pooled [CLS] of each pair''',
    "VlpVlmoForPretraining": '''
inputs = processor(images=images, text=captions, return_tensors="pt")
outputs = model(**inputs)
outputs.loss  # ITC (dual encoder + VL-FFN path) + ITM on hard negatives + 0.25 x MLM''' + _VLMO_RANK,
    "VlpVlmoForImageTextRetrieval": '''
inputs = processor(images=images, text=captions, return_tensors="pt")''' + _VLMO_RANK,
    "VlpVlmoForMaskedLM": '''
inputs = processor(images=image, text="a [MASK] square on the left", return_tensors="pt")
logits = model(**inputs).logits  # [1, 40, vocab]; without images the text-only pass predicts''',
    "VlpVlmoForQuestionAnswering": '''
vqa = pipeline("{vqa_task}", model="{repo}")
vqa(image, "how many shapes are there?", top_k=3)  # scores every answer of model.config.id2label''',
    "VlpVlmoForVisualReasoning": '''
inputs = processor(images=left_images, images_2=right_images, text=statements, return_tensors="pt")
logits = model(**inputs).logits  # [n, 2]: 1 = the statement is true of the image pair''',
}

_COCA_ZERO_SHOT = '''
classifier = pipeline("zero-shot-image-classification", model="{repo}")
classifier(image, candidate_labels=["a cat", "a dog"])  # labels go into the processor's saved prompt template'''
_COCA_USAGE = {
    "VlpCocaModel": _COCA_ZERO_SHOT + '''
inputs = processor(images=images, text=captions, return_tensors="pt")
model(**inputs).logits_per_image  # [n_images, n_texts]: cosine similarities x exp(logit_scale)''',
    "VlpCocaForConditionalGeneration": '''
model.caption(images, processor)  # open_clip's decoding: beam search (2 beams), at most 30 tokens
pipeline("image-text-to-text", model="{repo}")(images=image, text="")  # text="a photo of" continues a prompt
inputs = processor(images=images, text=captions, return_tensors="pt")
model(**inputs, return_loss=True).loss  # the config's contrastive_loss_weight and caption_loss_weight sum the terms
# the same folder also loads as the dual encoder (VlpCocaModel):''' + _COCA_ZERO_SHOT,
    "VlpCocaVisionModel": '''
outputs = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
outputs.pooler_output, outputs.image_tokens  # the contrastive query and the decoder's memory, not projected''',
    "VlpCocaTextModel": '''
outputs = model(input_ids=processor(text=texts, return_tensors="pt")["input_ids"])
outputs.pooler_output  # the appended class token's features, not projected''',
}

# head class -> code after loading model and processor ({repo}, {vqa_task} and {head} are filled in)
HEAD_USAGE: dict[str, str] = {
    "VlpClipModel": '''
classifier = pipeline("zero-shot-image-classification", model="{repo}")
classifier(image, candidate_labels=["a cat", "a dog"])  # labels go into the processor's saved prompt template
features = model.get_image_features(processor(images=images, return_tensors="pt")["pixel_values"]).pooler_output''',
    "VlpClipForImageClassification": '''
classifier = pipeline("image-classification", model="{repo}")
classifier(image)  # scores over model.config.id2label''',
    "VlpClipVisionModel": _VISION_TOWER,
    "VlpClipTextModel": _CLIP_TEXT_TOWER,
    "VlpClipVisionModelWithProjection": '''
outputs = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
outputs.image_embeds  # projected image embeddings''',
    "VlpClipTextModelWithProjection": '''
outputs = model(input_ids=processor(text=texts, return_tensors="pt")["input_ids"])
outputs.text_embeds  # projected text embeddings''',
    "VlpAlbefVisionModel": _VISION_TOWER,
    "VlpBlipVisionModel": _VISION_TOWER,
    "VlpAlbefModel": _FUSION_MODEL,
    "VlpBlipModel": _FUSION_MODEL + '''
pipeline("zero-shot-image-classification", model="{repo}")(image, candidate_labels=["a cat", "a dog"])''',
    "VlpAlbefForPretraining": _PRETRAINING,
    "VlpBlipForPretraining": _PRETRAINING,
    "VlpAlbefForImageTextRetrieval": _RETRIEVAL,
    "VlpBlipForImageTextRetrieval": _RETRIEVAL,
    "VlpAlbefForVisualReasoning": _PAIR_CLASSIFIER,
    "VlpBlipForVisualReasoning": _PAIR_CLASSIFIER,
    "VlpAlbefForVisualEntailment": '''
text = processor(text=hypotheses, return_tensors="pt")
logits = model(input_ids=text["input_ids"], pixel_values=processor(images=images, return_tensors="pt")["pixel_values"],
               attention_mask=text["attention_mask"]).logits
[model.config.id2label[i] for i in logits.argmax(-1).tolist()]  # entailment / neutral / contradiction''',
    "VlpBlipForConditionalGeneration": '''
model.caption(images, processor)  # the original's decoding (beam search); the prompt is cut off
pipeline("image-text-to-text", model="{repo}")(images=image, text="a picture of ")''',
    **_VILT_USAGE,
    **_VLMO_USAGE,
    **_COCA_USAGE,
    "VlpAlbefForQuestionAnswering": _VQA,
    "VlpBlipForQuestionAnswering": _VQA + '''
# Do not load this checkpoint with AutoModelForImageTextToText or the image-text-to-text pipeline: it holds an answer
# decoder, not a captioning decoder, and transformers would fill the captioner's decoder with random weights.''',
}


def _how_to_use(model: Any, repo_id: str) -> str:
    """The "How to use" section: loading with hf_vlp imported, the head's usage, and the remote-code block."""
    head = type(model).__name__
    auto_class = auto_class_of(model)
    usage = HEAD_USAGE.get(head, _GENERIC).strip("\n").format(repo=repo_id, vqa_task=vqa_task(), head=head)
    module = type(model).__module__
    if auto_class is None and hasattr(_hf_vlp_module("hf_vlp"), head):
        loader, class_import = head, f"from hf_vlp import {head}"
    elif auto_class is None and module.startswith("hf_vlp."):
        loader, class_import = head, f"from {module} import {head}"
    else:  # an Auto class builds it (or a class from elsewhere: AutoModel, as its config maps it)
        loader, class_import = auto_class or "AutoModel", None
    names = {"AutoProcessor", *([loader] if class_import is None else [])}
    if "pipeline(" in usage:
        names.add("pipeline")
    lines = [
        *(["import torch"] if "torch." in usage else []),
        "import hf_vlp  # registers the hf_vlp architectures with transformers' Auto classes",
        f"from transformers import {', '.join(sorted(names))}",
        *([class_import] if class_import else []),
        "",
        f'model = {loader}.from_pretrained("{repo_id}")' + (f"  # {head}" if loader != head else ""),
        f'processor = AutoProcessor.from_pretrained("{repo_id}")',
        usage,
    ]
    code = "\n".join(lines)
    return (
        f"{REPO_ID_MARKER.format(repo_id)}\nWith hf_vlp installed (`pip install hf_vlp`):\n\n```python\n{code}\n```\n\n"
        f"{REMOTE_CODE_START}\n{remote_code_section(repo_id, None, pushed=False)}\n{REMOTE_CODE_END}"
    )


def remote_code_section(repo_id: str, loader: str | None, *, pushed: bool = True, processor: bool = True) -> str:
    """How to load the pushed model without hf_vlp, from the code exported into the repository: ``loader`` is the
    Auto class whose ``auto_map`` entry names the head, or the exported class (``module.Class``) when no Auto class
    maps it; ``None`` when the repository holds no such code. ``processor``: its processor config maps
    ``AutoProcessor`` too. Before the card is ``pushed``: where that code comes from."""
    if not pushed:
        return (
            "Without hf_vlp: `hf-vlp push` (or `push_to_hub`) also uploads a self-contained copy of the model code, so "
            "that the pushed repository loads with `trust_remote_code=True` alone."
        )
    if loader is None:
        return (
            "This repository holds no code that loads the model without hf_vlp: install hf_vlp to use it (`hf-vlp push "
            "DIR REPO_ID` uploads a saved folder together with that code)."
        )
    names = {"AutoProcessor"} if processor else set()
    if "." in loader:  # no Auto class maps the head: the class itself, from the repository's code
        lines = ["from transformers.dynamic_module_utils import get_class_from_dynamic_module", "",
                 f'model_class = get_class_from_dynamic_module("{loader}", "{repo_id}")  # no Auto class maps it',
                 f'model = model_class.from_pretrained("{repo_id}")']
    else:
        names.add(loader)
        lines = ["", f'model = {loader}.from_pretrained("{repo_id}", trust_remote_code=True)']
    if names:
        lines.insert(0, f"from transformers import {', '.join(sorted(names))}")
    if processor:
        lines.append(f'processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)')
    code = "\n".join(lines)
    return (
        "Without hf_vlp, the copy of its code in this repository loads the model (`trust_remote_code=True` and "
        "`get_class_from_dynamic_module` run that code: read it first, and pin a `revision`):"
        f"\n\n```python\n{code}\n```"
    )


# --------------------------------------------------------------------------------------------------- rendering


def placeholder_repo_id(name: str) -> str:
    """The repository id a card names until it is pushed."""
    return f"{PLACEHOLDER_OWNER}/{name}"


def render_model_card(
    model: Any,
    *,
    repo_id: str | None = None,
    model_name: str | None = None,
    metrics: Mapping[str, float] | None = None,
    dataset: str | EvaluationData | None = None,
    provenance: str | None = None,
    tags: Sequence[str] | None = None,
    training_losses: dict[str, float] | None = None,
    license: str | None = None,
    sources: Sequence[ModelSource] = (),
    datasets: Sequence[str] = (),
) -> ModelCard:
    """Fill the model's architecture template with its configuration, provenance, license and measured metrics.

    ``repo_id``: where the card will live (default: ``your-name/<model_name or template>``, replaced on push);
    ``metrics`` measured on ``dataset`` (a spec, or :class:`EvaluationData` naming split and held-out slice);
    ``license``: the author's choice, else the one shared by ``sources`` (what the model was converted or
    fine-tuned from; their Hub ids become ``base_model``); ``datasets``: training dataset specs, listed in the
    metadata only when they are Hub ids. ``training_losses`` (``{"step": N, "loss": ..., "loss_itc": ...}``)
    adds a "Training losses" table; without it, ``model.training_losses`` is used when present."""
    template = model.model_card_template
    repo_id = repo_id or placeholder_repo_id(model_name or template)
    data = EvaluationData(dataset) if isinstance(dataset, str) else dataset
    eval_results = _eval_results(model, metrics or {}, data)
    license_id, license_text = resolve_license(license, list(sources))
    base_models = list(dict.fromkeys(source.base_model for source in sources if source.base_model))
    hub_datasets = list(dict.fromkeys(spec for spec in datasets if is_hub_dataset_id(spec)))
    task_tags = [getattr(model, "model_card_task", None), "visual-question-answering" if _is_vqa_head(model) else None]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=verified_pipeline_tag(model),
        license=license_id,
        base_model=(base_models[0] if len(base_models) == 1 else base_models) or None,
        datasets=hub_datasets or None,
        tags=sorted({HF_VLP_TAG, template, *filter(None, task_tags), *(tags or [])}),
        model_name=repo_id,
        eval_results=eval_results or None,
    )
    parameters = sum(p.numel() for p in model.parameters())
    architecture_fields = model.model_card_fields()
    fields = {
        "model_name": repo_id.rsplit("/", 1)[-1],
        "repo_id": repo_id,
        "head": type(model).__name__,
        "parameters": f"{parameters / 1e6:.1f}M" if parameters >= 1e6 else f"{parameters / 1e3:.1f}K",
        "provenance": provenance or "Initialised or trained with hf_vlp.",
        "how_to_use": _how_to_use(model, repo_id),
        "license_text": license_text,
        "evaluation": _evaluation_section(metrics, data),
        "training_losses": _training_losses_section(
            training_losses if training_losses is not None else getattr(model, "training_losses", None)
        ),
        **architecture_fields,
    }
    return ModelCard.from_template(card_data, template_str=template_text(template), **fields)


# --------------------------------------------------------------------------------------------------- pushing


def is_hf_vlp_card(card: ModelCard) -> bool:
    """Whether ``card`` was rendered by hf_vlp (its tags hold ``hf_vlp`` and its text the repository-id marker)."""
    return HF_VLP_TAG in (card.data.tags or []) and _card_repo_id(card) is not None


def _card_repo_id(card: ModelCard) -> str | None:
    match = _REPO_ID_MARKER.search(card.text)
    return match["id"] if match else None


def retarget_card(
    card: ModelCard,
    repo_id: str,
    *,
    remote_loader: str | None = None,
    processor: bool = True,
    tags: Sequence[str] = (),
) -> ModelCard:
    """A copy of an hf_vlp ``card`` that names ``repo_id`` (in every snippet, the title and the model-index) and
    describes the remote code the repository holds (``remote_loader`` and ``processor``: the ``loader`` and
    ``processor`` of :func:`remote_code_section`); everything else - metrics, license, provenance - is kept."""
    old = _card_repo_id(card)
    if old is None:
        raise ValueError("Not a model card rendered by hf_vlp (no repository-id marker); it is pushed as it is.")
    card = ModelCard(card.content)
    text = card.text.replace(REPO_ID_MARKER.format(old), REPO_ID_MARKER.format(repo_id))
    text = text.replace(f'"{old}"', f'"{repo_id}"')
    old_name, new_name = old.rsplit("/", 1)[-1], repo_id.rsplit("/", 1)[-1]
    text = re.sub(rf"^# {re.escape(old_name)}$", f"# {new_name}", text, count=1, flags=re.MULTILINE)
    block = remote_code_section(repo_id, remote_loader, processor=processor)
    text = re.sub(
        rf"{re.escape(REMOTE_CODE_START)}.*?{re.escape(REMOTE_CODE_END)}",
        lambda _: f"{REMOTE_CODE_START}\n{block}\n{REMOTE_CODE_END}", text, count=1, flags=re.DOTALL,
    )
    card.text = text
    card.data.model_name = repo_id
    if tags:
        card.data.tags = sorted({*(card.data.tags or []), *tags})
    return ModelCard(card.content)


__all__ = [
    "EvaluationData",
    "HEAD_USAGE",
    "auto_class_of",
    "is_hf_vlp_card",
    "is_hub_dataset_id",
    "is_reference_metric",
    "metric_family",
    "pipeline_loads",
    "placeholder_repo_id",
    "remote_code_section",
    "render_model_card",
    "retarget_card",
    "significant",
    "template_text",
    "verified_pipeline_tag",
]
