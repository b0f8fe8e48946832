"""Image-text datasets from one spec string, the same in the CLI and in Python.

A spec is one of

- ``synthetic-shapes`` (optionally ``synthetic-shapes:n=2000,size=64,seed=0,task=caption``), the built-in dataset;
- a local folder in imagefolder layout with ``metadata.jsonl``/``metadata.csv`` (``file_name`` + a caption column),
  optionally with ``train/``, ``validation/`` sub-folders;
- a local folder with a captions table (``captions.csv``, ``captions.tsv`` or ``captions.jsonl``; per split
  ``<split>/captions.csv`` or ``captions_<split>.csv``), or the path of such a table;
- webdataset tar shards: a ``.tar`` path, a glob or brace pattern (``shards/train-{000..009}.tar``) or a folder of
  ``.tar`` files whose samples hold an image member (``jpg``/``png``/...) and a ``txt`` member; streamed by default;
- a folder written by ``datasets``' ``save_to_disk`` (a ``DatasetDict`` with splits or one ``Dataset``), e.g. the output
  of ``hf-vlp capfilt``;
- a Hugging Face Hub dataset id (``org/name``), loaded with ``datasets.load_dataset``.

Every result has the columns ``image`` (decoded lazily to an RGB ``PIL.Image``), ``text`` (the caption),
``label`` when the source has one, plus ``sample_index`` and ``source`` (file name, when known) so that a bad
sample can be named, and ``bad_sample`` (the reason a skipped row was skipped, else ``None``). Decoding happens
on the fly (``with_transform`` for map-style datasets, ``map`` for streamed ones); with ``Trainer`` set
``remove_unused_columns=False`` so the raw columns reach the transform.
"""

from __future__ import annotations

import csv
import glob
import io
import itertools
import json
import logging
import math
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.exceptions import DatasetNotFoundError
from PIL import Image

from hf_vlp import synthetic

logger = logging.getLogger(__name__)

ImageTransform = Callable[[Image.Image], Image.Image]
AnyDataset = datasets.Dataset | datasets.IterableDataset

IMAGE_COLUMN_CANDIDATES = (
    "image", "img", "jpg", "jpeg", "png", "webp", "file_name", "filename", "image_path", "path", "file"
)  # fmt: skip
TEXT_COLUMN_CANDIDATES = (
    "text", "caption", "captions", "sentence", "sentences", "txt", "description", "alt_text", "title"
)  # fmt: skip
CAPTION_TABLE_NAMES = ("captions.csv", "captions.tsv", "captions.jsonl")
METADATA_NAMES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
_SYNTHETIC_OPTIONS = {"n": "num_samples", "size": "image_size", "seed": "seed", "task": "task"}
_SYNTHETIC_DEFAULT_SIZES = {"train": 2000, "validation": 500, "test": 500}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_MAX_WARNINGS = 10
_WEBDATASET_ID_COLUMNS = ("__url__", "__key__")


# ------------------------------------------------------------------------------------------ bad samples


class BadSampleError(ValueError):
    """A sample whose image (or caption) cannot be used; names the sample index and its source file."""

    def __init__(self, index: int | None, source: str | None, reason: str):
        self.index, self.source, self.reason = index, source, reason
        super().__init__(
            f"{self.description}. Fix or remove it, or pass skip_bad_samples=True (--skip-bad-samples on the command line) to skip and count such samples."
        )

    @property
    def description(self) -> str:
        """Which sample is bad and why, without the advice."""
        where = f"sample {self.index}" if self.index is not None else "a sample"
        origin = f" (file {self.source!r})" if self.source else ""
        return f"Bad {where}{origin}: {self.reason}"

    def __reduce__(self):  # keep the structured fields when sent between processes
        return type(self), (self.index, self.source, self.reason)


@dataclass
class BadSampleCounter:
    """Counts skipped bad samples and keeps the first few, for the end-of-run report.

    The count is exact for work done in this process (``dataloader_num_workers=0``, Trainer's default); skips that
    happen inside DataLoader worker processes are logged there but not added to this object.
    """

    max_examples: int = 10
    count: int = 0
    examples: list[BadSampleError] = field(default_factory=list)

    def record(self, error: BadSampleError) -> None:
        """Count ``error`` as one skipped sample and log it (the first few individually)."""
        self.count += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(error)
        if self.count <= _MAX_WARNINGS:
            logger.warning("Skipping: %s", error.description)
        elif self.count == _MAX_WARNINGS + 1:
            logger.warning("More bad samples are being skipped; they are counted, not logged one by one.")

    def summary(self) -> str:
        """One line (plus examples) describing what was skipped."""
        if not self.count:
            return "No bad samples were skipped."
        lines = [f"Skipped {self.count} bad sample(s). First ones:"]
        lines += [f"  - index {e.index}, source {e.source or 'unknown'}: {e.reason}" for e in self.examples]
        return "\n".join(lines)


