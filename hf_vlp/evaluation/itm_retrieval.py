"""Image-text retrieval for fusion models (ALBEF, BLIP): recall@K by ITC similarity and after ITM re-ranking.

The originals' evaluation (ALBEF ``Retrieval.py``, BLIP ``train_retrieval.py``): every image and caption of the
gallery is encoded once; the cosine similarities of the normalised projections rank the gallery (ITC); then each
query's ``k`` best candidates are re-scored by the image-text matching head over the fused pair and every other
entry is left at ``-inf`` (the original writes -100 into a matrix of ITM logits), which ranks them last (ITM).
Ranks count ties against the query, as :mod:`hf_vlp.evaluation.retrieval` does; recalls are fractions in [0, 1].

A model plugs in through an :class:`ItmScorer` (three functions); :func:`albef_itm_scorer` builds ALBEF's from any
model holding a ``VlpAlbefModel`` (``VlpAlbefModel`` itself, the pre-training or the retrieval head).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import _batches, eval_mode, model_device

__all__ = ["ItmScorer", "albef_itm_scorer", "itm_retrieval_metrics", "ranks_from_scores"]

EncodedImages = tuple[torch.Tensor, torch.Tensor]  # (fusion input states [n, P, D], normalised embeds [n, E])
EncodedTexts = tuple[torch.Tensor, torch.Tensor]  # (fusion input states [n, L, D], normalised embeds [n, E])


@dataclass
class ItmScorer:
    """How a fusion model is scored for retrieval.

    ``encode_images(pixel_values)`` -> ``(image_states, image_embeds)``; ``encode_texts(input_ids, attention_mask)``
    -> ``(text_states, text_embeds)`` (embeds L2-normalised); ``match_logits(text_states, attention_mask,
    image_states)`` -> ``[n]`` match logits of the pairs row by row. ``model`` is put in eval mode meanwhile.
    """

    model: nn.Module
    encode_images: Callable[[torch.Tensor], EncodedImages]
    encode_texts: Callable[[torch.Tensor, torch.Tensor], EncodedTexts]
    match_logits: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def albef_itm_scorer(model: nn.Module) -> ItmScorer:
    """ALBEF's scorer: ViT tokens / unimodal text states, ``vision_proj``/``text_proj`` of ``[CLS]``, and the
    raw ITM match logit ``itm_head(fusion)[:, 1]`` (``Retrieval.py`` adds no ITC term)."""
    albef = getattr(model, "albef", model)
    needed = ("encode_image", "encode_text", "fuse", "itm_head", "vision_proj", "text_proj")
    missing = [name for name in needed if not hasattr(albef, name)]
    if missing:
        raise TypeError(f"{type(model).__name__} holds no VlpAlbefModel (missing {missing}); pass an ALBEF model.")

    def encode_images(pixel_values: torch.Tensor) -> EncodedImages:
        states = albef.encode_image(pixel_values).last_hidden_state
        return states, F.normalize(albef.vision_proj(states[:, 0]), dim=-1)

    def encode_texts(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncodedTexts:
        states = albef.encode_text(input_ids, attention_mask).last_hidden_state
        return states, F.normalize(albef.text_proj(states[:, 0]), dim=-1)

    def match_logits(text_states: torch.Tensor, attention_mask: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
        fused = albef.fuse(text_states, image_states, attention_mask).last_hidden_state
        return albef.itm_head(fused[:, 0])[:, 1]

    return ItmScorer(model, encode_images, encode_texts, match_logits)


def ranks_from_scores(
    image_to_text: torch.Tensor, text_to_image_scores: torch.Tensor, text_to_image: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks from explicit score matrices: per image, the number of other images' captions scoring at least
    as high as its best caption (``image_to_text`` ``[Ni, Nt]``); per text, the number of other images scoring at
    least as high as its own (``text_to_image_scores`` ``[Nt, Ni]``)."""
    num_images = image_to_text.shape[0]
    own = text_to_image[None, :] == torch.arange(num_images)[:, None]  # [Ni, Nt]
    best_own = image_to_text.masked_fill(~own, float("-inf")).amax(dim=1)
    at_least = image_to_text >= best_own[:, None]
    image_ranks = (at_least & ~own).sum(dim=1)
    own_scores = text_to_image_scores.gather(1, text_to_image[:, None])
    text_ranks = (text_to_image_scores >= own_scores).sum(dim=1) - 1
    return image_ranks, text_ranks


