"""Reading a resolved dataset spec into rows of ``image`` and ``text``: one loader per source kind, the choice and
renaming of the image/text columns, and :func:`load_image_text_dataset`, which puts spec, source and decoding
together; see :mod:`hf_vlp.training.data`."""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets.exceptions import DatasetNotFoundError

from hf_vlp import synthetic

from .decoding import (
    WEBDATASET_ID_COLUMNS,
    BadSampleCounter,
    BadSampleError,
    DecodeImageText,
    ImageTransform,
)
from .spec import (
    CAPTION_TABLE_NAMES,
    METADATA_NAMES,
    SAVED_DATASET_FILES,
    SYNTHETIC_OPTIONS,
    DatasetSpec,
    resolve_dataset_spec,
)

logger = logging.getLogger(__name__)

AnyDataset = datasets.Dataset | datasets.IterableDataset

IMAGE_COLUMN_CANDIDATES = (
    "image", "img", "jpg", "jpeg", "png", "webp", "file_name", "filename", "image_path", "path", "file"
)  # fmt: skip
TEXT_COLUMN_CANDIDATES = (
    "text", "caption", "captions", "sentence", "sentences", "txt", "description", "descriptions", "alt_text",
    "alt", "title", "prompt", "raw", "utterance",
)  # fmt: skip
_SYNTHETIC_DEFAULT_SIZES = {"train": 2000, "validation": 500, "test": 500}
DEFAULT_EVAL_SPLIT_RATIO = 0.1
_TAR_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # datasets' webdataset rule: sample key + field


# ------------------------------------------------------------------------------------------- held-out split


@dataclass(frozen=True)
class HeldOutSplit:
    """A deterministic evaluation slice carved out of a split, for datasets that have no evaluation split.

    About ``size(rows)`` rows are held out: ``ceil(ratio x rows)``, at most ``max_rows``, at least 1, and always
    leaving training rows. Rows showing the same image (same ``image_id``, else the same image file) are held out
    or kept together, so no image is both trained and evaluated on. Which rows is a seeded permutation of those
    image groups (webdataset shards: of their sorted ``(shard file name, sample key)`` pairs), so every load -- the
    training set, the evaluation before and after training, a later ``hf-vlp evaluate`` -- picks the same rows.
    ``part="eval"`` keeps the held-out rows, ``part="train"`` all the others: the two never overlap.
    ``missing_split`` (the evaluation split the dataset lacks) only words the report.
    """

    ratio: float = DEFAULT_EVAL_SPLIT_RATIO
    max_rows: int | None = None
    part: str = "eval"
    seed: int = 0
    missing_split: str = "validation"

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"--eval-split-ratio must lie strictly between 0 and 1, got {self.ratio}.")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"The held-out split needs max_rows >= 1 (--eval-max-samples), got {self.max_rows}.")
        if self.part not in ("eval", "train"):
            raise ValueError(f"HeldOutSplit.part must be 'eval' or 'train', got {self.part!r}.")

    def size(self, rows: int) -> int:
        """How many of ``rows`` rows are to be held out (image groups may round it up)."""
        held = max(1, math.ceil(self.ratio * rows))
        if self.max_rows is not None:
            held = min(held, self.max_rows)
        return min(held, rows - 1)

    def held_out_mask(self, rows: int, where: str = "the dataset", groups: Sequence[Any] | None = None) -> np.ndarray:
        """A boolean mask over ``rows`` rows, true for the held-out ones; ``groups[i]`` is row ``i``'s image (rows of
        one image go to the same side)."""
        if groups is None:
            inverse = np.arange(rows)
        else:
            _, inverse = np.unique(np.asarray([str(group) for group in groups]), return_inverse=True)
        distinct = int(inverse.max()) + 1 if rows else 0
        if rows < 2 or distinct < 2:
            images = f" showing {distinct} distinct image(s)" if distinct < rows else ""
            raise ValueError(
                f"{where} has {rows} row(s){images} and no {self.missing_split!r} split: too few to hold out an "
                "evaluation slice and still train. Add rows, pass --eval-dataset SPEC, or --skip-eval."
            )
        order = np.random.default_rng(self.seed).permutation(distinct)
        covered = np.cumsum(np.bincount(inverse, minlength=distinct)[order])
        taken = min(int(np.searchsorted(covered, self.size(rows))) + 1, distinct - 1)
        return np.isin(inverse, order[:taken])

    def positions(self, rows: int, where: str = "the dataset", groups: Sequence[Any] | None = None) -> np.ndarray:
        """The sorted positions of the rows of :attr:`part`."""
        held = self.held_out_mask(rows, where, groups)
        return np.flatnonzero(held if self.part == "eval" else ~held)

    def describe(self, where: str, split: str, rows: int, held: int, unit: str = "rows") -> str:
        """The one-line report of what is held out (printed once per process)."""
        limit = f", at most --eval-max-samples {self.max_rows}" if self.max_rows is not None else ""
        return (
            f"Dataset {where!r} has no {self.missing_split!r} split: holding out {held} of its {rows} {split!r} "
            f"{unit} for evaluation (--eval-split-ratio {self.ratio:g}{limit}; a fixed seeded choice, whole images); "
            f"training uses the other {rows - held}. Pass --eval-dataset SPEC to evaluate elsewhere."
        )