def decode_image(value: Any, index: int | None = None, source: str | None = None) -> Image.Image:
    """Decode one image value into an RGB ``PIL.Image``, or raise :class:`BadSampleError` naming the sample.

    Accepts what datasets and users hand around: a ``PIL.Image``, a ``{"bytes", "path"}`` dict (the undecoded
    ``datasets.Image`` storage), a file path, raw encoded bytes or an ``HxWxC`` uint8 array.
    """
    if source is None:
        source = image_source(value)
    if value is None:
        raise BadSampleError(index, source, "the image is missing (empty value)")
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict):
            if value.get("bytes") is not None:
                image = Image.open(io.BytesIO(value["bytes"]))
            elif value.get("path"):
                image = Image.open(value["path"])
            else:
                raise ValueError("the image entry has neither bytes nor a path")
        elif isinstance(value, (str, os.PathLike)):
            image = Image.open(value)
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(value))
        elif isinstance(value, np.ndarray):
            image = Image.fromarray(value)
        else:
            raise TypeError(f"unsupported image value of type {type(value).__name__}")
        return image.convert("RGB")  # forces the full decode, so truncated files fail here
    except FileNotFoundError:
        raise BadSampleError(index, source, "the image file does not exist") from None
    except BadSampleError:
        raise
    except Exception as error:  # any decoder failure makes this a bad sample; the cause is kept in the message
        raise BadSampleError(index, source, f"cannot decode the image ({type(error).__name__}: {error})") from error


def image_source(value: Any) -> str | None:
    """The file name behind an image value, when one is known."""
    if isinstance(value, dict):
        return value.get("path") or None
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return getattr(value, "filename", None) or None


def caption_text(value: Any, index: int | None = None, source: str | None = None) -> str:
    """The caption of a sample; a list of captions gives its first non-empty entry."""
    if isinstance(value, (list, tuple)):
        value = next((item for item in value if isinstance(item, str) and item.strip()), None)
    if not isinstance(value, str) or not value.strip():
        raise BadSampleError(index, source, f"the caption is missing or empty ({value!r})")
    return value


def decode_sample(
    image_value: Any,
    text_value: Any,
    index: int | None = None,
    source: str | None = None,
    image_transform: ImageTransform | None = None,
) -> tuple[Image.Image, str]:
    """Decode one image-text sample (image, then ``image_transform``, and caption) or raise :class:`BadSampleError`."""
    text = caption_text(text_value, index, source)
    image = decode_image(image_value, index, source)
    if image_transform is not None:
        try:
            image = image_transform(image)
        except Exception as error:  # a transform failing on one image is a property of that image
            reason = f"the image transform failed ({type(error).__name__}: {error})"
            raise BadSampleError(index, source, reason) from error
    return image, text


# --------------------------------------------------------------------------------------- augmentation


class RandomResizedCropPil:
    """RandomResizedCrop on PIL images (torchvision's sampling), so an image processor can still run after it.

    Random numbers come from ``generator`` when one is given (the collators pass a per-sample generator so that
    crops do not depend on global RNG state: resumed and multi-process runs see the same crops), else from torch's
    global generator.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.9, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        resample: Image.Resampling = Image.Resampling.BICUBIC,
    ):
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}.")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}.")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}.")
        self.size, self.scale, self.ratio, self.resample = size, scale, ratio, resample

    def crop_box(self, width: int, height: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """Sample a crop ``(left, top, right, bottom)`` for an image of the given size."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=generator).item()
            aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=generator).item())
            crop_w = round(math.sqrt(target_area * aspect))
            crop_h = round(math.sqrt(target_area / aspect))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator).item())
                top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator).item())
                return left, top, left + crop_w, top + crop_h
        # Fallback: the largest central crop whose aspect ratio lies within `ratio`.
        aspect = width / height
        if aspect < self.ratio[0]:
            crop_w, crop_h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            crop_w, crop_h = round(height * self.ratio[1]), height
        else:
            crop_w, crop_h = width, height
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        return left, top, left + crop_w, top + crop_h

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        box = self.crop_box(*image.size, generator=generator)
        return image.resize((self.size, self.size), self.resample, box=box)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio})"


