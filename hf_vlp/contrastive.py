"""Momentum-contrastive pieces shared by ALBEF and BLIP: ITC against feature queues with momentum distillation,
and the ITM hard-negative triplets.

Both originals (ALBEF's ``model_pretrain.py``/``model_retrieval.py``, BLIP's ``blip_pretrain.py``/
``blip_retrieval.py``) run the same steps around their towers:

1. project the online and momentum ``[CLS]`` states, L2-normalise them (:func:`momentum_contrastive_step`);
2. score the online features against ``[momentum batch features ; queue]`` divided by the temperature;
3. take the loss against ``alpha * softmax(momentum scores) + (1 - alpha) * hard targets`` (:func:`distilled_itc`),
   the hard targets being the diagonal (pretraining, :func:`diagonal_targets`) or the image-id matches (retrieval,
   :func:`hf_vlp.losses.id_match_targets`);
4. enqueue the all-gathered momentum features (:func:`enqueue_momentum_features`);
5. draw one hard negative per row from the in-batch scores (:func:`sample_itm_negatives`) and score
   ``[positives ; (text b, negative image) ; (negative text, image b)]`` with labels ``1/0/0``
   (:func:`itm_triplets`).

Nothing here knows a model's name: the functions take tensors, projection modules and queues.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

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
    image_queue.enqueue(all_gather_no_grad(step.momentum_image_embeds))
    text_queue.enqueue(all_gather_no_grad(step.momentum_text_embeds))
    if id_queue is not None:
        id_queue.enqueue(all_gather_no_grad(ids))


def sample_itm_negatives(
    step: MomentumContrastiveStep,
    positive_mask: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    eps: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One hard negative per row drawn from the step's in-batch logits (the first ``B`` columns), never where
    ``positive_mask`` ``[B, B]`` is True (the diagonal, or same image id). Returns
    ``(negative_image_per_text, negative_text_per_image)``; see :func:`hf_vlp.losses.sample_hard_negatives`."""
    batch = step.batch_size
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
) -> ItmTriplets:
    """Build ALBEF's/BLIP's ITM rows from ``B`` matching pairs: every text-side tensor becomes
    ``[t ; t ; t[negative_text_indices]]`` and every image-side tensor ``[i ; i[negative_image_indices] ; i]``;
    ``negative_image_indices[b]`` is text ``b``'s negative image and ``negative_text_indices[b]`` image ``b``'s
    negative text (both ``[B]`` in-batch indices)."""
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
    text = tuple(torch.cat([t, t, t[negative_text_indices]]) for t in text_side)
    image = tuple(torch.cat([i, i[negative_image_indices], i]) for i in image_side)
    labels = torch.cat([torch.ones(batch, dtype=torch.long), torch.zeros(2 * batch, dtype=torch.long)])
    return ItmTriplets(text=text, image=image, labels=labels.to(text_side[0].device))


__all__ = [
    "ItmTriplets",
    "MomentumContrastiveStep",
    "clamp_temperature_",
    "diagonal_targets",
    "distilled_itc",
    "enqueue_momentum_features",
    "itm_triplets",
    "momentum_contrastive_step",
    "sample_itm_negatives",
]