def _image_groups(dataset: datasets.Dataset) -> list[Any] | None:
    """Each row's image -- its ``image_id``, else the file it is read from (not embedded bytes, whose stored names
    need not be unique) -- or ``None`` when no row can share its image with another."""
    columns = [name for name in ("image_id", "image") if name in dataset.column_names]
    if not columns:
        return None
    table = dataset.select_columns(columns).with_format("arrow")[:]
    ids = table.column("image_id").to_pylist() if "image_id" in columns else None
    paths = None
    if "image" in columns and isinstance((dataset.features or {}).get("image"), datasets.Image):
        paths = []
        for chunk in table.column("image").chunks:  # struct fields are views: embedded bytes are never copied
            file_backed = chunk.field("bytes").is_null().to_pylist()
            paths += [path if backed else None for path, backed in zip(chunk.field("path").to_pylist(), file_backed)]
    if ids is None and paths is None:
        return None
    groups: list[Any] = []
    for index in range(len(table)):
        image_id = ids[index] if ids is not None else None
        path = paths[index] if paths is not None else None
        groups.append(("id", image_id) if image_id is not None else ("path", path) if path else ("row", index))
    return groups


_REPORTED: set[str] = set()


def _report_once(message: str) -> None:
    """Print ``message`` once per process, from the main process only (``RANK`` 0 or unset)."""
    if message in _REPORTED or os.environ.get("RANK", "0") != "0":
        return
    _REPORTED.add(message)
    logger.info(message)
    print(message, flush=True)


class _HeldOutStreamFilter:
    """``IterableDataset.filter`` predicate (picklable) keeping the webdataset samples of one part."""

    def __init__(self, held: frozenset[tuple[str, str]], keep_held: bool):
        self.held, self.keep_held = held, keep_held

    def __call__(self, row: dict[str, Any]) -> bool:
        identity = (os.path.basename(str(row.get("__url__") or "")), str(row.get("__key__") or ""))
        return (identity in self.held) == self.keep_held


def _tar_sample_keys(path: str) -> list[str]:
    """The sample keys of a local tar shard, as ``datasets``' webdataset loader forms them."""
    keys: dict[str, None] = {}
    with tarfile.open(path) as archive:
        for member in archive:
            match = _TAR_MEMBER.match(member.name) if member.isfile() else None
            if match:
                keys.setdefault(match.group(1))
    return list(keys)


def _hold_out_stream(
    dataset: datasets.IterableDataset, shards: Sequence[str], hold_out: HeldOutSplit, where: str, split: str
) -> datasets.IterableDataset:
    missing = [path for path in shards if not os.path.isfile(path)]
    if missing:
        raise ValueError(
            f"Dataset {where!r} has no {hold_out.missing_split!r} split and its shards are not local files "
            f"({missing[0]!r}), so no evaluation slice can be held out exactly. Pass --eval-dataset SPEC or --skip-eval."
        )
    identities = sorted({(os.path.basename(path), key) for path in shards for key in _tar_sample_keys(path)})
    held = np.flatnonzero(hold_out.held_out_mask(len(identities), f"Dataset {where!r}"))
    _report_once(hold_out.describe(where, split, len(identities), len(held), unit="samples"))
    chosen = frozenset(identities[position] for position in held)
    return dataset.filter(_HeldOutStreamFilter(chosen, keep_held=hold_out.part == "eval"))


# ---------------------------------------------------------------------------------------------- split names


