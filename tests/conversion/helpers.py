"""Helpers shared by the converter tests: run a converter's command line in-process and edit checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conversion.common import run_cli


def converter_error(
    main: Callable, tmp_path: Path, capsys: pytest.CaptureFixture[str], checkpoint: Path, *extra: str
) -> str:
    """Run a converter's ``main`` as its command line does; assert it fails and leaves nothing in ``tmp_path`` but its
    inputs; return stderr."""
    before = set(tmp_path.iterdir())
    status = run_cli(main, ["--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"), *extra])
    assert status == 1
    assert set(tmp_path.iterdir()) == before, "a failed conversion must leave no output behind"
    return capsys.readouterr().err


def save_checkpoint(
    tmp_path: Path, state: dict[str, torch.Tensor], config: dict | None = None, name: str = "ckpt.pth"
) -> Path:
    """``state`` saved as the original training scripts do (``{'model': ..., 'config': ..., 'epoch': 0}``)."""
    path = tmp_path / name
    torch.save({"model": state, "config": config or {}, "epoch": 0}, path)
    return path
