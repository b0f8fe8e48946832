"""Trainer checkpoints that are complete or absent, and the checks made before resuming or loading a saved model.

The stock Trainer writes ``checkpoint-N/`` file by file (weights, optimizer, scheduler, RNG state, and
``trainer_state.json`` last); a kill or a full disk in between leaves a folder that looks like a checkpoint but cannot
be resumed. :class:`CheckpointCompletionCallback` makes completeness explicit with public callback events only:

- ``on_step_end``: a ``checkpoint-N`` of the step just finished that already exists (left by an earlier run, about to
  be overwritten or stale) loses its marker first;
- ``on_save`` (after the Trainer wrote every file of ``checkpoint-N``): the files are flushed to disk, then
  ``checkpoint-N/.complete`` is written atomically (a temporary name renamed), listing every file and its size.

:func:`resolve_resume_checkpoint` resolves ``--resume-from-checkpoint last`` to the newest complete checkpoint, skipping
(with a warning naming them) folders without the marker, with a file of another size than the marker records, or with
a truncated weights / optimizer / RNG file. Folders written before the marker existed (no checkpoint of the output
folder has one) are judged by their files alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# what the Trainer writes under FSDP besides (FULL_STATE_DICT) or instead of (SHARDED_STATE_DICT) the model files:
# pytorch_model_fsdp.bin, or a pytorch_model_fsdp_0/ folder of shards
FSDP_WEIGHTS_PREFIX = "pytorch_model_fsdp"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")

__all__ = [
    "COMPLETE_MARKER",
    "CheckpointCompletionCallback",
    "check_checkpoint_architecture",
    "check_saved_model_files",
    "checkpoint_folders",
    "checkpoint_global_step",
    "checkpoint_problem",
    "checkpoint_step",
    "file_problem",
    "mark_complete",
    "resolve_resume_checkpoint",
]


# ------------------------------------------------------------------------------------------------ file checks


def file_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole file of its kind (``None`` when it looks whole), from its size and framing only:
    a safetensors file must be exactly header + data long, a torch archive must end with its zip directory, a JSON
    file must parse."""
    name = str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{name} is missing"
    if path.suffix == ".safetensors":
        return _safetensors_problem(path, size)
    if path.suffix in _TORCH_SUFFIXES:
        if size == 0:
            return f"{name} is empty (0 bytes): the save was cut short"
        with path.open("rb") as handle:
            magic = handle.read(4)
        if magic != b"PK\x03\x04":
            return None  # the legacy (pickle) torch format has no directory to check
        try:
            with zipfile.ZipFile(path):
                return None
        except (zipfile.BadZipFile, OSError) as error:
            return f"{name} is truncated or corrupt ({size} bytes; {error})"
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            return f"{name} is truncated or not JSON ({error})"
    return None


def _safetensors_problem(path: Path, size: int) -> str | None:
    name = str(path)
    if size < 8:
        return f"{name} is truncated ({size} bytes, not even a safetensors header)"
    with path.open("rb") as handle:
        (header_length,) = struct.unpack("<Q", handle.read(8))
        if 8 + header_length > size:
            return f"{name} is truncated ({size} bytes; its header alone needs {8 + header_length})"
        try:
            header = json.loads(handle.read(header_length))
        except (ValueError, UnicodeDecodeError) as error:
            return f"{name} is corrupt (unreadable safetensors header: {error})"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_length + max(ends, default=0)
    if size != expected:
        return f"{name} is truncated or corrupt ({size} bytes; its header describes {expected})"
    return None


