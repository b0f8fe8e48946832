"""Shared machinery of the ``convert_<family>.py`` scripts: read a checkpoint, map its keys strictly, write atomically.

A converter describes its key mapping as a list of rules (:class:`Rename`, :class:`Fuse`, :class:`Drop`) and lets
:func:`map_state_dict` and :func:`load_mapped_state_dict` enforce the contract of DESIGN.md §4: every source key is
consumed or explicitly dropped, every target key is filled, every shape matches, or a :class:`ConversionError`
names all offending keys at once. Output directories are built next to the destination and renamed into place
only when everything succeeded (:func:`write_output_dir`), so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hf_vlp.utils.checkpoints import (  # noqa: F401  (re-exported: the converters import them from here)
    Checkpoint,
    ConversionError,
    Drop,
    Fuse,
    MAX_LISTED_KEYS,
    MappedStateDict,
    MappingRule,
    PARALLEL_PREFIXES,
    Rename,
    SAFETENSORS_SUFFIX,
    WRAPPER_KEYS,
    check_mapped_state_dict,
    filter_prefix,
    is_torchscript_archive,
    load_mapped_state_dict,
    map_state_dict,
    prepare_torchscript_for_cpu,
    read_checkpoint,
    read_transformers_weights,
    transpose,
    unwrap_state_dict,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- verification


def max_abs_differences(
    reference: Mapping[str, torch.Tensor], converted: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """``max |reference - converted|`` per name (names present in both), as Python floats."""
    differences = {}
    for name, expected in reference.items():
        actual = converted[name]
        if expected.shape != actual.shape:
            raise ConversionError(
                f"Verification: {name} has shape {list(actual.shape)} in the converted model but "
                f"{list(expected.shape)} in the source model."
            )
        differences[name] = float((expected.float() - actual.float()).abs().max())
    return differences


def check_differences(differences: Mapping[str, float], atol: float, source: str) -> None:
    """Raise when any difference exceeds ``atol`` (NaN counts as exceeding), naming every failing output."""
    failing = {name: value for name, value in differences.items() if not value <= atol}
    if failing:
        listed = ", ".join(f"{name} {value:.3g}" for name, value in failing.items())
        raise ConversionError(
            f"Verification against {source} failed: max |diff| above {atol:g} for {listed}. The converted model does "
            "not reproduce the source; check the configuration (e.g. head counts via --original-config)."
        )


def format_differences(differences: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {value:.2e}" for name, value in differences.items())


# --------------------------------------------------------------------------------------------------- output


def check_output_dir(output: str | Path, overwrite: bool) -> Path:
    """Fail early when ``output`` exists as a file, or as a non-empty directory without ``overwrite``."""
    output = Path(output)
    if output.exists():
        if not output.is_dir():
            raise ConversionError(f"Output path {output} exists and is not a directory; choose another --output.")
        if any(output.iterdir()) and not overwrite:
            raise ConversionError(
                f"Output directory {output} exists and is not empty; pass --overwrite to replace it or choose another."
            )
    return output


def write_output_dir(output: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Run ``write(tmp_dir)`` in a temporary directory next to ``output`` and rename it into place at the end.

    On any error the temporary directory is removed and an existing ``output`` is left untouched. With
    ``overwrite`` a previous non-empty ``output`` is replaced only after the new one is complete.
    """
    output = check_output_dir(output, overwrite).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.converting-", dir=output.parent))
    try:
        write(staging)
        if output.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{output.name}.replaced-", dir=output.parent))
            os.replace(output, retired / output.name)
            try:
                os.replace(staging, output)
            except BaseException:
                os.replace(retired / output.name, output)
                raise
            finally:
                shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def command_line(argv: Sequence[str] | None = None, program: str | None = None) -> str:
    """The command that ran this conversion, shell-quoted, for the model card."""
    import shlex

    argv = list(sys.argv[1:] if argv is None else argv)
    program = program or f"python {Path(sys.argv[0]).as_posix()}"
    return " ".join([program, *(shlex.quote(arg) for arg in argv)])


# --------------------------------------------------------------------------------------------------- CLI


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run a converter's ``main``; a :class:`ConversionError` becomes a one-paragraph message and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        main(argv)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