def _recalls(prefix: str, image_ranks: torch.Tensor, text_ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    metrics = {f"{prefix}_i2t_r{k}": (image_ranks < k).float().mean().item() for k in ks}
    metrics |= {f"{prefix}_t2i_r{k}": (text_ranks < k).float().mean().item() for k in ks}
    metrics[f"{prefix}_mean_recall"] = sum(metrics.values()) / len(metrics)
    return metrics


@torch.no_grad()
def itm_retrieval_metrics(
    scorer: ItmScorer,
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

    ``images`` are the gallery's distinct images; ``texts[j]`` describes image ``text_to_image[j]`` (several
    captions per image allowed, every image needs one). Texts are padded to one length (``processor(text=...,
    padding="max_length")``) so their states stack; ``text_kwargs`` go to the processor as well.
    """
    if k < 1:
        raise ValueError(f"k (candidates re-ranked by ITM per query) must be >= 1, got {k}.")
    mapping = torch.as_tensor(list(text_to_image), dtype=torch.long)
    if len(texts) != mapping.shape[0] or not len(images):
        raise ValueError(f"Need one image index per text and a non-empty gallery; got {len(texts)} texts, "
                         f"{mapping.shape[0]} indices, {len(images)} images.")
    if mapping.min() < 0 or mapping.max() >= len(images) or len(set(mapping.tolist())) != len(images):
        raise ValueError("text_to_image must map texts onto image indices [0, N) with every image captioned.")
    device = model_device(scorer.model)
    with eval_mode(scorer.model):
        image_states, image_embeds = [], []
        for batch in _batches(images, batch_size):
            pixel_values = processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
            states, embeds = scorer.encode_images(pixel_values)
            image_states.append(states)
            image_embeds.append(embeds)
        text_states, text_embeds, masks = [], [], []
        settings = {"padding": "max_length", **(text_kwargs or {})}
        for batch in _batches(list(texts), batch_size):
            encoded = processor(text=batch, return_tensors="pt", **settings)
            mask = encoded["attention_mask"].to(device)
            states, embeds = scorer.encode_texts(encoded["input_ids"].to(device), mask)
            text_states.append(states)
            text_embeds.append(embeds)
            masks.append(mask)
        image_states_all, text_states_all = torch.cat(image_states), torch.cat(text_states)
        mask_all = torch.cat(masks)
        similarities = (torch.cat(image_embeds) @ torch.cat(text_embeds).T).float().cpu()
        num_images, num_texts = similarities.shape
        i2t = torch.full((num_images, num_texts), float("-inf"))
        t2i = torch.full((num_texts, num_images), float("-inf"))
        k_texts, k_images = min(k, num_texts), min(k, num_images)
        for row in range(num_images):
            top = similarities[row].topk(k_texts).indices
            image = image_states_all[row].expand(k_texts, *image_states_all.shape[1:])
            i2t[row, top] = scorer.match_logits(text_states_all[top.to(device)], mask_all[top.to(device)], image).float().cpu()
        for row in range(num_texts):
            top = similarities[:, row].topk(k_images).indices
            text = text_states_all[row].expand(k_images, *text_states_all.shape[1:])
            mask = mask_all[row].expand(k_images, -1)
            t2i[row, top] = scorer.match_logits(text, mask, image_states_all[top.to(device)]).float().cpu()
    metrics = _recalls("itc", *ranks_from_scores(similarities, similarities.T, mapping), ks)
    metrics |= _recalls("itm", *ranks_from_scores(i2t, t2i, mapping), ks)
    metrics["retrieval_chance_r1"] = 1.0 / num_images
    return metrics
