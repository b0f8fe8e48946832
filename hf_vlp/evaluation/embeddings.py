"""Batched, memory-bounded embedding of images and texts with a dual-encoder model.

Evaluation sets are often larger than what fits in memory once preprocessed (a 50k-image
ImageNet validation set is ~30 GB of float pixels at 224px), so images and texts are processed
one batch at a time: only one batch of pixel tensors exists at any moment, and only the
embeddings, ``[N, E]``, are kept.

Models follow the dual-encoder contract of ``hf_vlp`` (and of transformers' CLIP):
``get_image_features(pixel_values)`` and ``get_text_features(input_ids, attention_mask)``
return projected, un-normalised features, either as a tensor or as a ``ModelOutput`` whose
``pooler_output`` holds them (transformers 5 CLIP). The embeddings returned here are
L2-normalised float32.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ParamSpec

import torch
import torch.nn.functional as F
from torch import nn

from .progress import advance

__all__ = [
    "check_positive_ints",
    "embed_images",
    "embed_texts",
    "iter_image_embeddings",
    "iter_text_embeddings",
    "model_device",
]

DEFAULT_TEXT_KWARGS: dict[str, Any] = {"padding": True}

Params = ParamSpec("Params")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-less module)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _model_float_dtype(model: nn.Module) -> torch.dtype:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore its previous train/eval state afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _batches(items: Iterable[Any], batch_size: int) -> Iterator[list[Any]]:
    """Yield lists of at most ``batch_size`` items, reading ``items`` lazily.

    Sized, sliceable inputs (lists, ``datasets`` columns) are sliced, so a ``datasets.Column``
    decodes only one batch of images at a time; other iterables are consumed with ``islice``.
    """
    if isinstance(items, Sequence) or (hasattr(items, "__len__") and hasattr(items, "__getitem__")):
        for start in range(0, len(items), batch_size):
            yield list(items[start : start + batch_size])
            advance()
        return
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, batch_size)):
        yield batch
        advance()


def check_positive_ints(values: Iterable[int], name: str) -> tuple[int, ...]:
    """``values`` as a tuple, or a ValueError naming the argument unless it holds positive integers (top-k, recall@K)."""
    values = tuple(values)
    if not values or any(not isinstance(value, int) or value < 1 for value in values):
        raise ValueError(f"`{name}` must be positive integers, got {values!r}.")
    return values


def _check_batch_size(batch_size: int, name: str = "batch_size") -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {batch_size!r}.")


def _features_tensor(output: Any, method: str) -> torch.Tensor:
    """Accept a tensor, or a ModelOutput / dict carrying the projected features as ``pooler_output``."""
    if isinstance(output, torch.Tensor):
        features = output
    elif isinstance(output, Mapping) and output.get("pooler_output") is not None:
        features = output["pooler_output"]
    elif getattr(output, "pooler_output", None) is not None:
        features = output.pooler_output
    else:
        raise TypeError(
            f"`model.{method}` returned {type(output).__name__}; expected a tensor [batch, embed_dim] "
            "or an output with `pooler_output` holding the projected features."
        )
    if features.dim() != 2:
        raise ValueError(
            f"`model.{method}` returned features of shape {tuple(features.shape)}; expected [batch, embed_dim]."
        )
    return features


def _require_method(model: nn.Module, method: str) -> None:
    if not callable(getattr(model, method, None)):
        raise TypeError(
            f"{type(model).__name__} has no `{method}`; zero-shot and retrieval evaluation need a dual-encoder "
            "model exposing `get_image_features(pixel_values)` and `get_text_features(input_ids, attention_mask)`."
        )


def iter_image_embeddings(
    model: nn.Module,
    processor: Any,
    images: Iterable[Any] | torch.Tensor,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> Iterator[torch.Tensor]:
    """Yield L2-normalised float32 image embeddings ``[b, E]``, one batch at a time.

    ``images`` is a list/iterable of PIL images (e.g. a ``datasets`` column, read lazily) passed
    through ``processor(images=..., return_tensors="pt")``, or an already preprocessed
    ``pixel_values`` tensor ``[N, C, H, W]`` (then ``processor`` may be ``None``). ``device``
    defaults to the model's device; the model itself is not moved. The model runs in eval mode
    under ``no_grad`` and gets its previous mode back when the iteration ends.
    """
    _check_batch_size(batch_size)
    _require_method(model, "get_image_features")
    if _is_single_image(images):
        raise TypeError("`images` must be a list/iterable of images or a pixel_values tensor, not a single image.")
    device = torch.device(device) if device is not None else model_device(model)
    dtype = _model_float_dtype(model)
    if processor is None and not isinstance(images, torch.Tensor):
        raise ValueError("`processor` is required unless `images` is an already preprocessed pixel_values tensor.")

    with eval_mode(model), torch.no_grad():
        for batch in _pixel_batches(processor, images, batch_size):
            pixel_values = batch.to(device=device, dtype=dtype if batch.is_floating_point() else batch.dtype)
            features = _features_tensor(model.get_image_features(pixel_values=pixel_values), "get_image_features")
            yield F.normalize(features.float(), dim=-1)


def _is_single_image(images: Any) -> bool:
    return hasattr(images, "getpixel") and hasattr(images, "size")  # a lone PIL image


def _pixel_batches(processor: Any, images: Iterable[Any] | torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"pixel_values tensor must be [N, C, H, W], got shape {tuple(images.shape)}.")
        for batch in images.split(batch_size):
            yield batch
            advance()
        return
    for batch in _batches(images, batch_size):
        yield _processed(processor, "images", batch, "pixel_values", {})["pixel_values"]


def _processed(processor: Any, argument: str, batch: list[Any], key: str, kwargs: Mapping[str, Any]) -> Mapping:
    """``processor(<argument>=batch, return_tensors="pt", **kwargs)``; a KeyError naming the keys it returned when
    ``key`` (``pixel_values`` or ``input_ids``) is missing."""
    encoded = processor(**{argument: batch}, return_tensors="pt", **kwargs)
    if key not in encoded:
        raise KeyError(
            f"`processor({argument}=..., return_tensors='pt')` returned keys {sorted(encoded.keys())}; expected `{key}`."
        )
    return encoded


def iter_text_embeddings(
    model: nn.Module,
    processor: Any,
    texts: Iterable[str],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    text_kwargs: Mapping[str, Any] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield L2-normalised float32 text embeddings ``[b, E]``, one batch at a time.

    Each batch is tokenised with ``processor(text=batch, return_tensors="pt", **text_kwargs)``;
    ``text_kwargs`` defaults to ``{"padding": True}`` so batches of different lengths stack.
    Only ``input_ids`` and ``attention_mask`` reach ``model.get_text_features``.
    """
    _check_batch_size(batch_size)
    _require_method(model, "get_text_features")
    if isinstance(texts, str):
        raise TypeError("`texts` must be a list of strings, not a single string (wrap it: [text]).")
    if processor is None:
        raise ValueError("`processor` is required to tokenise texts.")
    device = torch.device(device) if device is not None else model_device(model)
    text_kwargs = DEFAULT_TEXT_KWARGS if text_kwargs is None else dict(text_kwargs)

    with eval_mode(model), torch.no_grad():
        for batch in _batches(texts, batch_size):
            bad = [text for text in batch if not isinstance(text, str)]
            if bad:
                raise TypeError(f"`texts` must contain only strings; got {type(bad[0]).__name__}: {bad[0]!r}.")
            encoded = _processed(processor, "text", batch, "input_ids", text_kwargs)
            attention_mask = encoded.get("attention_mask")
            features = model.get_text_features(
                input_ids=encoded["input_ids"].to(device),
                attention_mask=attention_mask.to(device) if attention_mask is not None else None,
            )
            yield F.normalize(_features_tensor(features, "get_text_features").float(), dim=-1)


def _collected(
    iterate: Callable[Params, Iterator[torch.Tensor]], name: str, what: str
) -> Callable[Params, torch.Tensor]:
    """``iterate`` (an ``iter_*_embeddings``) with its batches concatenated into ``[N, E]``: the same arguments, one
    tensor; a ValueError when the input holds no ``what``."""

    @functools.wraps(iterate)
    def collect(*args: Params.args, **kwargs: Params.kwargs) -> torch.Tensor:
        embeddings = list(iterate(*args, **kwargs))
        if not embeddings:
            raise ValueError(f"No {what} to embed: the input is empty.")
        return torch.cat(embeddings)

    collect.__name__ = collect.__qualname__ = name
    signature = inspect.signature(iterate).replace(return_annotation="torch.Tensor")
    collect.__signature__ = signature  # type: ignore[attr-defined]
    collect.__doc__ = (
        f"L2-normalised float32 {what[:-1]} embeddings ``[N, E]``, computed batch by batch "
        f"(see ``{iterate.__name__}``)."
    )
    return collect


embed_images = _collected(iter_image_embeddings, "embed_images", "images")
embed_texts = _collected(iter_text_embeddings, "embed_texts", "texts")
