"""Process-group helpers that are exact no-ops on a single process.

Contrastive losses need every rank's features (``all_gather_with_grad``); momentum queues need the
same global batch on every rank (``all_gather_no_grad``). Both concatenate along dim 0 in rank order,
so rank ``r`` owns rows ``r * b : (r + 1) * b`` of the result. Without an initialised process group
(or with a world of one) the input is returned unchanged.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when an initialised process group has more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """Rank of this process, 0 without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def get_world_size() -> int:
    """Number of processes, 1 without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _gather_with_autograd_function(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed.nn.functional as dist_nn

    # torch >= 2.9 marks this public function deprecated in favour of a private module; it stays
    # correct (backward = reduce-scatter of the gradient), so the warning is silenced here only.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*all_gather is deprecated.*")
        parts = dist_nn.all_gather(tensor)
    return torch.cat(parts, dim=0)


def _gather_with_functional_collectives(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed._functional_collectives as funcol

    gathered = funcol.all_gather_single_autograd(tensor, 0, dist.group.WORLD)
    return funcol.wait_tensor(gathered)


def _public_autograd_gather_available() -> bool:
    try:
        import torch.distributed.nn.functional as dist_nn
    except ImportError:
        return False
    return hasattr(dist_nn, "all_gather")


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping the autograd graph.

    The backward pass sums, over ranks, the gradient each rank computed for this rank's rows, so a
    local loss averaged by DDP yields exactly the single-process gradient of the global-batch loss.
    Every rank must pass the same shape (use ``dataloader_drop_last=True``).
    """
    if not is_distributed():
        return tensor
    tensor = tensor.contiguous()
    if torch.compiler.is_compiling() or not _public_autograd_gather_available():
        return _gather_with_functional_collectives(tensor)
    return _gather_with_autograd_function(tensor)


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 without gradient (queues, hard negatives)."""
    if not is_distributed():
        return tensor.detach()
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)
