"""FSDP support: what a model needs before ``fully_shard``, and how a sharded run measures itself.

FSDP2 (``--fsdp``, the Trainer's default version) shards every parameter along its first dimension, so a 0-d parameter
(CLIP's ``logit_scale``, ALBEF's and BLIP's ``temp``) cannot be sharded. :func:`vectorize_scalar_parameters` turns
each into a 1-element vector for the run; the model keeps their names in ``vectorized_scalar_parameters`` and
``save_pretrained`` writes them back as scalars (:func:`savable_state_dict`), so a checkpoint or final model saved
under FSDP has exactly the keys and shapes of one saved without it.

Momentum towers need nothing: a momentum tower is an architectural copy of its online tower, the auto-wrap policy
(``_no_split_modules``) wraps both the same way, and each parameter is sharded along dim 0 over the same device mesh,
so every process holds the same slice of an online parameter and of its momentum copy. The EMA
(:func:`~hf_vlp.objectives.momentum.momentum_update`) then runs on the local shards with no communication, and the
feature queues, which are buffers, stay replicated: every process enqueues the same all-gathered batch.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Mapping

import torch
from torch import nn

VECTORIZED_ATTRIBUTE = "vectorized_scalar_parameters"


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attribute = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attribute


@torch.no_grad()
def vectorize_scalar_parameters(model: nn.Module) -> list[str]:
    """Replace every 0-d parameter of ``model`` by a 1-element parameter with the same value and ``requires_grad``
    (the model's arithmetic broadcasts either shape); returns their names, also recorded on the model."""
    names = [name for name, param in model.named_parameters() if param.dim() == 0]
    for name in names:
        owner, attribute = _owner(model, name)
        scalar = getattr(owner, attribute)
        setattr(owner, attribute, nn.Parameter(scalar.detach().reshape(1).clone(), requires_grad=scalar.requires_grad))
    recorded = [*getattr(model, VECTORIZED_ATTRIBUTE, ()), *names]
    model.__dict__[VECTORIZED_ATTRIBUTE] = tuple(recorded)
    return names


def savable_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict gathered from shards (or handed to ``save_pretrained``) as the model would save its own: the
    parameters :func:`vectorize_scalar_parameters` vectorised back to 0-d, and without the tied copies
    (``all_tied_weights_keys`` targets whose source is present), which a gathered state dict holds as separate
    tensors, so transformers cannot see that they are shared."""
    vectorized = set(getattr(model, VECTORIZED_ATTRIBUTE, ()))
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return {
        name: tensor.reshape(()) if name in vectorized and tensor.numel() == 1 else tensor
        for name, tensor in state_dict.items()
        if not (name in tied and tied[name] in state_dict)
    }


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def local_parameter_fraction(model: nn.Module) -> float:
    """The share of the model's parameter elements this process holds (1.0 unsharded, about 1/N under FSDP on N
    processes)."""
    from torch.distributed.tensor import DTensor

    total = local = 0
    for param in model.parameters():
        total += param.numel()
        local += param.to_local().numel() if isinstance(param, DTensor) else param.numel()
    return local / total if total else 1.0
