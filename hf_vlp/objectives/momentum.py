"""Momentum (EMA) towers and feature queues for ALBEF/BLIP-style training.

A model with momentum towers keeps them as ordinary frozen submodules, so they are saved in
``model.safetensors`` and restored on resume, and lists them in ``momentum_pairs()``. The EMA step
itself runs once per optimizer step in ``hf_vlp.training.callbacks.MomentumCallback``.

Queues are ``FeatureQueue`` modules whose persistent buffers (``queue``, ``ptr``) are likewise saved
and resumed. They are filled with all-gathered features so every rank holds the same queue (DDP's
buffer broadcast then changes nothing). Each queue has its own 0-d ``ptr``; converters fill every
queue's ``ptr`` from the originals' single ``queue_ptr``/``ptr_queue`` of shape ``[1]``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..integrations.compat import LoadedKeysRecorderMixin, is_loaded_from_checkpoint


ModulePair = tuple[nn.Module, nn.Module]


class FeatureQueue(nn.Module):
    """FIFO ring buffer of ``size`` columns of ``dim`` features, stored as ``queue`` ``[dim, size]``.

    Float queues start as column-normalised Gaussian noise (as ALBEF/BLIP initialise theirs); id
    queues (``dtype=torch.long``) start filled with ``fill_value`` (-100 in the originals, an id no
    image has). ``ptr`` is the next column to write.
    """

    queue: torch.Tensor
    ptr: torch.Tensor

    def __init__(
        self,
        dim: int,
        size: int,
        *,
        dtype: torch.dtype = torch.float32,
        fill_value: int | float | None = None,
    ) -> None:
        super().__init__()
        if dim < 1 or size < 1:
            raise ValueError(f"FeatureQueue needs dim >= 1 and size >= 1, got dim={dim}, size={size}")
        if fill_value is None and not dtype.is_floating_point:
            raise ValueError(
                f"a {dtype} queue cannot start as normalised noise; pass fill_value (e.g. -100 for image ids)"
            )
        self.dim = dim
        self.size = size
        self.fill_value = fill_value
        self.register_buffer("queue", torch.empty(dim, size, dtype=dtype))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.reset_buffers()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}, dtype={self.queue.dtype}"

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """(Re)initialise ``queue`` and ``ptr``; call it from the model's ``_init_weights``.

        Buffers that transformers flagged as loaded from a checkpoint are left alone, so a restored queue is never
        overwritten.
        """
        if not is_loaded_from_checkpoint(self.queue):
            if self.fill_value is None:
                fresh = torch.randn(self.queue.shape, dtype=self.queue.dtype, device=self.queue.device)
                self.queue.copy_(nn.functional.normalize(fresh, dim=0))
            else:
                self.queue.fill_(self.fill_value)
        if not is_loaded_from_checkpoint(self.ptr):
            self.ptr.zero_()

    def with_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Columns ``[batch ; queue]`` as ``[dim, B + size]`` for similarities (no gradient to the queue)."""
        return torch.cat([self._as_columns(batch), self.queue.detach()], dim=1)

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor) -> None:
        """Write the all-gathered batch ``[B, dim]`` (or ``[B]`` for a ``dim=1`` queue) at ``ptr``.

        Pass ``hf_vlp.objectives.distributed.all_gather_no_grad(features)`` so every rank writes the same columns.
        """
        columns = self._as_columns(features)
        global_batch = columns.shape[1]
        if self.size % global_batch != 0:
            raise ValueError(
                f"queue size {self.size} is not a multiple of the global batch {global_batch} being enqueued "
                "(per-device batch x number of processes). Pick a queue size that is a multiple of it, and "
                "set dataloader_drop_last=True so the last batch is not smaller."
            )
        ptr = int(self.ptr)
        self.queue[:, ptr : ptr + global_batch] = columns
        self.ptr.fill_((ptr + global_batch) % self.size)

    def _as_columns(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dim() == 1 and self.dim == 1:
            return batch.reshape(1, -1)
        if batch.dim() != 2 or batch.shape[1] != self.dim:
            raise ValueError(
                f"expected features of shape [batch, {self.dim}] for this queue, got {tuple(batch.shape)}"
            )
        return batch.detach().T


@runtime_checkable
class MomentumModel(Protocol):
    """What ``MomentumCallback`` needs from a model."""

    momentum: float

    def momentum_pairs(self) -> list[ModulePair]: ...


def _paired_parameters(pairs: Sequence[ModulePair]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    online_params: list[nn.Parameter] = []
    momentum_params: list[nn.Parameter] = []
    for online, momentum in pairs:
        online_list = list(online.parameters())
        momentum_list = list(momentum.parameters())
        if len(online_list) != len(momentum_list):
            raise ValueError(
                f"momentum pair ({type(online).__name__}, {type(momentum).__name__}) has {len(online_list)} "
                f"online but {len(momentum_list)} momentum parameters; the momentum module must be an "
                "architectural copy of the online one"
            )
        online_params.extend(online_list)
        momentum_params.extend(momentum_list)
    return online_params, momentum_params


@torch.no_grad()
def copy_params(pairs: Sequence[ModulePair]) -> None:
    """Initialise every momentum module to its online module and freeze it (``requires_grad=False``)."""
    online_params, momentum_params = _paired_parameters(pairs)
    for param, param_m in zip(online_params, momentum_params):
        if param.shape != param_m.shape:
            raise ValueError(
                f"momentum parameter of shape {tuple(param_m.shape)} pairs with an online parameter of shape "
                f"{tuple(param.shape)}; build both modules from the same config"
            )
        param_m.copy_(param)
        param_m.requires_grad_(False)


@torch.no_grad()
def momentum_update(pairs: Sequence[ModulePair], momentum: float) -> None:
    """EMA step ``p_m = momentum * p_m + (1 - momentum) * p`` for every parameter of every pair.

    Implemented as one ``lerp_`` per device/dtype group (``p_m + (1 - momentum) * (p - p_m)``); it
    differs from the literal formula by rounding only: at most one float32 ulp of ``max(|p|, |p_m|)``
    per step (measured), and it is exact when ``p_m == p``.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    online_params, momentum_params = _paired_parameters(pairs)
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]]
    groups = defaultdict(lambda: ([], []))
    for param, param_m in zip(online_params, momentum_params):
        targets, sources = groups[(param_m.device, param_m.dtype)]
        targets.append(param_m)
        sources.append(param.detach().to(param_m.dtype))
    for targets, sources in groups.values():
        torch._foreach_lerp_(targets, sources, 1.0 - momentum)


class MomentumModelMixin(LoadedKeysRecorderMixin):
    """Helpers for a ``PreTrainedModel`` with momentum towers; it implements ``momentum_pairs()``. Put it before the
    ``PreTrainedModel`` base (``class Head(MomentumModelMixin, MyPreTrainedModel)``).

    - ``momentum`` reads ``config.momentum``.
    - ``distill_alpha`` is the current distillation weight: whatever ``MomentumCallback`` last set,
      else ``distill_alpha_max`` (``config.alpha``), so evaluation outside training uses the full weight.
    - ``itm_negative_eps`` reads ``config.itm_negative_eps`` (a class attribute may override it).
    - ``init_momentum()`` copies online -> momentum and freezes the copies (call it after ``post_init``).
    - ``freeze_momentum()`` excludes every momentum parameter from gradients.
    - ``feature_queues()`` lists the model's ``FeatureQueue`` modules by name.
    - ``from_pretrained`` re-freezes the momentum towers (loading replaces their parameters with fresh trainable
      ones, which the optimizer would otherwise update), then calls :meth:`complete_after_load` with the keys the
      checkpoint lacked. With ``copy_momentum_when_missing = True`` a checkpoint without momentum towers (``momentum_*``
      keys; list them in ``_keys_to_ignore_on_load_missing``) starts them as copies of the loaded online towers.
    """

    copy_momentum_when_missing: bool = False

    @property
    def momentum(self) -> float:
        return float(self.config.momentum)

    @property
    def distill_alpha_max(self) -> float:
        return float(self.config.alpha)

    @property
    def distill_alpha(self) -> float:
        return self.__dict__.get("_distill_alpha", self.distill_alpha_max)

    @distill_alpha.setter
    def distill_alpha(self, value: float) -> None:
        self.__dict__["_distill_alpha"] = float(value)

    @property
    def itm_negative_eps(self) -> float:
        """Added to the ITM hard-negative sampling weights: ``config.itm_negative_eps > 0`` keeps every negative
        reachable once the softmax underflows (tiny models, very low ``temp``)."""
        return float(self.config.itm_negative_eps)

    def init_momentum(self) -> None:
        copy_params(self.momentum_pairs())

    def freeze_momentum(self) -> None:
        """Exclude every momentum parameter from gradients (they change only by the EMA)."""
        for _, momentum in self.momentum_pairs():
            momentum.requires_grad_(False)

    def feature_queues(self) -> list[tuple[str, FeatureQueue]]:
        return [(name, module) for name, module in self.named_modules() if isinstance(module, FeatureQueue)]

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained``, then re-freeze the momentum towers and :meth:`complete_after_load`."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        model.freeze_momentum()
        model.complete_after_load(model.missing_keys_on_load())
        return loaded

    def complete_after_load(self, missing_keys: tuple[str, ...]) -> None:
        """Fill in what a loaded checkpoint lacked (``missing_keys``, before ``_keys_to_ignore_on_load_missing`` is
        applied). Copies the online towers into absent momentum towers when ``copy_momentum_when_missing``,
        and aligns a fresh ``idx_queue`` with the feature queues' pointer; overrides add their own (call ``super()``)."""
        if self.copy_momentum_when_missing and any(key.startswith("momentum_") for key in missing_keys):
            self.init_momentum()
        id_queue, image_queue = getattr(self, "idx_queue", None), getattr(self, "image_queue", None)
        if id_queue is not None and image_queue is not None and any(k.startswith("idx_queue.") for k in missing_keys):
            # a retrieval head loaded from pre-training: ids must keep landing in the feature queues' columns (the
            # originals use one pointer for all three queues)
            id_queue.queue.fill_(-100)
            id_queue.ptr.copy_(image_queue.ptr)
