"""Image-text losses shared by the architectures.

- ``contrastive_loss``: CLIP/CoCa InfoNCE over the global batch, computed locally (open_clip's
  ``local_loss=True, gather_with_grad=True``): memory O(b x B) per rank, single-process value and
  gradient on the same global batch.
- ``soft_target_cross_entropy`` / ``soft_target_contrastive`` / ``distillation_targets`` /
  ``id_match_targets``: ALBEF/BLIP ITC against momentum-distilled soft targets.
- ``sample_hard_negatives``: ALBEF/BLIP ITM hard negatives drawn from in-batch similarities.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from .distributed import all_gather_with_grad, get_rank, is_distributed


logger = logging.getLogger(__name__)

_logged_contrastive_shapes: set[tuple[int, int]] = set()


@functools.lru_cache(maxsize=16)
def _contrastive_labels(local_batch: int, rank: int, device: torch.device) -> torch.Tensor:
    # Rank r's rows sit at r * b ... r * b + b - 1 of the gathered columns.
    return torch.arange(local_batch, device=device) + rank * local_batch


def _log_contrastive_shape_once(local_batch: int, global_batch: int, logits: torch.Tensor) -> None:
    key = (local_batch, global_batch)
    if key in _logged_contrastive_shapes:
        return
    _logged_contrastive_shapes.add(key)
    logits_bytes = 2 * logits.numel() * logits.element_size()
    logger.info(
        "contrastive loss: %d local rows against a global batch of %d (%d negatives per row); "
        "logits use %d bytes per rank",
        local_batch,
        global_batch,
        global_batch - 1,
        logits_bytes,
    )


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE loss of paired, L2-normalised embeddings.

    Args:
        image_embeds: ``[b, D]`` normalised image embeddings of this rank.
        text_embeds: ``[b, D]`` normalised text embeddings of this rank (row i pairs with image i).
        logit_scale: the multiplier (already ``exp``'d); pass the tensor so its parameter gets a gradient.
        gather: score against every rank's embeddings (all-gathered with gradient). With ``False`` each
            rank only sees its own negatives, like transformers' CLIP loss.

    Returns:
        ``(CE(image -> text) + CE(text -> image)) / 2`` over this rank's rows. Averaging it over ranks
        (as DDP does with gradients) gives the loss of the concatenated global batch.
    """
    if image_embeds.dim() != 2 or image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"contrastive_loss needs image and text embeddings of the same shape [batch, dim], got "
            f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}; pass one text per image "
            "(pooled, projected features)."
        )
    local_batch = image_embeds.shape[0]
    if gather and is_distributed():
        all_image_embeds = all_gather_with_grad(image_embeds)
        all_text_embeds = all_gather_with_grad(text_embeds)
        rank = get_rank()
    else:
        all_image_embeds, all_text_embeds, rank = image_embeds, text_embeds, 0

    # Same association as open_clip (scale the rows first) so single-process values match it.
    logits_per_image = logit_scale * image_embeds @ all_text_embeds.T
    logits_per_text = logit_scale * text_embeds @ all_image_embeds.T
    _log_contrastive_shape_once(local_batch, all_text_embeds.shape[0], logits_per_image)

    labels = _contrastive_labels(local_batch, rank, image_embeds.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_j targets[i, j] * log_softmax(logits)[i, j]``."""
    if logits.shape != targets.shape:
        raise ValueError(
            f"soft targets must have the logits' shape, got logits {tuple(logits.shape)} and targets "
            f"{tuple(targets.shape)}"
        )
    return -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()


def soft_target_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-label VQA loss with soft answer scores (ban-vqa's, as ViLT trains it): binary cross-entropy averaged over
    rows and answers, times the number of answers, i.e. summed over the answers and averaged over the batch."""
    if logits.shape != targets.shape:
        raise ValueError(
            f"soft targets must have the logits' shape, got logits {tuple(logits.shape)} and targets "
            f"{tuple(targets.shape)}"
        )
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.to(logits.device, torch.float32))
    return bce * logits.shape[-1]


def soft_target_contrastive(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    targets_i2t: torch.Tensor,
    targets_t2i: torch.Tensor,
) -> torch.Tensor:
    """ALBEF/BLIP ITC: soft-target cross-entropy averaged over both directions.

    ``sim_i2t`` holds online image rows against text columns (in-batch momentum features followed by
    the queue), ``sim_t2i`` the reverse; both already divided by the temperature.
    """
    return (soft_target_cross_entropy(sim_i2t, targets_i2t) + soft_target_cross_entropy(sim_t2i, targets_t2i)) / 2


