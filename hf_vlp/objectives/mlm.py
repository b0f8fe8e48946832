"""Masked language modelling: BERT-style token masking and the MLM loss distilled from a momentum teacher.

Model-agnostic (ALBEF today; ViLT and VLMo mask the same way): the functions take ids, logits and labels only.
"""

from __future__ import annotations

import torch
from torch import nn


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    vocab_size: int,
    mask_token_id: int,
    special_token_ids: tuple[int, ...],
    mlm_probability: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ALBEF's ``mask()``: each token except ``special_token_ids`` (``[PAD]``, ``[CLS]``) is picked with
    ``mlm_probability``; of those 80% become ``mask_token_id``, half the rest a uniform random id, the rest stay.

    Returns ``(masked_input_ids, labels)`` with labels -100 on unpicked tokens. The draws follow the original's
    order (pick, replace, random, random ids) so a seeded run consumes the random stream the same way.
    """
    device = input_ids.device
    masked_ids, labels = input_ids.clone(), input_ids.clone()

    def bernoulli(probability: float) -> torch.Tensor:
        return torch.bernoulli(torch.full(input_ids.shape, probability), generator=generator).bool().to(device)

    picked = bernoulli(mlm_probability)
    for token_id in special_token_ids:
        picked &= input_ids != token_id
    labels[~picked] = -100
    replaced = bernoulli(0.8) & picked
    masked_ids[replaced] = mask_token_id
    randomised = bernoulli(0.5) & picked & ~replaced
    random_ids = torch.randint(vocab_size, input_ids.shape, dtype=torch.long, generator=generator).to(device)
    masked_ids[randomised] = random_ids[randomised]
    return masked_ids, labels


def distilled_mlm_loss(
    logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, alpha: float
) -> torch.Tensor:
    """``(1 - alpha) * CE + alpha * soft-CE against softmax(teacher_logits)``, both averaged over labelled tokens
    (xbert's ``BertForMaskedLM`` with ``soft_labels``). Zero, with a gradient path, when nothing is labelled."""
    labelled = labels != -100
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    log_probs = nn.functional.log_softmax(logits[labelled], dim=-1)
    hard = nn.functional.nll_loss(log_probs, labels[labelled])
    soft = -(log_probs * nn.functional.softmax(teacher_logits[labelled], dim=-1)).sum(dim=-1).mean()
    return (1 - alpha) * hard + alpha * soft


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain MLM cross-entropy of ``logits`` ``[B, L, V]`` over ``labels != -100`` (no shift)."""
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.to(logits.device).reshape(-1), ignore_index=-100
    )


__all__ = ["distilled_mlm_loss", "mask_tokens", "masked_lm_loss"]