def dataset_split_names(spec: str | DatasetSpec) -> list[str] | None:
    """The splits ``spec`` offers, read from file names and listings only (``None``: cannot tell, e.g. a hub id
    while offline). Sources without splits -- one captions-table file, webdataset shards, a saved single
    ``Dataset`` -- offer ``["train"]``; ``synthetic-shapes`` offers every split."""
    resolved = resolve_dataset_spec(spec) if isinstance(spec, str) else spec
    if resolved.kind == "synthetic":
        return None
    if resolved.kind == "imagefolder":
        try:
            builder = datasets.load_dataset_builder("imagefolder", data_dir=resolved.location)
            return sorted(str(name) for name in (builder.config.data_files or {}))
        except Exception:  # datasets reports its own error when the split is loaded
            return None
    if resolved.kind == "captions_table":
        if resolved.files:
            return ["train"]
        folder = Path(resolved.location)
        names = {"train"} if any((folder / name).is_file() for name in CAPTION_TABLE_NAMES) else set()
        names |= {child.name for child in folder.iterdir() if child.is_dir()
                  and any((child / name).is_file() for name in CAPTION_TABLE_NAMES)}
        names |= {path.stem[len("captions_"):] for path in folder.glob("captions_*.*")
                  if path.suffix in (".csv", ".tsv", ".jsonl")}
        return sorted(names)
    if resolved.kind == "saved":
        listing = Path(resolved.location) / SAVED_DATASET_FILES[0]
        if listing.is_file():
            try:
                return sorted(json.loads(listing.read_text(encoding="utf-8"))["splits"])
            except (ValueError, KeyError, TypeError):
                return None
        return ["train"]
    if resolved.kind == "webdataset":
        return ["train"]
    try:
        return sorted(datasets.get_dataset_split_names(resolved.location))
    except Exception:  # offline or gated: leave it to the load
        return None


def has_split(spec: str | DatasetSpec, split: str) -> bool:
    """Whether ``spec`` has ``split`` (``True`` when that cannot be told without loading)."""
    names = dataset_split_names(spec)
    return names is None or split in names


def _load_synthetic(spec: DatasetSpec, split: str, kw: dict[str, Any]) -> datasets.Dataset:
    options = {**spec.options, **kw}
    unknown = sorted(set(options) - set(SYNTHETIC_OPTIONS.values()))
    if unknown:
        valid = sorted(SYNTHETIC_OPTIONS.values())
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
    filled_files = 0
    for path in present:
        header_lines = 1 if path.suffix == ".csv" else 0
        filled = [line for line in read_text_file(path, "metadata file").splitlines() if line.strip()]
        filled_files += len(filled) > header_lines
    return filled_files == 0


