"""Running one function on every rank of a spawned gloo group, and the check every "DDP is one job" test makes: the
mean of the ranks' loss terms equals the single-process run's on the global batch.

``torch.multiprocessing.spawn`` pickles the function by its qualified name, so it must live at module level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ATOL = RTOL = 1e-5


def _rank_main(rank: int, world_size: int, out_dir: str, function: Callable[[int], Any]) -> None:
    out = Path(out_dir)
    dist.init_process_group("gloo", init_method=f"file://{out}/rdzv", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        torch.save(function(rank), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_ranks(function: Callable[[int], Any], world_size: int, out_dir: Path) -> list[Any]:
    """``function(rank)`` on each of ``world_size`` spawned processes forming one gloo group (rendezvous and results
    in ``out_dir``, one thread each); the results, in rank order."""
    mp.spawn(_rank_main, args=(world_size, str(out_dir), function), nprocs=world_size, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]


def assert_mean_rank_terms_equal_the_reference(
    ranks: Sequence[dict[str, Any]], reference: dict[str, Any], names: Sequence[str], steps: int
) -> None:
    """Per step and loss term (``record["terms"][step][name]``), the mean over the ranks equals the reference's."""
    for step in range(steps):
        for name in names:
            mean = torch.stack([result["terms"][step][name] for result in ranks]).mean()
            torch.testing.assert_close(mean, reference["terms"][step][name], atol=ATOL, rtol=RTOL,
                                       msg=f"step {step} {name}")
