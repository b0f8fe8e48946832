"""Caption quality as the COCO caption benchmark reports it: BLEU-1..4 and CIDEr (the COCO scorer's CIDEr-D), computed
with the scorers of ``pycocoevalcap`` (the COCO caption evaluation code, pure Python for these two metrics).

The COCO evaluation first runs Stanford's PTB tokenizer (Java, via pycocoevalcap's ``PTBTokenizer``) over predictions
and references, lowercasing and dropping punctuation tokens. :func:`ptb_tokenize` is a pure-Python stand-in for plain
English captions, so no Java is needed: it follows PTB's rules for words, contractions (``n't``, ``'s``, ...), numbers,
hyphenated words and punctuation, and drops the same punctuation tokens; it is not checked against the Java tool and
may differ on rarer constructs (abbreviations with periods such as ``u.s.``, symbols PTB escapes such as ``/``/``*``).

Metric names are COCOEvalCap's (``Bleu_1`` ... ``Bleu_4``, ``CIDEr``), the keys BLIP's caption evaluation logs. The
scores are computed by the packaged ``coco_caption`` metric module (:mod:`hf_vlp.metrics`), which wraps
:func:`coco_caption_scores`.
CIDEr's document frequencies come from the references of the evaluated set, so it needs several images to mean much
(with one image every n-gram's idf is 0 and CIDEr is 0).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .embeddings import eval_mode
from .metric_modules import compute_metric
from .progress import advance

__all__ = [
    "PTB_PUNCTUATION",
    "caption_images",
    "caption_metrics",
    "coco_caption_scores",
    "evaluate_captioner",
    "ptb_tokenize",
]

INSTALL_HINT = "pip install pycocoevalcap (or the project's extra: pip install 'hf_vlp[captioning]')"

# The tokens pycocoevalcap's PTBTokenizer drops after tokenising (its PUNCTUATIONS list but the bracket escapes, whose
# characters are removed beforehand).
PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"])
# Brackets (PTB writes -LRB- etc., dropped by that list) and double quotes (PTB writes `` and '') are removed outright.
_BRACKETS_AND_QUOTES = re.compile(r"[()\[\]{}\"]")
# PTB's contraction splits: "don't" -> "do n't", "can't" -> "ca n't", "dog's" -> "dog 's", "they're" -> "they 're".
_CONTRACTIONS = re.compile(r"(?<=\w)(n't|'(?:s|re|ve|ll|d|m))\b")
_TOKEN = re.compile(
    r"n't|'(?:s|re|ve|ll|d|m)\b"
    r"|\d+(?:[.,]\d+)+"  # numbers keep their decimal points and thousands commas: "3.5", "1,000"
    r"|\w+(?:[-'/&]\w+)*"  # words keep inner hyphens, apostrophes, slashes and ampersands: "black-and-white"
    r"|\.\.\.|--"
    r"|\S"  # any other character is a token of its own
)
METRIC_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr")


def ptb_tokenize(text: str) -> str:
    """``text`` lowercased, tokenised as the PTB tokenizer does plain English and without PTB's punctuation tokens
    (:data:`PTB_PUNCTUATION`), tokens joined by single spaces - what COCO's evaluation scores.

    E.g. ``"A man's dog, running (fast)!"`` -> ``"a man 's dog running fast"``.
    """
    if not isinstance(text, str):
        raise TypeError(f"captions must be strings, got {type(text).__name__}")
    text = _BRACKETS_AND_QUOTES.sub(" ", text.lower().replace("\n", " "))
    tokens = _TOKEN.findall(_CONTRACTIONS.sub(r" \1", text))
    return " ".join(token for token in tokens if token not in PTB_PUNCTUATION)


def caption_scorers_available() -> bool:
    """Whether the COCO caption scorers (``pycocoevalcap``, the ``captioning`` extra) are installed."""
    import importlib.util

    return importlib.util.find_spec("pycocoevalcap") is not None


def _scorers() -> tuple[Any, Any]:
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as error:
        raise ImportError(f"Caption metrics need the COCO caption scorers: {INSTALL_HINT}.") from error
    return Bleu(4), Cider()


def _checked_references(references: Any, count: int) -> list[list[str]]:
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError("references must be a list with one list of reference captions per prediction")
    if len(references) != count:
        raise ValueError(
            f"Got {count} predictions but {len(references)} reference lists: pass one list of reference captions per "
            "prediction, in the same order."
        )
    checked = []
    for index, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else refs
        if not isinstance(refs, Sequence) or not refs or not all(isinstance(ref, str) for ref in refs):
            raise ValueError(
                f"references[{index}] must be a non-empty list of caption strings (or one string), got {refs!r}"
            )
        checked.append(list(refs))
    return checked


def _checked_predictions(predictions: Any) -> list[str]:
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        raise TypeError("predictions must be a list of caption strings, one per image")
    if not predictions:
        raise ValueError("No predictions: pass at least one caption (and its references).")
    for prediction in predictions:
        if not isinstance(prediction, str):
            raise TypeError(f"captions must be strings, got {type(prediction).__name__}: {prediction!r}")
    return list(predictions)


def caption_metrics(predictions: Sequence[str], references: Sequence[Sequence[str] | str]) -> dict[str, float]:
    """Corpus BLEU-1..4 and CIDEr (CIDEr-D, sigma 6, x10 as COCO reports it) of ``predictions`` (one caption per
    image) against ``references`` (each image's reference captions; a single string counts as a list of one), both
    tokenised with :func:`ptb_tokenize`. BLEU uses the closest reference length for the brevity penalty, as COCO's.
    Computed by the packaged ``coco_caption`` metric module (:func:`coco_caption_scores` through ``evaluate``).

    Returns ``{"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"}`` as floats in the COCO scorer's units (BLEU in
    [0, 1]; CIDEr in [0, 10], usually reported x100).
    """
    predictions = _checked_predictions(predictions)
    references = _checked_references(references, len(predictions))
    _scorers()  # a missing package is named before evaluate loads the module
    return compute_metric("coco_caption", predictions=predictions, references=references)


def coco_caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str] | str]) -> dict[str, float]:
    """What :func:`caption_metrics` reports, computed here with the COCO scorers: the ``coco_caption`` metric
    module's computation."""
    predictions = _checked_predictions(predictions)
    references = _checked_references(references, len(predictions))
    bleu, cider = _scorers()
    results = {index: [ptb_tokenize(prediction)] for index, prediction in enumerate(predictions)}
    truths = {index: [ptb_tokenize(ref) for ref in refs] for index, refs in enumerate(references)}
    bleu_scores, _ = bleu.compute_score(truths, results, verbose=0)
    cider_score, _ = cider.compute_score(truths, results)
    return {**{f"Bleu_{n}": float(score) for n, score in enumerate(bleu_scores, 1)}, "CIDEr": float(cider_score)}