def read_text_file(path: Path, what: str) -> str:
    """``path`` decoded as UTF-8 (a BOM is dropped); a file in another encoding is an error naming it and the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"The {what} {str(path)!r} is not UTF-8 text: line {line} holds the byte {data[error.start:error.start + 1]!r} "
            f"({error.reason}). Save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
        ) from None


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
    text = read_text_file(path, "captions table")
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"The captions table {str(path)!r}: line {number} is not JSON ({error}).") from None
            if not isinstance(rows[-1], dict):
                raise ValueError(f"The captions table {str(path)!r}: line {number} is not a JSON object.")
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix == ".tsv" else ",")
        try:
            rows = list(reader)
        except csv.Error as error:
            raise ValueError(f"The captions table {str(path)!r}: line {reader.line_num} cannot be read ({error}).") from None
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


def _load_webdataset(
    spec: DatasetSpec,
    split: str,
    streaming: bool,
    kw: dict[str, Any],
    skip_bad_samples: bool = False,
    bad_samples: BadSampleCounter | None = None,
    hold_out: HeldOutSplit | None = None,
) -> AnyDataset:
    shards, empty = [], 0
    for path in spec.files:
        problem, keys = tar_shard_problem(path)
        if problem is None:
            if keys:
                shards.append(path)
            else:
                empty += 1
            continue
        error = BadSampleError(None, path, problem)
        if not skip_bad_samples:
            raise ValueError(
                f"Webdataset shard {path!r} {problem}. Replace the shard, or pass --skip-bad-samples to leave it out "
                "(its samples are counted as skipped)."
            )
        lost = max(len(keys), 1)
        if bad_samples is not None:
            bad_samples.record(error, key=("shard", path), samples=lost)
        logger.warning("Leaving out webdataset shard %s (%d sample(s)): it %s.", path, lost, problem)
    if not shards:
        raise ValueError(
            f"Dataset {spec.location!r} is empty: its {len(spec.files)} tar shard(s) hold no readable samples."
        )
    if empty:
        logger.warning("Ignoring %d empty tar shard(s) of %s.", empty, spec.location)
    try:
        loaded = datasets.load_dataset("webdataset", data_files={split: shards}, split=split, streaming=streaming, **kw)
    except ValueError as error:
        raise ValueError(f"Could not read the webdataset shards {spec.location!r}: {error}") from error
    if hold_out is not None and isinstance(loaded, datasets.IterableDataset):
        loaded = _hold_out_stream(loaded, shards, hold_out, spec.location, split)
    return loaded


def tar_shard_problem(path: str) -> tuple[str | None, set[str]]:
    """Why the tar shard at ``path`` cannot be read whole (``None`` when it can) and the sample keys of its complete
    members. Reads the member headers only: a member whose data runs past the end of the file, or a missing
    end-of-archive block, means the shard was cut short (``datasets`` would stop early or fail mid-epoch); remote or
    virtual paths are left to ``datasets``."""
    if not os.path.exists(path):
        return None, {path}
    size = os.path.getsize(path)
    keys: set[str] = set()
    members = 0
    try:
        with open(path, "rb") as handle, tarfile.open(fileobj=handle) as archive:
            for member in archive:
                if member.isfile() and member.offset_data + member.size > size:
                    return (
                        f"is truncated: member {member.name!r} needs {member.offset_data + member.size} bytes, the "
                        f"file has {size} ({members} complete member(s) before it)"
                    ), keys | {member.name.split("/")[-1].split(".", 1)[0]}
                if member.isfile():
                    members += 1
                    keys.add(member.name.split("/")[-1].split(".", 1)[0])
            end = archive.offset
            handle.seek(end)
            block = handle.read(tarfile.BLOCKSIZE)
    except (tarfile.TarError, EOFError) as error:
        return f"is not a readable tar archive ({error})", keys
    if len(block) < tarfile.BLOCKSIZE or block.count(b"\0") != tarfile.BLOCKSIZE:
        return (
            f"is truncated: it ends at byte {size} without the tar end-of-archive block, after {members} complete "
            "member(s)"
        ), keys
    return None, keys


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
    tried = f", none of the names looked for ({', '.join(map(repr, candidates))})" if candidates else ""
    raise ValueError(
        f"Cannot tell which column of dataset {where!r} holds the {role}; available columns: {list(columns)}"
        f"{tried}. Name it with {role}_column=... (CLI: --{role}-column)."
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
    selected += [name for name in WEBDATASET_ID_COLUMNS if name in columns and name not in selected]
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
    hold_out: HeldOutSplit | None = None,
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
        hold_out: keep only one part of a deterministic held-out slice of ``split`` (see :class:`HeldOutSplit`):
            the evaluation rows of a dataset without an evaluation split, or the training rows without them.
            ``sample_index`` keeps numbering the rows of the whole split. The first load prints the slice's size.
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
        raw = _load_webdataset(resolved, split, streaming, kw, skip_bad_samples, bad_samples, hold_out)
    else:
        raw = _load_hub(resolved, split, streaming, kw)

    dataset = _select_image_text_columns(
        raw, spec, image_column, text_column, keep_columns, optional_columns,
        TEXT_COLUMN_CANDIDATES if text_column_candidates is None else text_column_candidates,
    )
    decoder = DecodeImageText(image_transform, skip_bad_samples, bad_samples)
    if isinstance(dataset, datasets.IterableDataset):
        if hold_out is not None and resolved.kind != "webdataset":
            raise ValueError(
                f"Dataset {spec!r}: a held-out evaluation slice of a streamed {resolved.kind} dataset is not "
                "supported; load it without streaming, or pass --eval-dataset SPEC."
            )
        id_columns = [name for name in WEBDATASET_ID_COLUMNS if name in _column_names(dataset)]
        dataset = dataset.map(_DecodeIndexedRow(decoder), with_indices=True, remove_columns=id_columns)
        if skip_bad_samples:
            dataset = dataset.filter(_is_good_row)
        return dataset
    if len(dataset) == 0:
        raise ValueError(f"Dataset {spec!r} split {split!r} is empty (0 rows).")
    dataset = dataset.add_column("sample_index", np.arange(len(dataset)))
    if hold_out is not None:
        rows = len(dataset)
        positions = hold_out.positions(rows, f"Dataset {spec!r} split {split!r}", _image_groups(dataset))
        held = len(positions) if hold_out.part == "eval" else rows - len(positions)
        _report_once(hold_out.describe(spec, split, rows, held))
        dataset = dataset.select(positions)
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

__all__ = [
    "DEFAULT_EVAL_SPLIT_RATIO",
    "IMAGE_COLUMN_CANDIDATES",
    "TEXT_COLUMN_CANDIDATES",
    "AnyDataset",
    "HeldOutSplit",
    "dataset_split_names",
    "has_split",
    "load_image_text_dataset",
    "take_rows",
]