def check_saved_model_files(directory: str | Path, model_class: type | None = None) -> None:
    """Raise a one-line ``ValueError`` when a saved model directory cannot be loaded as ``model_class``: a config
    whose ``model_type`` is not the class's, or a truncated weights file (named)."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if config_file.is_file():
        problem = file_problem(config_file)
        if problem:
            raise ValueError(problem)
        config = json.loads(config_file.read_text(encoding="utf-8"))
        expected = getattr(getattr(model_class, "config_class", None), "model_type", None)
        if expected and config.get("model_type") != expected:
            raise ValueError(
                f"{config_file} has model_type {config.get('model_type')!r}, but its model class "
                f"{model_class.__name__} needs {expected!r}: the folder mixes files of different models; "
                "save it again with save_pretrained."
            )
    weights = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("pytorch_model*.bin"))
    for path in weights:
        problem = file_problem(path)
        if problem:
            raise ValueError(f"Cannot load the model in {directory}: {problem}.")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
            missing = sorted(shard for shard in shards if not (directory / shard).is_file())
            if missing:
                raise ValueError(f"Cannot load the model in {directory}: {index_name} lists missing shards {missing}.")


# ---------------------------------------------------------------------------------------- checkpoint checks


def checkpoint_step(path: str | Path) -> int | None:
    """N of a ``checkpoint-N`` folder name, else ``None``."""
    match = _CHECKPOINT.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, newest (highest N) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    folders = [path for path in output_dir.iterdir() if path.is_dir() and checkpoint_step(path) is not None]
    return sorted(folders, key=checkpoint_step, reverse=True)


def _uses_markers(output_dir: Path) -> bool:
    return any((folder / COMPLETE_MARKER).is_file() for folder in checkpoint_folders(output_dir))


def checkpoint_problem(folder: str | Path, require_marker: bool | None = None) -> str | None:
    """Why ``folder`` is not a complete, intact checkpoint (``None`` when it is).

    ``require_marker``: demand the ``.complete`` marker (default: when any checkpoint next to it has one, i.e. the
    output folder was written with :class:`CheckpointCompletionCallback`)."""
    folder = Path(folder)
    if require_marker is None:
        require_marker = _uses_markers(folder.parent)
    marker = folder / COMPLETE_MARKER
    if marker.is_file():
        try:
            recorded: dict[str, int] = json.loads(marker.read_text(encoding="utf-8"))["files"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return f"its {COMPLETE_MARKER} marker is unreadable"
        for name, size in recorded.items():
            path = folder / name
            if not path.is_file():
                return f"{path} is missing"
            if path.stat().st_size != size:
                return f"{path} is truncated or was changed ({path.stat().st_size} bytes; {size} were saved)"
    elif require_marker:
        return f"it has no {COMPLETE_MARKER} marker: the save was interrupted (killed, or the disk was full)"
    if not (folder / TRAINER_STATE).is_file():
        return f"{folder / TRAINER_STATE} is missing: the save was interrupted"
    fsdp_weights = any(path.name.startswith(FSDP_WEIGHTS_PREFIX) for path in folder.iterdir())
    if not fsdp_weights and not any((folder / name).is_file() for name in WEIGHT_FILES):
        return f"it holds no model weights ({' / '.join(WEIGHT_FILES[::2])} / {FSDP_WEIGHTS_PREFIX}*)"
    for path in sorted(folder.iterdir()):
        if path.is_file() and (path.suffix in (*_TORCH_SUFFIXES, ".safetensors") or path.name == TRAINER_STATE):
            problem = file_problem(path)
            if problem:
                return problem
    return None


def _intact_before(folder: Path, require_marker: bool) -> Path | None:
    step = checkpoint_step(folder)
    for candidate in checkpoint_folders(folder.parent):
        if candidate != folder and (step is None or checkpoint_step(candidate) < step):
            if checkpoint_problem(candidate, require_marker) is None:
                return candidate
    return None


def resolve_resume_checkpoint(resume: str | None, output_dir: str) -> str | None:
    """The checkpoint folder to resume from: ``None`` for no resume; ``last``/``true``: the newest complete
    checkpoint of ``output_dir`` (incomplete ones are skipped with a warning naming them); otherwise ``resume``
    itself, which must be complete (else a ``ValueError`` naming the bad file and the newest intact earlier one)."""
    if resume in (None, "", "false", "False"):
        return None
    if resume in ("last", "true", "True"):
        folders = checkpoint_folders(output_dir)
        if not folders:
            raise FileNotFoundError(f"--resume-from-checkpoint {resume}: no checkpoint-* folder in {output_dir}")
        require_marker = _uses_markers(Path(output_dir))
        skipped = []
        for folder in folders:
            problem = checkpoint_problem(folder, require_marker)
            if problem is None:
                for name, reason in skipped:
                    logger.warning("--resume-from-checkpoint %s: skipping the incomplete %s (%s).", resume, name, reason)
                if skipped:
                    logger.warning("--resume-from-checkpoint %s: resuming from %s, the newest complete one.", resume, folder)
                return str(folder)
            skipped.append((str(folder), problem))
        listed = "; ".join(f"{name}: {reason}" for name, reason in skipped)
        raise ValueError(
            f"--resume-from-checkpoint {resume}: no complete checkpoint in {output_dir} ({listed}). Start again with "
            "--overwrite-output-dir."
        )
    folder = Path(resume)
    if not folder.is_dir():
        raise FileNotFoundError(f"--resume-from-checkpoint: {resume} is not a checkpoint folder")
    require_marker = _uses_markers(folder.parent)
    problem = checkpoint_problem(folder, require_marker)
    if problem is not None:
        earlier = _intact_before(folder, require_marker)
        hint = (
            f"The earlier checkpoint {earlier} is intact: resume from it (--resume-from-checkpoint {earlier}, or last)."
            if earlier is not None
            else f"No earlier checkpoint in {folder.parent} is intact."
        )
        raise ValueError(f"Cannot resume from {resume}: {problem}. {hint}")
    return str(folder)


def checkpoint_global_step(folder: str | Path) -> int | None:
    """The ``global_step`` a checkpoint's ``trainer_state.json`` records."""
    try:
        return int(json.loads((Path(folder) / TRAINER_STATE).read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_checkpoint_architecture(folder: str | Path, model: Any, what: str) -> None:
    """A ``ValueError`` when the checkpoint was written by another model class than ``model``'s (the Trainer would
    otherwise load the weights non-strictly and fail on the optimizer's parameter groups)."""
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    saved = (config.get("architectures") or [None])[0]
    trained = type(model).__name__
    if saved is not None and saved != trained:
        saved_type = config.get("model_type", "?")
        trained_type = getattr(getattr(model, "config", None), "model_type", "?")
        raise ValueError(
            f"Cannot resume from {folder}: it is a checkpoint of another architecture ({saved}, model_type "
            f"{saved_type!r}), but this run trains {trained} (model_type {trained_type!r}, {what}). Resume from a "
            "checkpoint of this architecture and task, or use another --output-dir."
        )


# ------------------------------------------------------------------------------------------------- marking


def mark_complete(folder: str | Path, global_step: int | None = None) -> None:
    """Flush every file of ``folder`` to disk, then write ``folder/.complete`` (file names and sizes) atomically."""
    folder = Path(folder)
    files: dict[str, int] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != COMPLETE_MARKER and not path.name.startswith(COMPLETE_MARKER):
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
    temporary = folder / f"{COMPLETE_MARKER}.tmp"
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump({"global_step": global_step, "files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, folder / COMPLETE_MARKER)
    _fsync_directory(folder)


def _fsync_directory(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _unmark(folder: Path) -> None:
    marker = folder / COMPLETE_MARKER
    if marker.is_file():
        marker.unlink()
        _fsync_directory(folder)


class CheckpointCompletionCallback(TrainerCallback):
    """Marks each ``checkpoint-N`` complete once the Trainer has written all of it (see the module docstring)."""

    @staticmethod
    def _folder(args: TrainingArguments, state: TrainerState) -> Path:
        return Path(args.output_dir) / f"checkpoint-{state.global_step}"

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        # the Trainer's flow callback (first in the list) has decided whether this step saves
        if args.should_save and control.should_save:
            _unmark(self._folder(args, state))  # a leftover of an earlier run is about to be rewritten

    on_epoch_end = on_step_end

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # every process has written its part (its RNG state)
        folder = self._folder(args, state)
        if args.should_save and folder.is_dir():
            mark_complete(folder, state.global_step)
