"""One progress bar per evaluation: every batch an evaluation function processes inside :func:`evaluation_progress`
advances the same bar, whichever metric family (embeddings, ITM re-ranking, VQA ranking, captioning) it belongs to."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from tqdm.auto import tqdm

_BAR: ContextVar[tqdm | None] = ContextVar("hf_vlp_evaluation_bar", default=None)


@contextlib.contextmanager
def evaluation_progress(description: str, disable: bool = False) -> Iterator[tqdm]:
    """Show one bar named ``description`` (batches done, rate) for everything evaluated inside the block."""
    bar = tqdm(desc=description, unit=" batches", disable=disable, dynamic_ncols=True)
    token = _BAR.set(bar)
    try:
        yield bar
    finally:
        _BAR.reset(token)
        bar.close()


def advance(batches: int = 1) -> None:
    """Count ``batches`` on the current evaluation's bar (nothing outside :func:`evaluation_progress`)."""
    bar = _BAR.get()
    if bar is not None:
        bar.update(batches)
