"""Zero-shot image classification with a dual encoder, as in the CLIP paper.

Each class name is written into one or more prompt templates ("a photo of a {}."); the prompts
are embedded, the embeddings of one class are averaged and re-normalised, and an image is
assigned the class whose averaged embedding is closest. The class embeddings are computed once
per evaluation (one pass over all prompts, in batches), then reused for every image batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import check_positive_ints, embed_texts, iter_image_embeddings

__all__ = [
    "DEFAULT_TEMPLATES",
    "build_zero_shot_classifier",
    "class_prompts",
    "zero_shot_accuracy",
]

# CLIP's default single prompt; pass the 80 ImageNet templates explicitly for paper numbers.
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

Template = Union[str, Callable[[str], str]]


def _fill(template: Template, class_name: str) -> str:
    if callable(template):
        prompt = template(class_name)
        if not isinstance(prompt, str):
            raise TypeError(f"A callable template must return a string; got {type(prompt).__name__}.")
        return prompt
    if not isinstance(template, str) or "{}" not in template:
        raise ValueError(
            f"Template {template!r} has no '{{}}' placeholder for the class name; write e.g. 'a photo of a {{}}.'."
        )
    return template.replace("{}", class_name)


def _check_class_names(class_names: Sequence[str]) -> None:
    if isinstance(class_names, str) or not class_names or not all(isinstance(n, str) for n in class_names):
        raise ValueError("`class_names` must be a non-empty list of class-name strings.")


def class_prompts(
    processor: Any, class_names: Sequence[str], templates: Template | Sequence[Template] | None = None
) -> list[list[str]]:
    """The prompts of every class, ``[[prompt, ...] per class]``.

    Resolution order: ``templates`` when given; else ``processor.format_labels(class_names)``
    (one prompt, or a list of prompts, per class); else ``processor.prompt_template``; else
    ``DEFAULT_TEMPLATES``. A template is a string with ``{}`` or a callable ``name -> prompt``.
    """
    _check_class_names(class_names)
    if templates is None and callable(getattr(processor, "format_labels", None)):
        formatted = list(processor.format_labels(list(class_names)))
        if len(formatted) != len(class_names):
            raise ValueError(
                f"`processor.format_labels` returned {len(formatted)} entries for {len(class_names)} class names."
            )
        return [[entry] if isinstance(entry, str) else list(entry) for entry in formatted]
    if templates is None:
        templates = getattr(processor, "prompt_template", None) or DEFAULT_TEMPLATES
    if isinstance(templates, str) or callable(templates):
        templates = [templates]
    templates = list(templates)
    if not templates:
        raise ValueError("`templates` is empty; give at least one prompt template such as 'a photo of a {}.'.")
    return [[_fill(template, name) for template in templates] for name in class_names]


def build_zero_shot_classifier(
    model: nn.Module,
    processor: Any,
    class_names: Sequence[str],
    templates: Template | Sequence[Template] | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    text_kwargs: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Class embeddings ``[C, E]``: per class, the mean of its normalised prompt embeddings, re-normalised.

    All ``C x T`` prompts are encoded in batches of ``batch_size`` in a single pass.
    """
    prompts_per_class = class_prompts(processor, class_names, templates)
    empty = [name for name, prompts_of_class in zip(class_names, prompts_per_class) if not prompts_of_class]
    if empty:
        raise ValueError(f"No prompts for classes {empty}; every class needs at least one prompt.")
    prompts = [prompt for prompts_of_class in prompts_per_class for prompt in prompts_of_class]
    counts = torch.tensor([len(prompts_of_class) for prompts_of_class in prompts_per_class])
    prompt_embeds = embed_texts(
        model, processor, prompts, batch_size=batch_size, device=device, text_kwargs=text_kwargs
    )
    owner = torch.repeat_interleave(torch.arange(len(prompts_per_class)), counts).to(prompt_embeds.device)
    sums = prompt_embeds.new_zeros(len(prompts_per_class), prompt_embeds.shape[1]).index_add_(0, owner, prompt_embeds)
    return F.normalize(sums, dim=-1)  # normalising the sum == normalising the mean