def clip_train_transform(image_size: int, scale: tuple[float, float] = (0.9, 1.0)) -> RandomResizedCropPil:
    """CLIP/open_clip training augmentation: RandomResizedCrop with ``scale=(0.9, 1.0)``, bicubic.

    Evaluation uses no augmentation (pass ``image_transform=None``); the processor's resize/crop then applies.
    """
    return RandomResizedCropPil(image_size, scale=scale)


# ------------------------------------------------------------------------------------------------ specs


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
        if not sep or key not in _SYNTHETIC_OPTIONS:
            raise ValueError(
                f"Bad option {item!r} in the {synthetic.SYNTHETIC_DATASET_NAME} spec; expected key=value with keys "
                f"{sorted(_SYNTHETIC_OPTIONS)}, e.g. '{synthetic.SYNTHETIC_DATASET_NAME}:n=2000,size=64,seed=0'."
            )
        name = _SYNTHETIC_OPTIONS[key]
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


SAVED_DATASET_FILES = ("dataset_dict.json", "state.json")  # save_to_disk of a DatasetDict / of one Dataset


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


# ------------------------------------------------------------------------------------------------ loaders


def _load_synthetic(spec: DatasetSpec, split: str, kw: dict[str, Any]) -> datasets.Dataset:
    options = {**spec.options, **kw}
    unknown = sorted(set(options) - set(_SYNTHETIC_OPTIONS.values()))
    if unknown:
        valid = sorted(_SYNTHETIC_OPTIONS.values())
        raise TypeError(f"Unknown option(s) {unknown} for {synthetic.SYNTHETIC_DATASET_NAME}; valid: {valid}.")
    options.setdefault("num_samples", _SYNTHETIC_DEFAULT_SIZES.get(split, 500))
    return synthetic.build_synthetic_split(split=split, **options)


def _pick_split(loaded: datasets.DatasetDict | datasets.IterableDatasetDict, split: str, where: str) -> AnyDataset:
    if split not in loaded:
        raise ValueError(f"Dataset {where!r} has no split {split!r}; available splits: {sorted(loaded)}.")
    return loaded[split]


def _metadata_is_empty(folder: Path) -> bool:
    """True when every metadata.jsonl/metadata.csv of the folder lists no sample (datasets fails obscurely then)."""
    children = [folder, *(child for child in folder.iterdir() if child.is_dir())]
    present = [child / name for child in children for name in METADATA_NAMES[:2] if (child / name).is_file()]
    if not present:
        return False
    for path in present:
        header_lines = 1 if path.suffix == ".csv" else 0
        with path.open(encoding="utf-8") as handle:
            filled = (line for line in handle if line.strip())
            for count, _ in enumerate(filled, start=1):
                if count > header_lines:
                    return False
    return True


def _load_imagefolder(spec: DatasetSpec, split: str, streaming: bool, kw: dict[str, Any]) -> AnyDataset:
    folder = Path(spec.location)
    if _metadata_is_empty(folder):
        raise ValueError(f"Dataset {spec.location!r} is empty: its metadata files list no samples.")
    try:
        loaded = datasets.load_dataset("imagefolder", data_dir=str(folder), streaming=streaming, **kw)
    except (ValueError, IndexError, KeyError) as error:
        raise ValueError(f"Could not read the imagefolder dataset {spec.location!r}: {error}") from error
    return _pick_split(loaded, split, spec.location)


def _read_caption_table(path: Path) -> dict[str, list[Any]]:
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ",")
            rows = list(reader)
            if not rows and reader.fieldnames:
                return {name: [] for name in reader.fieldnames}
    columns: dict[str, list[Any]] = {}
    for row in rows:
        for name in row:
            columns.setdefault(name, [])
    for row in rows:
        for name, values in columns.items():
            values.append(row.get(name))
    return columns