@torch.no_grad()
def distillation_targets(
    sim_m: torch.Tensor, alpha: float | torch.Tensor, hard_targets: torch.Tensor
) -> torch.Tensor:
    """Momentum-distilled targets ``alpha * softmax(sim_m) + (1 - alpha) * hard_targets`` (no gradient)."""
    if sim_m.shape != hard_targets.shape:
        raise ValueError(
            f"momentum similarities {tuple(sim_m.shape)} and hard targets {tuple(hard_targets.shape)} must "
            "have the same shape"
        )
    return alpha * F.softmax(sim_m, dim=1) + (1 - alpha) * hard_targets


@torch.no_grad()
def id_match_targets(row_ids: torch.Tensor, column_ids: torch.Tensor) -> torch.Tensor:
    """Hard targets spread uniformly over every column with the row's id (ALBEF/BLIP retrieval).

    ``row_ids`` ``[b]`` are the batch's image ids, ``column_ids`` ``[N]`` those of the similarity
    columns (batch followed by the id queue). Returns ``[b, N]`` rows that sum to one.
    """
    positives = row_ids.reshape(-1, 1) == column_ids.reshape(1, -1)
    counts = positives.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        raise ValueError(
            "a row id appears in no column; the columns must start with the batch's own ids "
            "(torch.cat([ids, id_queue]))"
        )
    return positives.float() / counts


@torch.no_grad()
def sample_hard_negatives(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    positive_mask: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    eps: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one hard negative per row for ITM, as ALBEF/BLIP do.

    Weights are ``softmax(sim, dim=1) + eps`` with every positive set to 0, and one column per row is
    drawn with ``torch.multinomial``: first a negative image for each text (from ``sim_t2i``), then a
    negative text for each image (from ``sim_i2t``) - the originals' order, and the same random stream
    as their per-row loop. ``eps`` is 0 for ALBEF and BLIP retrieval, ``1e-4`` for BLIP pretraining
    (keeps every negative reachable when softmax underflows).

    Args:
        sim_i2t: ``[b, N]`` image rows against text columns.
        sim_t2i: ``[b, N]`` text rows against image columns.
        positive_mask: bool ``[b, N]``, True where a column is a positive of the row (the diagonal, or
            equal image ids); applied to both directions.
        generator: optional ``torch.Generator`` for reproducible draws, on any device (the draw runs on its device,
            as :func:`~hf_vlp.objectives.mlm.mask_tokens` draws on the CPU: one CPU generator serves both).

    Returns:
        ``(negative_image_per_text, negative_text_per_image)``, each ``[b]`` column indices.
    """
    if sim_i2t.shape != sim_t2i.shape or positive_mask.shape != sim_i2t.shape:
        raise ValueError(
            f"sim_i2t {tuple(sim_i2t.shape)}, sim_t2i {tuple(sim_t2i.shape)} and positive_mask "
            f"{tuple(positive_mask.shape)} must have the same shape [rows, columns]"
        )
    if positive_mask.dtype != torch.bool:
        raise ValueError(f"positive_mask must be a bool tensor, got {positive_mask.dtype}")
    weights_t2i = (F.softmax(sim_t2i.float(), dim=1) + eps).masked_fill_(positive_mask, 0)
    weights_i2t = (F.softmax(sim_i2t.float(), dim=1) + eps).masked_fill_(positive_mask, 0)
    if bool((weights_t2i.sum(dim=1) <= 0).any() or (weights_i2t.sum(dim=1) <= 0).any()):
        raise ValueError(
            "a row has no negative to sample: every column is a positive (or has zero weight). Make sure "
            "each batch holds at least two different images (shuffle, larger batch, or pass eps>0)."
        )
    device = weights_t2i.device
    if generator is not None:  # draw where the generator lives (a CPU generator works with GPU similarities)
        weights_t2i, weights_i2t = weights_t2i.to(generator.device), weights_i2t.to(generator.device)
    negative_image_per_text = torch.multinomial(weights_t2i, 1, generator=generator).squeeze(1).to(device)
    negative_text_per_image = torch.multinomial(weights_i2t, 1, generator=generator).squeeze(1).to(device)
    return negative_image_per_text, negative_text_per_image