def _label_tensor(labels: Sequence[int] | Sequence[str] | torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        label_tensor = labels.flatten().long()
    else:
        labels = list(labels)
        if labels and all(isinstance(label, str) for label in labels):
            index = {name: i for i, name in enumerate(class_names)}
            unknown = sorted({label for label in labels if label not in index})
            if unknown:
                raise ValueError(f"Labels {unknown[:5]} are not in `class_names`.")
            labels = [index[label] for label in labels]
        label_tensor = torch.as_tensor(labels, dtype=torch.long)
    if label_tensor.numel() and (label_tensor.min() < 0 or label_tensor.max() >= len(class_names)):
        raise ValueError(
            f"Labels must be class indices in [0, {len(class_names)}); got values in "
            f"[{int(label_tensor.min())}, {int(label_tensor.max())}]."
        )
    return label_tensor


def zero_shot_accuracy(
    model: nn.Module,
    processor: Any,
    images: Iterable[Any] | torch.Tensor,
    labels: Sequence[int] | Sequence[str] | torch.Tensor,
    class_names: Sequence[str],
    templates: Template | Sequence[Template] | None = None,
    topk: Iterable[int] = (1, 5),
    batch_size: int = 64,
    text_batch_size: int = 256,
    device: torch.device | str | None = None,
    classifier: torch.Tensor | None = None,
) -> dict[str, float]:
    """Zero-shot top-k accuracy of ``model`` on ``images`` with ground-truth ``labels``.

    ``labels`` are class indices into ``class_names`` (or the class names themselves). Images
    are read and scored one batch at a time. ``k`` larger than the number of classes is clipped
    to it. Returns ``{"top1": .., "top5": .., "chance_top1": .., "chance_top5": ..}`` (fractions;
    chance is ``min(k, C) / C``). Pass ``classifier`` (from ``build_zero_shot_classifier``) to
    reuse class embeddings across calls.
    """
    topk = check_positive_ints(topk, "topk")
    _check_class_names(class_names)
    num_classes = len(class_names)
    label_tensor = _label_tensor(labels, class_names)
    if classifier is None:
        classifier = build_zero_shot_classifier(
            model, processor, class_names, templates, batch_size=text_batch_size, device=device
        )
    if classifier.shape[0] != num_classes:
        raise ValueError(f"`classifier` has {classifier.shape[0]} rows but there are {num_classes} class names.")

    max_k = min(max(topk), num_classes)
    hits = torch.zeros(len(topk), dtype=torch.long)
    seen = 0
    for image_embeds in iter_image_embeddings(model, processor, images, batch_size, device):
        batch_labels = label_tensor[seen : seen + image_embeds.shape[0]]
        if batch_labels.shape[0] != image_embeds.shape[0]:
            raise ValueError(f"There are more images than labels ({label_tensor.shape[0]} labels).")
        seen += image_embeds.shape[0]
        logits = image_embeds @ classifier.to(image_embeds.device, image_embeds.dtype).T
        top_classes = logits.topk(max_k, dim=-1).indices.cpu()
        correct = top_classes == batch_labels[:, None]
        for i, k in enumerate(topk):
            hits[i] += int(correct[:, : min(k, num_classes)].any(dim=-1).sum())
    if seen != label_tensor.shape[0]:
        raise ValueError(f"Got {seen} images but {label_tensor.shape[0]} labels; they must pair one to one.")
    if seen == 0:
        raise ValueError("No images to evaluate: the input is empty.")

    metrics: dict[str, float] = {}
    for i, k in enumerate(topk):
        metrics[f"top{k}"] = hits[i].item() / seen
    for k in topk:
        metrics[f"chance_top{k}"] = min(k, num_classes) / num_classes
    return metrics
