"""Word-patch alignment (ViLT's WPA): an optimal-transport distance between text and image tokens, solved by IPOT.

Model-agnostic: the functions take final hidden states and masks only.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _cosine_cost(text: torch.Tensor, image: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``1 - cos(t_i, v_j)`` for every pair: ``[B, Lt, D] x [B, Li, D] -> [B, Lt, Li]``."""
    text = F.normalize(text, p=2, dim=-1, eps=eps)
    image = F.normalize(image, p=2, dim=-1, eps=eps)
    return 1 - text @ image.transpose(1, 2)


@torch.no_grad()
def _ipot_plan(
    cost: torch.Tensor, text_valid: torch.Tensor, image_valid: torch.Tensor, beta: float, iterations: int,
    inner_steps: int,
) -> torch.Tensor:
    """Inexact proximal-point OT plan ``T [B, Li, Lt]`` for ``cost [B, Lt, Li]`` (Xie et al. 2020), with
    uniform marginals over the valid tokens; entries involving an invalid token are 0."""
    dtype = cost.dtype
    joint_valid = image_valid.unsqueeze(-1) & text_valid.unsqueeze(-2)  # [B, Li, Lt]
    text_len = text_valid.sum(dim=1).to(dtype).view(-1, 1, 1)
    image_len = image_valid.sum(dim=1).to(dtype).view(-1, 1, 1)
    text_pad = (~text_valid).to(dtype).unsqueeze(1) * 1e4  # [B, 1, Lt]
    image_pad = (~image_valid).to(dtype).unsqueeze(1) * 1e4  # [B, 1, Li]

    kernel = torch.exp(-cost.transpose(1, 2) / beta) * joint_valid  # A, [B, Li, Lt]
    plan = joint_valid.to(dtype)  # T starts at ones on valid pairs
    sigma = (text_valid.to(dtype) / text_len.view(-1, 1).clamp(min=1)).unsqueeze(-1)  # [B, Lt, 1]
    delta = None
    for _ in range(iterations):
        q = kernel * plan
        for _ in range(inner_steps):
            delta = 1 / (image_len * (q @ sigma).transpose(1, 2) + image_pad)  # [B, 1, Li]
            sigma = (1 / (text_len * (delta @ q) + text_pad)).transpose(1, 2)  # [B, Lt, 1]
        plan = delta.transpose(1, 2) * q * sigma.transpose(1, 2)
    # Rows without any valid pair produce inf * 0 above; they carry no mass.
    return torch.where(joint_valid, plan, torch.zeros((), dtype=dtype, device=plan.device))


def word_patch_alignment_distance(
    text_states: torch.Tensor,
    image_states: torch.Tensor,
    text_mask: torch.Tensor,
    image_mask: torch.Tensor,
    *,
    beta: float = 0.5,
    iterations: int = 50,
    inner_steps: int = 1,
) -> torch.Tensor:
    """ViLT's per-pair WPA distance ``trace(C T)`` (``compute_itm_wpa``), computed in float32 with autocast off.

    Args:
        text_states: ``[B, Lt, D]`` final text hidden states, ``[CLS]`` first.
        image_states: ``[B, Li, D]`` final image hidden states, image cls first.
        text_mask: ``[B, Lt]``, 1 on real tokens; right padding assumed (the last real token is ``[SEP]``).
        image_mask: ``[B, Li]``, 1 on the image cls and real patches.
        beta, iterations, inner_steps: IPOT proximal weight, outer iterations and inner Sinkhorn steps.

    Excluded tokens: text position 0, the last real text token, image position 0 and all padding.
    The cost is ``1 - cosine`` (0 on excluded pairs); the plan is solved under no_grad, so the
    gradient flows only through the cost. Returns a float32 tensor ``[B]``.
    """
    batch = text_mask.shape[0]
    device = text_states.device
    text_valid = text_mask.to(device=device).bool().clone()
    image_valid = image_mask.to(device=device).bool().clone()
    last = (text_valid.sum(dim=1) - 1).clamp(min=0)
    text_valid[torch.arange(batch, device=device), last] = False
    text_valid[:, 0] = False
    image_valid[:, 0] = False

    with torch.autocast(device_type=device.type, enabled=False):
        cost = _cosine_cost(text_states.float(), image_states.float())
        joint_valid = text_valid.unsqueeze(-1) & image_valid.unsqueeze(-2)  # [B, Lt, Li]
        cost = cost.masked_fill(~joint_valid, 0)
        plan = _ipot_plan(cost.detach(), text_valid, image_valid, beta, iterations, inner_steps)
        # trace(C @ T) = sum_ij C_ij T_ji
        return (cost * plan.transpose(1, 2)).sum(dim=(1, 2))


def wpa_loss(distance: torch.Tensor, itm_labels: torch.Tensor, weight: float = 0.1) -> torch.Tensor:
    """``weight * (sum of distances of matched pairs - sum of distances of mismatched pairs) / B``."""
    labels = itm_labels.to(distance.device)
    signed = torch.where(labels == 1, distance, torch.where(labels == 0, -distance, torch.zeros_like(distance)))
    return weight * signed.sum() / distance.shape[0]


__all__ = ["word_patch_alignment_distance", "wpa_loss"]