@torch.no_grad()
def caption_images(
    model: nn.Module,
    processor: Any,
    images: Sequence[Any] | torch.Tensor,
    batch_size: int = 32,
    prompt: str | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """One caption per image with ``model.caption`` (e.g. ``VlpBlipForConditionalGeneration``; the prompt cut off),
    ``batch_size`` images at a time, in eval mode (the previous mode restored). ``images`` are anything ``processor``
    takes, or a ``pixel_values`` tensor ``[N, C, H, W]``; ``prompt`` defaults to ``processor.prompt``.
    ``generate_kwargs`` go to the model's ``generate`` (defaults: the model's generation config, COCO's beam 3 for
    BLIP)."""
    if not callable(getattr(model, "caption", None)):
        raise TypeError(f"{type(model).__name__} has no caption(images, processor); pass a captioning model.")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if generate_kwargs.get("num_return_sequences", 1) != 1:
        raise ValueError("caption evaluation scores one caption per image: leave num_return_sequences at 1")
    if not isinstance(images, torch.Tensor):
        images = list(images)
    captions: list[str] = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            captions += model.caption(images[start : start + batch_size], processor, prompt=prompt, **generate_kwargs)
            advance()
    return [caption.strip() for caption in captions]


def _rows_to_images_and_references(
    rows: Sequence[Mapping[str, Any]], image_key: str, caption_keys: Sequence[str]
) -> tuple[list[Any], list[Any]]:
    images, references = [], []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"row {index} is a {type(row).__name__}, not a mapping; pass images and references instead")
        key = next((name for name in caption_keys if row.get(name) is not None), None)
        if row.get(image_key) is None or key is None:
            raise ValueError(
                f"row {index} needs an image under {image_key!r} and reference captions under one of "
                f"{list(caption_keys)}; it has {sorted(row)}"
            )
        images.append(row[image_key])
        references.append(row[key])
    return images, references


def evaluate_captioner(
    model: nn.Module,
    processor: Any,
    images: Sequence[Any] | torch.Tensor,
    references: Sequence[Sequence[str] | str] | None = None,
    *,
    batch_size: int = 32,
    prompt: str | None = None,
    image_key: str = "image",
    caption_keys: Sequence[str] = ("captions", "caption", "text"),
    **generate_kwargs: Any,
) -> dict[str, float]:
    """Caption ``images`` with :func:`caption_images` and score them against ``references`` with
    :func:`caption_metrics` (BLEU-1..4, CIDEr).

    Either ``images`` (anything ``processor`` takes, or a ``pixel_values`` tensor ``[N, C, H, W]``) with ``references``
    (each image's reference captions), or dataset rows as ``images`` and ``references=None``: each row holds its
    image under ``image_key`` and its reference caption(s) under the first present of ``caption_keys``.
    ``generate_kwargs`` go to the model's ``generate`` (e.g. ``num_beams=3, max_length=20, min_length=5``).
    """
    if references is None:
        images, references = _rows_to_images_and_references(list(images), image_key, caption_keys)
    elif not isinstance(images, torch.Tensor):
        images = list(images)
    if not len(images):
        raise ValueError("No images to caption: pass at least one image with its references.")
    _checked_references(references, len(images))
    _scorers()  # fail on a missing package before spending time on generation
    predictions = caption_images(model, processor, images, batch_size=batch_size, prompt=prompt, **generate_kwargs)
    return caption_metrics(predictions, references)