def _caption_table_path(spec: DatasetSpec, split: str) -> Path:
    if spec.files:
        return Path(spec.files[0])
    folder = Path(spec.location)
    candidates = [folder / split / name for name in CAPTION_TABLE_NAMES]
    candidates += [folder / f"captions_{split}{Path(name).suffix}" for name in CAPTION_TABLE_NAMES]
    if split == "train":
        candidates += [folder / name for name in CAPTION_TABLE_NAMES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked_for = ", ".join(str(candidate) for candidate in candidates)
    raise FileNotFoundError(f"No captions table for split {split!r} in {spec.location!r}; looked for: {looked_for}.")


def _load_caption_table(spec: DatasetSpec, split: str, image_column: str | None, streaming: bool) -> AnyDataset:
    path = _caption_table_path(spec, split)
    columns = _read_caption_table(path)
    if not columns or not next(iter(columns.values())):
        raise ValueError(f"Dataset {str(path)!r} is empty: the captions table has no rows.")
    image_column = _choose_column(list(columns), image_column, IMAGE_COLUMN_CANDIDATES, "image", str(path))
    columns[image_column] = [str(path.parent / str(value)) if value else None for value in columns[image_column]]
    dataset = datasets.Dataset.from_dict(columns).cast_column(image_column, datasets.Image(decode=False))
    return dataset.to_iterable_dataset() if streaming else dataset


def _load_saved(spec: DatasetSpec, split: str, streaming: bool) -> AnyDataset:
    loaded = datasets.load_from_disk(spec.location)
    if isinstance(loaded, datasets.DatasetDict):
        loaded = _pick_split(loaded, split, spec.location)
    return loaded.to_iterable_dataset() if streaming else loaded


def _load_webdataset(spec: DatasetSpec, split: str, streaming: bool, kw: dict[str, Any]) -> AnyDataset:
    shards = [path for path in spec.files if _tar_has_members(path)]
    if not shards:
        raise ValueError(f"Dataset {spec.location!r} is empty: its {len(spec.files)} tar shard(s) hold no samples.")
    if len(shards) < len(spec.files):
        logger.warning("Ignoring %d empty tar shard(s) of %s.", len(spec.files) - len(shards), spec.location)
    try:
        return datasets.load_dataset("webdataset", data_files={split: shards}, split=split, streaming=streaming, **kw)
    except ValueError as error:
        raise ValueError(f"Could not read the webdataset shards {spec.location!r}: {error}") from error


def _tar_has_members(path: str) -> bool:
    if not os.path.exists(path):
        return True  # remote or virtual paths are left to datasets
    try:
        with tarfile.open(path) as archive:
            return archive.next() is not None
    except tarfile.TarError as error:
        raise ValueError(f"Webdataset shard {path!r} is not a readable tar archive ({error}).") from error


def _load_hub(spec: DatasetSpec, split: str, streaming: bool, kw: dict[str, Any]) -> AnyDataset:
    try:
        return datasets.load_dataset(spec.location, split=split, streaming=streaming, **kw)
    except ConnectionError as error:
        raise ConnectionError(
            f"Cannot load dataset {spec.location!r}: there is no local folder or file of that name, and the "
            f"Hugging Face Hub is not reachable to fetch it as a hub dataset ({error}). "
            "Either make it reachable, use a copy already in the local cache with HF_DATASETS_OFFLINE=1 "
            f"(HF_HUB_OFFLINE=1), or pass a local folder / webdataset shards / '{synthetic.SYNTHETIC_DATASET_NAME}'."
        ) from error
    except DatasetNotFoundError as error:
        raise FileNotFoundError(
            f"Dataset {spec.location!r} is neither a local folder nor a dataset on the Hugging Face Hub ({error})."
        ) from error


# ------------------------------------------------------------------------------------------------ columns


def _choose_column(
    columns: Sequence[str], requested: str | None, candidates: Sequence[str], role: str, where: str
) -> str:
    if requested is not None:
        if requested not in columns:
            raise ValueError(
                f"Column {requested!r} (the {role} column) is not in dataset {where!r}; "
                f"available columns: {list(columns)}."
            )
        return requested
    for candidate in candidates:
        if candidate in columns:
            return candidate
    raise ValueError(
        f"Cannot tell which column of dataset {where!r} holds the {role}; available columns: {list(columns)}. "
        f"Name it with {role}_column=... (CLI: --{role}-column)."
    )


def _column_names(dataset: AnyDataset) -> list[str]:
    if dataset.column_names is not None:
        return list(dataset.column_names)
    first = next(iter(dataset.take(1)), None)
    return list(first) if first is not None else []


def _image_columns_by_feature(dataset: AnyDataset) -> list[str]:
    features = dataset.features or {}
    return [name for name, feature in features.items() if isinstance(feature, datasets.Image)]


def _select_image_text_columns(
    dataset: AnyDataset,
    where: str,
    image_column: str | None,
    text_column: str | None,
    keep_columns: Sequence[str],
    optional_columns: Sequence[str] = (),
    text_candidates: Sequence[str] = TEXT_COLUMN_CANDIDATES,
) -> AnyDataset:
    columns = _column_names(dataset)
    if not columns:
        raise ValueError(f"Dataset {where!r} is empty: it has no columns.")
    image_candidates = [*_image_columns_by_feature(dataset), *IMAGE_COLUMN_CANDIDATES]
    image_column = _choose_column(columns, image_column, image_candidates, "image", where)
    text_column = _choose_column(columns, text_column, text_candidates, "text", where)
    for name in keep_columns:
        _choose_column(columns, name, (), "extra", where)
    keep_columns = [*keep_columns, *(name for name in optional_columns if name in columns)]
    # Undecoded storage first: decoding happens in our transform, where a failure can name the sample.
    image_feature = (dataset.features or {}).get(image_column)
    is_path_column = isinstance(image_feature, datasets.Value) and image_feature.dtype in ("string", "large_string")
    if isinstance(image_feature, datasets.Image) or is_path_column:
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    label = ["label"] if "label" in columns else []
    selected = list(dict.fromkeys([image_column, text_column, *label, *keep_columns]))
    # webdataset shard and sample key, used to name bad samples
    selected += [name for name in _WEBDATASET_ID_COLUMNS if name in columns and name not in selected]
    dataset = dataset.select_columns(selected)
    renames = {old: new for old, new in ((image_column, "image"), (text_column, "text")) if old != new}
    clashes = sorted(set(renames.values()) & (set(selected) - set(renames)))
    if clashes:
        raise ValueError(
            f"Dataset {where!r}: cannot rename the chosen columns because {clashes} already exist; pick other columns."
        )
    if renames:
        dataset = dataset.rename_columns(renames)
    return dataset


class DecodeImageText:
    """On-the-fly row decoding: image to RGB PIL (then ``image_transform``), caption to ``str``.

    A bad row raises :class:`BadSampleError`; with ``skip_bad_samples`` it is counted in ``bad_samples`` and
    handed on with ``image=None`` and the reason in ``bad_sample``, for the collator to drop (map-style datasets
    cannot drop rows inside a transform).
    """

    def __init__(
        self,
        image_transform: ImageTransform | None = None,
        skip_bad_samples: bool = False,
        bad_samples: BadSampleCounter | None = None,
    ):
        self.image_transform = image_transform
        self.skip_bad_samples = skip_bad_samples
        self.bad_samples = bad_samples if bad_samples is not None else BadSampleCounter()

    def decode_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Decode one row dict (``image``, ``text``, ``sample_index``, optional webdataset ``__url__``/``__key__``)."""
        index = row.get("sample_index")
        image_value = row.get("image")
        shard, key = (row.pop(name, None) for name in _WEBDATASET_ID_COLUMNS)
        source = image_source(image_value) or key
        if shard and source:
            source = f"{shard}:{source}"
        decoded = {**row, "image": None, "source": source, "bad_sample": None}
        try:
            decoded["image"], decoded["text"] = decode_sample(
                image_value, row.get("text"), index, source, self.image_transform
            )
        except BadSampleError as error:
            if not self.skip_bad_samples:
                raise
            self.bad_samples.record(error)
            decoded["bad_sample"] = error.reason
        return decoded

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        names = list(batch)
        size = len(batch[names[0]]) if names else 0
        rows = [self.decode_row({name: batch[name][i] for name in names}) for i in range(size)]
        out_names = list(rows[0]) if rows else [name for name in names if name not in _WEBDATASET_ID_COLUMNS]
        return {name: [row[name] for row in rows] for name in out_names}


class _DecodeIndexedRow:
    """``IterableDataset.map`` adapter (picklable, unlike a lambda) that numbers rows as it decodes them."""

    def __init__(self, decoder: DecodeImageText):
        self.decoder = decoder

    def __call__(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        return self.decoder.decode_row({**row, "sample_index": index})


def _is_good_row(row: dict[str, Any]) -> bool:
    return row["bad_sample"] is None


def load_image_text_dataset(
    spec: str,
    split: str = "train",
    image_column: str | None = None,
    text_column: str | None = None,
    streaming: bool | None = None,
    *,
    image_transform: ImageTransform | None = None,
    skip_bad_samples: bool = False,
    bad_samples: BadSampleCounter | None = None,
    keep_columns: Sequence[str] = (),
    optional_columns: Sequence[str] = (),
    text_column_candidates: Sequence[str] | None = None,
    **kw: Any,
) -> AnyDataset:
    """Load ``split`` of the dataset named by ``spec`` as rows of ``image`` (RGB PIL), ``text`` (+ ``label``).

    Args:
        spec: ``synthetic-shapes[:n=..,size=..,seed=..,task=..]``, a local folder or captions table, webdataset
            shards (path, glob, brace pattern or folder of ``.tar``), or a hub dataset id.
        split: the split to load ("train", "validation", ...).
        image_column / text_column: source columns holding the image and the caption; guessed when omitted
            (image features first, then common names). A caption column holding lists uses the first caption.
        streaming: stream instead of materialising; ``None`` streams webdataset shards only.
        image_transform: PIL -> PIL augmentation applied after decoding (e.g. :func:`clip_train_transform`).
        skip_bad_samples: skip rows whose image cannot be decoded (or whose caption is empty) instead of raising;
            skipped rows are recorded in ``bad_samples``. Map-style rows keep ``image=None`` and the reason in
            ``bad_sample``; the collators drop them. Streamed datasets drop them directly (their ``sample_index``
            counts the rows of the stream this process reads; ``source`` names the shard and sample key).
        bad_samples: the counter to record skips in (read it for the final report).
        keep_columns: further source columns to carry along (e.g. ``answer_label``); a missing one is an error.
        optional_columns: further source columns carried along when the dataset has them (e.g. ``image_id``).
        text_column_candidates: the names tried, in order, when ``text_column`` is not given (default
            :data:`TEXT_COLUMN_CANDIDATES`; a VQA task tries ``question`` first, SNLI-VE ``hypothesis``).
        **kw: passed to the loader (``datasets.load_dataset`` keyword arguments such as ``cache_dir``, or the
            synthetic builder's ``num_samples``/``image_size``/``seed``/``task``).

    Returns:
        a ``datasets.Dataset`` (with a decoding transform set) or a ``datasets.IterableDataset`` when streaming.
    """
    resolved = resolve_dataset_spec(spec)
    if streaming is None:
        streaming = resolved.kind == "webdataset"
    if resolved.kind == "synthetic":
        raw: AnyDataset = _load_synthetic(resolved, split, kw)
        if streaming:
            raw = raw.to_iterable_dataset()
    elif resolved.kind == "imagefolder":
        raw = _load_imagefolder(resolved, split, streaming, kw)
    elif resolved.kind == "captions_table":
        raw = _load_caption_table(resolved, split, image_column, streaming)
    elif resolved.kind == "saved":
        raw = _load_saved(resolved, split, streaming)
    elif resolved.kind == "webdataset":
        raw = _load_webdataset(resolved, split, streaming, kw)
    else:
        raw = _load_hub(resolved, split, streaming, kw)

    dataset = _select_image_text_columns(
        raw, spec, image_column, text_column, keep_columns, optional_columns,
        TEXT_COLUMN_CANDIDATES if text_column_candidates is None else text_column_candidates,
    )
    decoder = DecodeImageText(image_transform, skip_bad_samples, bad_samples)
    if isinstance(dataset, datasets.IterableDataset):
        id_columns = [name for name in _WEBDATASET_ID_COLUMNS if name in _column_names(dataset)]
        dataset = dataset.map(_DecodeIndexedRow(decoder), with_indices=True, remove_columns=id_columns)
        if skip_bad_samples:
            dataset = dataset.filter(_is_good_row)
        return dataset
    if len(dataset) == 0:
        raise ValueError(f"Dataset {spec!r} split {split!r} is empty (0 rows).")
    dataset = dataset.add_column("sample_index", np.arange(len(dataset)))
    return dataset.with_transform(decoder)


def take_rows(dataset: AnyDataset, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The first ``limit`` rows (all when ``None``) as decoded row dicts: a map-style dataset is read in slices of
    256 rows (its decoding transform runs per slice), a streamed one row by row."""
    if isinstance(dataset, datasets.IterableDataset):
        yield from itertools.islice(dataset, limit)
        return
    size = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, size, 256):
        batch = dataset[start : min(start + 256, size)]
        names = list(batch)
        for position in range(len(batch[names[0]]) if names else 0):
            yield {name: batch[name][position] for name in names}
