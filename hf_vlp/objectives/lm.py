"""Language-modelling losses on decoder logits: next-token cross-entropy with the shift done here, optional label
smoothing, per-sequence sums (answer scoring) and distillation from a teacher's logits.

Model-agnostic: BLIP's captioning/VQA and ALBEF's answer decoder use them; CoCa's captioning loss is the same."""

from __future__ import annotations

import torch
from torch import nn

IGNORE_INDEX = -100


def shifted_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0, per_sequence: bool = False
) -> torch.Tensor:
    """Next-token cross-entropy of ``logits`` ``[B, L, V]`` against ``labels`` ``[B, L]`` aligned with the inputs
    (shifted here: position t predicts label t + 1), ``-100`` ignored, with ``label_smoothing`` (med.py's
    ``BertLMHeadModel``).

    Returns the mean over labelled positions, or with ``per_sequence`` the sum per row ``[B]`` (the original's
    ``reduction='none'``, used for VQA answers). Zero, with a gradient path, when nothing is labelled.
    """
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
    targets = labels[:, 1:].to(logits.device)
    if per_sequence:
        losses = nn.functional.cross_entropy(
            shifted, targets.reshape(-1), ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing, reduction="none"
        )
        return losses.view(targets.shape).sum(dim=1)
    if not bool((targets != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return nn.functional.cross_entropy(
        shifted, targets.reshape(-1), ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing
    )


def summed_answer_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    alpha: float = 0.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-answer summed next-token cross-entropy over ``labels != -100`` (xbert's ``BertLMHeadModel`` with
    ``reduction='none'``; BLIP's label-smoothed with ``label_smoothing``), with ``teacher_logits`` mixed in as
    ``(1 - alpha) * CE + alpha * soft-CE``."""
    hard = shifted_lm_loss(logits, labels, label_smoothing, per_sequence=True)
    if teacher_logits is None:
        return hard
    labelled = labels[:, 1:].to(logits.device) != IGNORE_INDEX
    soft_targets = nn.functional.softmax(teacher_logits[:, :-1], dim=-1)
    soft = -(nn.functional.log_softmax(logits[:, :-1], dim=-1) * soft_targets).sum(dim=-1)
    soft = (soft * labelled).sum(dim=1)
    return (1 - alpha) * hard + alpha * soft


__all__ = ["IGNORE_INDEX", "shifted_lm_loss", "summed_answer_losses"]
