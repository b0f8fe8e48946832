"""Momentum-contrastive pieces shared by ALBEF and BLIP: ITC against feature queues with momentum distillation,
and the ITM hard-negative triplets.

Both originals (ALBEF's ``model_pretrain.py``/``model_retrieval.py``, BLIP's ``blip_pretrain.py``/
``blip_retrieval.py``) run the same steps around their towers:

1. project the online and momentum ``[CLS]`` states, L2-normalise them (:func:`momentum_contrastive_step`);
2. score the online features against ``[momentum batch features ; queue]`` divided by the temperature;
3. take the loss against ``alpha * softmax(momentum scores) + (1 - alpha) * hard targets`` (:func:`distilled_itc`),
   the hard targets being the diagonal (pretraining, :func:`diagonal_targets`) or the image-id matches (retrieval,
   :func:`hf_vlp.objectives.losses.id_match_targets`);
4. enqueue the all-gathered momentum features (:func:`enqueue_momentum_features`);
5. draw one hard negative per row from the in-batch scores (:func:`sample_itm_negatives`) and score
   ``[positives ; (text b, negative image) ; (negative text, image b)]`` with labels ``1/0/0``
   (:func:`itm_triplets`).

Retrieval inference is shared too: both rank a gallery by ITC cosine, then re-score each query's top-k candidates by
the ITM match logit (:func:`rerank_top_k`; BLIP adds the cosine, ALBEF does not), keeping per gallery item a
:class:`RetrievalFeatures` and returning :class:`RetrievalScores`. The forwards' argument checks
(:func:`check_matching_pairs`, :func:`check_negative_indices`, :func:`check_image_ids`,
:func:`retrieval_queue_update`) and output fields (:func:`contrastive_output_fields`,
:class:`ImageTextRetrievalOutput`) live here as well.

Nothing here knows a model's name: the functions take tensors, projection modules and queues.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput

from .distributed import all_gather_no_grad
from .losses import distillation_targets, sample_hard_negatives, soft_target_contrastive
from .momentum import FeatureQueue


@dataclass
class MomentumContrastiveStep:
    """One batch's features and ITC logits against the queues (ALBEF and BLIP).

    ``image_embeds``/``text_embeds`` ``[B, E]`` are the normalised online features (with gradient),
    ``momentum_image_embeds``/``momentum_text_embeds`` ``[B, E]`` the normalised momentum features (no gradient).
    ``image_columns``/``text_columns`` ``[E, B + Q]`` are the momentum batch features followed by the queue.
    ``logits_per_image`` ``[B, B + Q]`` = ``image_embeds @ text_columns / temp`` and ``logits_per_text`` =
    ``text_embeds @ image_columns / temp``; their first ``B`` columns are the in-batch pairs.
    """

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    momentum_image_embeds: torch.Tensor
    momentum_text_embeds: torch.Tensor
    image_columns: torch.Tensor
    text_columns: torch.Tensor
    logits_per_image: torch.Tensor
    logits_per_text: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.image_embeds.shape[0]


@torch.no_grad()
def clamp_temperature_(temp: torch.Tensor, minimum: float, maximum: float) -> torch.Tensor:
    """Clamp the learnable temperature in place, as ALBEF's and BLIP's forwards do first (``[0.001, 0.5]``)."""
    if not 0 < minimum <= maximum:
        raise ValueError(f"the temperature range must satisfy 0 < minimum <= maximum, got [{minimum}, {maximum}]")
    return temp.clamp_(minimum, maximum)


def momentum_contrastive_step(
    image_cls: torch.Tensor,
    text_cls: torch.Tensor,
    momentum_image_cls: torch.Tensor,
    momentum_text_cls: torch.Tensor,
    *,
    vision_proj: nn.Module,
    text_proj: nn.Module,
    momentum_vision_proj: nn.Module,
    momentum_text_proj: nn.Module,
    image_queue: FeatureQueue,
    text_queue: FeatureQueue,
    temp: torch.Tensor | float,
) -> MomentumContrastiveStep:
    """Project and normalise the ``[CLS]`` states ``[B, D]`` of the online and momentum towers and score the online
    features against ``[momentum batch ; queue]`` divided by ``temp`` (ALBEF 1.2-1.3, BLIP 2.3).

    The momentum side runs without gradient; pass the momentum towers' states computed under ``torch.no_grad``.
    The queues are read, not written (see :func:`enqueue_momentum_features`).
    """
    batch = image_cls.shape[0]
    shapes = {
        "text_cls": text_cls.shape[0],
        "momentum_image_cls": momentum_image_cls.shape[0],
        "momentum_text_cls": momentum_text_cls.shape[0],
    }
    if image_cls.dim() != 2 or any(size != batch for size in shapes.values()):
        raise ValueError(
            f"pass one [CLS] state [B, D] per pair for every tower: image_cls {tuple(image_cls.shape)}, "
            + ", ".join(f"{name} with {size} rows" for name, size in shapes.items())
        )
    image_embeds = nn.functional.normalize(vision_proj(image_cls), dim=-1)
    text_embeds = nn.functional.normalize(text_proj(text_cls), dim=-1)
    with torch.no_grad():
        momentum_image_embeds = nn.functional.normalize(momentum_vision_proj(momentum_image_cls), dim=-1)
        momentum_text_embeds = nn.functional.normalize(momentum_text_proj(momentum_text_cls), dim=-1)
        image_columns = image_queue.with_batch(momentum_image_embeds)
        text_columns = text_queue.with_batch(momentum_text_embeds)
    return MomentumContrastiveStep(
        image_embeds=image_embeds,
        text_embeds=text_embeds,
        momentum_image_embeds=momentum_image_embeds,
        momentum_text_embeds=momentum_text_embeds,
        image_columns=image_columns,
        text_columns=text_columns,
        logits_per_image=image_embeds @ text_columns / temp,
        logits_per_text=text_embeds @ image_columns / temp,
    )


@torch.no_grad()
def diagonal_targets(step: MomentumContrastiveStep) -> torch.Tensor:
    """Pretraining's hard ITC targets ``[B, B + Q]``: pair ``b``'s own column is 1, the rest (queue included) 0."""
    targets = torch.zeros_like(step.logits_per_image)
    targets[:, : step.batch_size].fill_diagonal_(1)
    return targets


def distilled_itc(
    step: MomentumContrastiveStep,
    hard_targets: torch.Tensor,
    alpha: float | torch.Tensor,
    temp: torch.Tensor | float,
) -> torch.Tensor:
    """ITC with momentum distillation: soft-target cross-entropy of the step's logits against
    ``alpha * softmax(momentum features @ columns / temp) + (1 - alpha) * hard_targets``, averaged over the
    image-to-text and text-to-image directions. ``hard_targets`` ``[B, B + Q]`` serve both directions (the diagonal,
    or image-id matches, which are symmetric)."""
    with torch.no_grad():
        targets_i2t = distillation_targets(step.momentum_image_embeds @ step.text_columns / temp, alpha, hard_targets)
        targets_t2i = distillation_targets(step.momentum_text_embeds @ step.image_columns / temp, alpha, hard_targets)
    return soft_target_contrastive(step.logits_per_image, step.logits_per_text, targets_i2t, targets_t2i)


@torch.no_grad()
def enqueue_momentum_features(
    step: MomentumContrastiveStep,
    image_queue: FeatureQueue,
    text_queue: FeatureQueue,
    ids: torch.Tensor | None = None,
    id_queue: FeatureQueue | None = None,
) -> None:
    """Write the all-gathered momentum features (and, for retrieval, the image ids) at the queues' pointers, so
    every rank holds the same queues. Call it after the ITC loss, as the originals do."""
    if (ids is None) != (id_queue is None):
        raise ValueError("pass both ids and id_queue (retrieval's image-id queue), or neither")
    image_features = all_gather_no_grad(step.momentum_image_embeds)
    text_features = all_gather_no_grad(step.momentum_text_embeds)
    if not bool(torch.isfinite(image_features).all() & torch.isfinite(text_features).all()):
        raise FloatingPointError(
            "the batch's momentum features are NaN or infinite (a corrupt image, or diverged weights); the feature "
            "queues were left unchanged so later batches are not poisoned"
        )
    image_queue.enqueue(image_features)
    text_queue.enqueue(text_features)
    if id_queue is not None:
        id_queue.enqueue(all_gather_no_grad(ids))


def same_id_mask(ids: torch.Tensor) -> torch.Tensor:
    """``[B, B]`` True where two pairs show the same image id (retrieval's ITM positives, never drawn as negatives)."""
    return ids.reshape(-1, 1) == ids.reshape(1, -1)


def sample_itm_negatives(
    step: MomentumContrastiveStep,
    positive_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    eps: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One hard negative per row drawn from the step's in-batch logits (the first ``B`` columns), never where
    ``positive_mask`` ``[B, B]`` is True (default the diagonal, as pretraining; :func:`same_id_mask` for retrieval).
    Returns ``(negative_image_per_text, negative_text_per_image)``; see :func:`hf_vlp.objectives.losses.sample_hard_negatives`."""
    batch = step.batch_size
    if positive_mask is None:
        positive_mask = torch.eye(batch, dtype=torch.bool, device=step.logits_per_image.device)
    return sample_hard_negatives(
        step.logits_per_image[:, :batch].detach(),
        step.logits_per_text[:, :batch].detach(),
        positive_mask,
        generator,
        eps=eps,
    )


@dataclass
class ItmTriplets:
    """ITM inputs over ``3B`` rows ``[positives ; (text b, negative image) ; (negative text, image b)]``.

    ``text`` and ``image`` hold the given text-side and image-side tensors in that row order (e.g. text states and
    padding mask for ALBEF, token ids and mask for BLIP; image tokens); ``labels`` ``[3B]`` are 1 for the positives
    and 0 for both negative blocks."""

    text: tuple[torch.Tensor, ...]
    image: tuple[torch.Tensor, ...]
    labels: torch.Tensor


def itm_triplets(
    text_side: Sequence[torch.Tensor],
    image_side: Sequence[torch.Tensor],
    negative_image_indices: torch.Tensor,
    negative_text_indices: torch.Tensor,
    *,
    text_candidates: Sequence[torch.Tensor] | None = None,
    image_candidates: Sequence[torch.Tensor] | None = None,
) -> ItmTriplets:
    """Build ALBEF's/BLIP's ITM rows from ``B`` matching pairs: every text-side tensor becomes
    ``[t ; t ; t[negative_text_indices]]`` and every image-side tensor ``[i ; i[negative_image_indices] ; i]``;
    ``negative_image_indices[b]`` is text ``b``'s negative image and ``negative_text_indices[b]`` image ``b``'s
    negative text (both ``[B]`` in-batch indices). ``text_candidates``/``image_candidates`` (one per side tensor,
    any number of rows) are where the negatives are taken from instead of the batch, e.g. the batches of every
    process (VLMo draws its hard negatives from the global batch)."""
    if not text_side or not image_side:
        raise ValueError("pass at least one text-side and one image-side tensor")
    batch = negative_image_indices.shape[0]
    if negative_image_indices.dim() != 1 or negative_text_indices.shape != negative_image_indices.shape:
        raise ValueError(
            f"negative indices must be two [B] vectors, got {tuple(negative_image_indices.shape)} and "
            f"{tuple(negative_text_indices.shape)}"
        )
    for tensor in (*text_side, *image_side):
        if tensor.shape[0] != batch:
            raise ValueError(
                f"every text/image-side tensor needs one row per pair ({batch}), got {tuple(tensor.shape)}"
            )
    text_candidates = text_side if text_candidates is None else text_candidates
    image_candidates = image_side if image_candidates is None else image_candidates
    if len(text_candidates) != len(text_side) or len(image_candidates) != len(image_side):
        raise ValueError("pass one candidate tensor per text-side and per image-side tensor")
    text = tuple(torch.cat([t, t, c[negative_text_indices]]) for t, c in zip(text_side, text_candidates))
    image = tuple(torch.cat([i, c[negative_image_indices], i]) for i, c in zip(image_side, image_candidates))
    labels = torch.cat([torch.ones(batch, dtype=torch.long), torch.zeros(2 * batch, dtype=torch.long)])
    return ItmTriplets(text=text, image=image, labels=labels.to(text_side[0].device))


# --------------------------------------------------------------------------------------------------- forward checks


def check_matching_pairs(input_ids: torch.Tensor, pixel_values: torch.Tensor, what: str) -> None:
    """``input_ids`` ``[B, L]`` and ``pixel_values`` ``[B, ...]``: one text per image (``what`` names the forward)."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    if input_ids.shape[0] != pixel_values.shape[0]:
        raise ValueError(
            f"{what} takes matching pairs: got {pixel_values.shape[0]} images and {input_ids.shape[0]} texts"
        )


def check_negative_indices(
    negative_image_indices: torch.Tensor | None, negative_text_indices: torch.Tensor | None
) -> None:
    """Given ITM negatives come as both index vectors or neither."""
    if (negative_image_indices is None) != (negative_text_indices is None):
        raise ValueError("pass both itm_negative_image_indices and itm_negative_text_indices, or neither")


def check_image_ids(image_ids: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
    """Retrieval's ``[B]`` image ids as ``long`` on ``device``; they must be >= 0 because the empty id-queue slots
    hold -100."""
    if image_ids is None:
        return None
    image_ids = image_ids.reshape(-1).to(device=device, dtype=torch.long)
    if image_ids.shape[0] != batch:
        raise ValueError(f"image_ids must hold one id per pair ({batch}), got {image_ids.shape[0]}")
    if bool((image_ids < 0).any()):
        raise ValueError("image_ids must be >= 0: negative ids collide with the empty idx_queue slots (-100)")
    return image_ids


def retrieval_queue_update(update_queues: bool | None, training: bool, image_ids: torch.Tensor | None) -> bool:
    """Whether a retrieval forward enqueues: default in training when ``image_ids`` are given (the id queue needs
    them)."""
    update_queues = (training and image_ids is not None) if update_queues is None else update_queues
    if update_queues and image_ids is None:
        raise ValueError("update_queues needs image_ids (the id queue is filled with them)")
    return update_queues


# --------------------------------------------------------------------------------------------------- outputs


def contrastive_output_fields(step: MomentumContrastiveStep) -> dict[str, torch.Tensor]:
    """The step's logits and features under the output field names every momentum-contrastive head uses."""
    return {
        "logits_per_image": step.logits_per_image,
        "logits_per_text": step.logits_per_text,
        "image_embeds": step.image_embeds,
        "text_embeds": step.text_embeds,
        "momentum_image_embeds": step.momentum_image_embeds,
        "momentum_text_embeds": step.momentum_text_embeds,
    }


@dataclass
class MomentumContrastiveOutput(ModelOutput):
    """The ITC/ITM outputs of a momentum-contrastive head (ALBEF's and BLIP's pre-training and retrieval heads).

    ``logits_per_image`` ``[B, B + Q]``: online image features against the batch's momentum text features followed by
    the text queue, divided by ``temp`` (``logits_per_text`` the reverse). ``itm_logits`` score the B positive pairs,
    followed, when negatives were drawn, by ``(text b, negative image)`` and ``(negative text, image b)`` (``[3B, 2]``)
    with ``itm_labels`` 1/0/0. ``vision_model_output``/``text_model_output`` are the online towers' outputs (unimodal
    text), holding ``hidden_states``/``attentions`` when asked for.
    """

    loss: torch.Tensor | None = None
    loss_itc: torch.Tensor | None = None
    loss_itm: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    momentum_image_embeds: torch.Tensor | None = None
    momentum_text_embeds: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    itm_labels: torch.Tensor | None = None
    itm_negative_image_indices: torch.Tensor | None = None
    itm_negative_text_indices: torch.Tensor | None = None
    vision_model_output: ModelOutput | None = None
    text_model_output: ModelOutput | None = None


@dataclass
class ImageTextRetrievalOutput(MomentumContrastiveOutput):
    """Retrieval fine-tuning outputs (ALBEF, BLIP): the losses are set only when ``image_ids`` are given, ``loss`` is
    ``loss_itc + loss_itm``; without ``image_ids`` ``itm_logits`` score the B positives only."""


# --------------------------------------------------------------------------------------------------- retrieval ranking


def padded_to_longest(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sequences ``[N, L_i, ...]`` right-padded with zeros to the longest ``L`` (a zero mask marks the padding)."""
    longest = max(part.shape[1] for part in parts)
    padded = []
    for part in parts:
        extra = part.new_zeros(part.shape[0], longest - part.shape[1], *part.shape[2:])
        padded.append(torch.cat([part, extra], dim=1))
    return padded


@dataclass
class RetrievalFeatures:
    """What retrieval inference keeps per gallery item: normalised projected ``[CLS]`` features ``embeds`` (ITC; ``None``
    for a model without a contrastive stage, e.g. ViLT), and
    what the fusion re-reads for ITM: the tower tokens ``hidden_states`` (images; ALBEF's texts too), the token ids
    ``input_ids`` (BLIP's texts, re-encoded with ``[ENC]`` first) and the texts' ``attention_mask``."""

    embeds: torch.Tensor | None
    hidden_states: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None

    @classmethod
    def cat(cls, chunks: list["RetrievalFeatures"]) -> "RetrievalFeatures":
        """Join features encoded chunk by chunk (texts must be padded to one length)."""
        if not chunks:
            raise ValueError("cat needs at least one chunk of features")

        def joined(name: str) -> torch.Tensor | None:
            parts = [getattr(chunk, name) for chunk in chunks]
            if all(part is None for part in parts):
                return None
            if any(part is None for part in parts):
                raise ValueError(f"some chunks have {name} and others not; encode all of them the same way")
            sequences = name in ("hidden_states", "attention_mask") and all(part.ndim >= 2 for part in parts)
            if sequences and len({part.shape[1] for part in parts}) > 1:
                parts = padded_to_longest(parts)  # e.g. image tokens of canvases of different sizes, masked
            return torch.cat(parts)

        return cls(joined("embeds"), joined("hidden_states"), joined("input_ids"), joined("attention_mask"))

    def require(self, side: str, *names: str, built_by: str) -> None:
        """Raise unless every field in ``names`` is set; ``side`` ("images"/"texts") and ``built_by`` (the encoder
        that sets them) go into the message."""
        if any(getattr(self, name) is None for name in names):
            raise ValueError(f"{side} need their {' and '.join(names)}; build them with {built_by}")


@dataclass
class RetrievalScores:
    """``similarities`` ``[images, texts]`` (ITC cosine, no temperature); ``image_to_text`` ``[images, texts]`` and
    ``text_to_image`` ``[texts, images]`` hold the re-ranking score of each query's top-k ITC candidates and
    ``fill_value`` (-100 in the originals) everywhere else."""

    similarities: torch.Tensor
    image_to_text: torch.Tensor
    text_to_image: torch.Tensor


@torch.no_grad()
def rerank_top_k(
    similarities: torch.Tensor,
    match_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    k: int,
    *,
    add_similarity: bool,
    fill_value: float = -100.0,
    batch_size: int = 8,
) -> RetrievalScores:
    """The originals' two-stage retrieval scores: each image's ``k`` texts of highest ITC ``similarities`` (and each
    text's ``k`` images) are re-scored by ``match_logits(image_indices, text_indices)`` -> ``[N]`` ITM match logits
    of those pairs, plus the cosine when ``add_similarity`` (BLIP; ALBEF scores the ITM logit alone); every other entry
    is ``fill_value``. ``k`` is capped at the gallery size.

    ``batch_size`` queries are re-scored per ``match_logits`` call (``batch_size * k`` pairs; the originals take one
    query at a time): raise it for throughput, lower it when that many fused pairs do not fit in memory. The scores do
    not depend on it beyond float rounding."""
    if k < 1:
        raise ValueError(f"k (candidates re-ranked by ITM per query) must be >= 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size (queries re-ranked per call) must be >= 1, got {batch_size}")
    num_images, num_texts = similarities.shape
    image_to_text = similarities.new_full((num_images, num_texts), fill_value)
    text_to_image = similarities.new_full((num_texts, num_images), fill_value)
    for scores, queries_are_images in ((image_to_text, True), (text_to_image, False)):
        by_query = similarities if queries_are_images else similarities.T
        k_query = min(k, by_query.shape[1])
        for start in range(0, by_query.shape[0], batch_size):
            top_similarities, top = by_query[start : start + batch_size].topk(k_query, dim=1)
            queries = torch.arange(start, start + top.shape[0], device=top.device).repeat_interleave(k_query)
            candidates = top.reshape(-1)
            pairs = (queries, candidates) if queries_are_images else (candidates, queries)
            logits = match_logits(*pairs).view_as(top).to(scores.dtype)
            if add_similarity:
                logits = logits + top_similarities
            scores[start : start + top.shape[0]].scatter_(1, top, logits)
    return RetrievalScores(similarities, image_to_text, text_to_image)


__all__ = [
    "ImageTextRetrievalOutput",
    "MomentumContrastiveOutput",
    "ItmTriplets",
    "MomentumContrastiveStep",
    "RetrievalFeatures",
    "RetrievalScores",
    "check_image_ids",
    "check_matching_pairs",
    "check_negative_indices",
    "clamp_temperature_",
    "contrastive_output_fields",
    "diagonal_targets",
    "distilled_itc",
    "enqueue_momentum_features",
    "itm_triplets",
    "momentum_contrastive_step",
    "rerank_top_k",
    "retrieval_queue_update",
    "same_id_mask",
    "sample_itm_negatives",
]
