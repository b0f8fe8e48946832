"""Dataset spec strings: what kind of source a spec names (synthetic, imagefolder, captions table, saved, webdataset
shards or hub id), decided from the string and directory listings alone; see :mod:`hf_vlp.training.data`."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_vlp import synthetic

CAPTION_TABLE_NAMES = ("captions.csv", "captions.tsv", "captions.jsonl")
METADATA_NAMES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
SYNTHETIC_OPTIONS = {"n": "num_samples", "size": "image_size", "seed": "seed", "task": "task"}
SAVED_DATASET_FILES = ("dataset_dict.json", "state.json")  # save_to_disk of a DatasetDict / of one Dataset
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset spec: ``kind`` is synthetic, imagefolder, captions_table, saved, webdataset or hub."""

    kind: str
    location: str
    options: dict[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` alternatives and ``{000..009}`` numeric ranges (zero padding kept), like a shell."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        start, stop = numeric.groups()
        width = len(start) if start.startswith("0") else 0
        step = 1 if int(stop) >= int(start) else -1
        choices = [str(value).zfill(width) for value in range(int(start), int(stop) + step, step)]
    else:
        choices = body.split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def _find_shards(pattern: str) -> list[str]:
    shards: list[str] = []
    for expanded in expand_braces(os.path.expanduser(pattern)):
        if glob.has_magic(expanded):
            matches = sorted(glob.glob(expanded))
        else:
            matches = [expanded] if os.path.exists(expanded) else []
        shards += [path for path in matches if path not in shards]
    if not shards:
        raise FileNotFoundError(f"No webdataset shards match {pattern!r}; check the path, glob or brace pattern.")
    return shards


def _parse_synthetic_options(text: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in SYNTHETIC_OPTIONS:
            raise ValueError(
                f"Bad option {item!r} in the {synthetic.SYNTHETIC_DATASET_NAME} spec; expected key=value with keys "
                f"{sorted(SYNTHETIC_OPTIONS)}, e.g. '{synthetic.SYNTHETIC_DATASET_NAME}:n=2000,size=64,seed=0'."
            )
        name = SYNTHETIC_OPTIONS[key]
        if name == "task":
            options[name] = value.strip()
        else:
            try:
                options[name] = int(value)
            except ValueError:
                raise ValueError(
                    f"Option {key!r} of the {synthetic.SYNTHETIC_DATASET_NAME} spec must be an integer, got {value!r}."
                ) from None
    return options


def _is_tar_pattern(spec: str) -> bool:
    return bool(re.search(r"\.tar(\}|\]|\*|$)", spec))


def resolve_dataset_spec(spec: str) -> DatasetSpec:
    """Decide what kind of dataset ``spec`` names (no data is read except directory listings)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"A dataset spec must be a non-empty string, got {spec!r}.")
    spec = spec.strip()
    name, _, option_text = spec.partition(":")
    if name == synthetic.SYNTHETIC_DATASET_NAME:
        return DatasetSpec("synthetic", name, _parse_synthetic_options(option_text))
    path = Path(spec).expanduser()
    if path.is_dir():
        return _resolve_folder(path)
    if path.is_file():
        if path.name.endswith(".tar"):
            return DatasetSpec("webdataset", spec, files=(str(path),))
        if path.suffix in (".csv", ".tsv", ".jsonl"):
            return DatasetSpec("captions_table", str(path), files=(str(path),))
        raise ValueError(
            f"Cannot use the file {spec!r} as a dataset: expected a .tar shard or a .csv/.tsv/.jsonl captions table."
        )
    if _is_tar_pattern(spec) or glob.has_magic(spec) or "{" in spec:
        return DatasetSpec("webdataset", spec, files=tuple(_find_shards(spec)))
    if spec.startswith(("/", ".", "~")) or not _HUB_ID.match(spec):
        raise FileNotFoundError(
            f"Dataset {spec!r} is not an existing folder or file, nor a hub id like 'org/name'. "
            f"Use '{synthetic.SYNTHETIC_DATASET_NAME}', a local folder, webdataset shards or a hub dataset id."
        )
    return DatasetSpec("hub", spec)



def _resolve_folder(folder: Path) -> DatasetSpec:
    if any((folder / name).is_file() for name in SAVED_DATASET_FILES):
        return DatasetSpec("saved", str(folder))
    children = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    if any((child / name).is_file() for child in children for name in METADATA_NAMES):
        return DatasetSpec("imagefolder", str(folder))
    if any((child / name).is_file() for child in children for name in CAPTION_TABLE_NAMES) or any(
        folder.glob("captions_*.*")
    ):
        return DatasetSpec("captions_table", str(folder))
    shards = sorted(str(p) for p in folder.glob("*.tar"))
    if shards:
        return DatasetSpec("webdataset", str(folder), files=tuple(shards))
    raise ValueError(
        f"Folder {str(folder)!r} holds no dataset layout I know: expected metadata.jsonl/metadata.csv next to the "
        "images (imagefolder, optionally in train/ and validation/ sub-folders), a captions table "
        f"({', '.join(CAPTION_TABLE_NAMES)}), or webdataset .tar shards."
    )



__all__ = [
    "CAPTION_TABLE_NAMES",
    "METADATA_NAMES",
    "SAVED_DATASET_FILES",
    "SYNTHETIC_OPTIONS",
    "DatasetSpec",
    "expand_braces",
    "resolve_dataset_spec",
]
