"""Image-text retrieval for fusion models (ALBEF, BLIP, ViLT): recall@K by ITC similarity and after ITM re-ranking.

The originals' evaluation (ALBEF ``Retrieval.py``, BLIP ``train_retrieval.py``): every image and caption of the
gallery is encoded once; the cosine similarities of the normalised projections rank the gallery (ITC); then each
query's ``k`` best candidates are re-scored by the image-text matching head over the fused pair (BLIP adds the
cosine) and every other entry is left at ``-inf`` (the original writes -100 into a matrix of ITM logits), which ranks
them last (ITM). Ranks count ties against the query, as :mod:`hf_vlp.evaluation.retrieval` does; recalls are
fractions in [0, 1].

The model does the scoring through the retrieval interface of every ALBEF/BLIP ITC+ITM head: ``encode_images``,
``encode_texts`` (:class:`~hf_vlp.objectives.contrastive.RetrievalFeatures`) and ``score_matrices``
(:class:`~hf_vlp.objectives.contrastive.RetrievalScores`). A single-stream model without contrastive embeddings
(``has_contrastive_stage = False``: ViLT) scores every pair with its matching head; it reports the ``itm_*`` recalls
only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..objectives.contrastive import RetrievalFeatures
from .embeddings import _batches, eval_mode, model_device
from .retrieval import ranks_from_scores, recall_metrics

__all__ = ["RETRIEVAL_INTERFACE", "itm_retrieval_metrics"]

RETRIEVAL_INTERFACE = ("encode_images", "encode_texts", "score_matrices")


def image_inputs(encoded: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """The processor's image tensors the retrieval interface reads: ``pixel_values`` and, for models on padded
    canvases (ViLT), ``pixel_mask``."""
    names = [name for name in ("pixel_values", "pixel_mask") if name in encoded]
    return {name: encoded[name].to(device) for name in names}


@torch.no_grad()
def itm_retrieval_metrics(
    model: nn.Module,
    processor: Any,
    images: Sequence[Any],
    texts: Sequence[str],
    text_to_image: Sequence[int] | torch.Tensor,
    k: int = 16,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 64,
    text_kwargs: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Recall@K of image->text (``i2t``) and text->image (``t2i``) retrieval, by ITC (``itc_*``) and after the
    ITM re-ranking of each query's ``k`` best ITC candidates (``itm_*``), plus ``retrieval_chance_r1`` (one over
    the gallery's images).

    ``model`` has the retrieval interface (``encode_images``, ``encode_texts``, ``score_matrices``; any ALBEF/BLIP
    pre-training or retrieval head); it runs in eval mode meanwhile. ``images`` are the gallery's distinct images;
    ``texts[j]`` describes image ``text_to_image[j]`` (several captions per image allowed, every image needs one).
    Texts are padded to one length (``processor(text=..., padding="max_length")``) so their features stack;
    ``text_kwargs`` go to the processor as well.
    """
    missing = [name for name in RETRIEVAL_INTERFACE if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(
            f"{type(model).__name__} lacks {missing} (the retrieval interface); pass an ALBEF or BLIP pre-training "
            "or retrieval model."
        )
    if k < 1:
        raise ValueError(f"k (candidates re-ranked by ITM per query) must be >= 1, got {k}.")
    mapping = torch.as_tensor(list(text_to_image), dtype=torch.long)
    if len(texts) != mapping.shape[0] or not len(images):
        raise ValueError(f"Need one image index per text and a non-empty gallery; got {len(texts)} texts, "
                         f"{mapping.shape[0]} indices, {len(images)} images.")
    if mapping.min() < 0 or mapping.max() >= len(images) or len(set(mapping.tolist())) != len(images):
        raise ValueError("text_to_image must map texts onto image indices [0, N) with every image captioned.")
    device = model_device(model)
    settings = {"padding": "max_length", **(text_kwargs or {})}
    with eval_mode(model):
        image_features = RetrievalFeatures.cat([
            model.encode_images(**image_inputs(processor(images=batch, return_tensors="pt"), device))
            for batch in _batches(images, batch_size)
        ])  # fmt: skip
        text_chunks = []
        for batch in _batches(list(texts), batch_size):
            encoded = processor(text=batch, return_tensors="pt", **settings)
            text_chunks.append(model.encode_texts(encoded["input_ids"].to(device), encoded["attention_mask"].to(device)))
        scores = model.score_matrices(image_features, RetrievalFeatures.cat(text_chunks), k=k, fill_value=float("-inf"))
    metrics = {}
    if getattr(model, "has_contrastive_stage", True):
        similarities = scores.similarities.float().cpu()
        metrics |= recall_metrics(*ranks_from_scores(similarities, similarities.T, mapping), ks, prefix="itc_")
    itm_ranks = ranks_from_scores(scores.image_to_text.float().cpu(), scores.text_to_image.float().cpu(), mapping)
    metrics |= recall_metrics(*itm_ranks, ks, prefix="itm_")
    metrics["retrieval_chance_r1"] = 1.0 / len(images)
    return metrics
