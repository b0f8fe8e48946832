"""Decoding image-text rows: images to RGB ``PIL.Image``, captions to ``str``, and the bad-sample errors, counter and
row transforms that name (or skip and count) a sample that cannot be used."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

ImageTransform = Callable[[Image.Image], Image.Image]
WEBDATASET_ID_COLUMNS = ("__url__", "__key__")  # a webdataset row's shard and sample key, used to name bad samples
_MAX_WARNINGS = 10


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
        where = f"sample {self.index}" if self.index is not None else "sample"
        origin = f" (file {self.source!r})" if self.source else ""
        return f"Bad {where}{origin}: {self.reason}"

    def __reduce__(self):  # keep the structured fields when sent between processes
        return type(self), (self.index, self.source, self.reason)


class BadSampleCounter:
    """Counts the distinct bad samples skipped and keeps the first few, for the end-of-run report.

    A sample is counted once however often it is read (every epoch reads it again): its key is ``(source, index)``
    unless :meth:`record` is given one. Skips that happen in other processes than the one that created the counter
    (DataLoader workers, ``dataloader_num_workers > 0``) are appended to a spool folder of small JSON-lines files and
    added in when :attr:`count`, :attr:`examples` or :meth:`summary` are read in the creating process; the folder is
    removed when the counter is garbage collected there.
    """

    def __init__(self, max_examples: int = 10) -> None:
        self.max_examples = max_examples
        self._samples: dict[tuple, int] = {}  # key -> number of samples it stands for (a skipped shard: several)
        self._errors: dict[tuple, BadSampleError] = {}  # key -> why
        self._examples: list[BadSampleError] = []
        self._owner_pid = os.getpid()
        self._spool = os.path.join(tempfile.gettempdir(), f"hf_vlp_bad_samples_{os.getpid()}_{uuid.uuid4().hex}")
        self._spool_offsets: dict[str, int] = {}
        weakref.finalize(self, _remove_spool, self._spool, self._owner_pid)

    @staticmethod
    def _key(error: BadSampleError, key: Any) -> tuple:
        raw = (error.source, error.index) if key is None else (key if isinstance(key, tuple) else (key,))
        return tuple(part if part is None or isinstance(part, str) else int(part) for part in raw)

    def record(self, error: BadSampleError, key: Any = None, samples: int = 1) -> None:
        """Count ``error`` as ``samples`` skipped sample(s) (once per ``key``, default ``(source, index)``) and log it
        (the first few individually)."""
        key = self._key(error, key)
        if os.getpid() != self._owner_pid:  # a DataLoader worker: hand it to the creating process
            self._spool_write(error, key, samples)
            logger.warning("Skipping: %s", error.description)
            return
        if self._add(error, key, samples):
            count = len(self._samples)
            if count <= _MAX_WARNINGS:
                logger.warning("Skipping: %s", error.description)
            elif count == _MAX_WARNINGS + 1:
                logger.warning("More bad samples are being skipped; they are counted, not logged one by one.")

    def _add(self, error: BadSampleError, key: tuple, samples: int) -> bool:
        if key in self._samples:
            return False
        self._samples[key] = samples
        self._errors[key] = error
        if len(self._examples) < self.max_examples:
            self._examples.append(error)
        return True

    def _spool_write(self, error: BadSampleError, key: tuple, samples: int) -> None:
        os.makedirs(self._spool, exist_ok=True)
        line = json.dumps(
            {"key": list(key), "samples": samples, "index": error.index, "source": error.source, "reason": error.reason}
        )
        with open(os.path.join(self._spool, f"{os.getpid()}.jsonl"), "a", encoding="utf-8") as handle:
            handle.write(line + "\n")  # one short append per skip: whole lines even with several writers

    def _merge_spool(self) -> None:
        if os.getpid() != self._owner_pid or not os.path.isdir(self._spool):
            return
        for name in sorted(os.listdir(self._spool)):
            path = os.path.join(self._spool, name)
            with open(path, encoding="utf-8") as handle:
                handle.seek(self._spool_offsets.get(path, 0))
                while True:
                    line = handle.readline()
                    if not line.endswith("\n"):  # nothing more, or a line still being written
                        break
                    self._spool_offsets[path] = handle.tell()
                    entry = json.loads(line)
                    error = BadSampleError(entry["index"], entry["source"], entry["reason"])
                    self._add(error, tuple(entry["key"]), int(entry["samples"]))

    @property
    def count(self) -> int:
        """The number of distinct bad samples skipped, in this process and its DataLoader workers."""
        self._merge_spool()
        return sum(self._samples.values())

    @property
    def examples(self) -> list[BadSampleError]:
        """The first ``max_examples`` distinct bad samples."""
        self._merge_spool()
        return list(self._examples)

    def snapshot(self) -> list[tuple[tuple, int, tuple[int | None, str | None, str]]]:
        """This process's skips (its DataLoader workers' included) as picklable ``(key, samples, error fields)``."""
        self._merge_spool()
        return [
            (key, samples, (self._errors[key].index, self._errors[key].source, self._errors[key].reason))
            for key, samples in self._samples.items()
        ]

    def absorb(self, snapshot: list[tuple[tuple, int, tuple[int | None, str | None, str]]]) -> None:
        """Add another process's :meth:`snapshot` (a distributed run: each rank skips the bad samples of its own share);
        a sample both saw counts once."""
        for key, samples, fields in snapshot:
            self._add(BadSampleError(*fields), tuple(key), samples)

    def summary(self) -> str:
        """One line (plus examples) describing what was skipped."""
        count = self.count
        if not count:
            return "No bad samples were skipped."
        lines = [f"Skipped {count} bad sample(s). First ones:"]
        lines += [f"  - index {e.index}, source {e.source or 'unknown'}: {e.reason}" for e in self._examples]
        return "\n".join(lines)


def _remove_spool(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # never from a forked worker that inherited the counter
        shutil.rmtree(path, ignore_errors=True)


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
        shard, key = (row.pop(name, None) for name in WEBDATASET_ID_COLUMNS)
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
            # a streamed row's index depends on the read order; its shard and key name it in every epoch
            self.bad_samples.record(error, key=(source,) if shard else None)
            decoded["bad_sample"] = error.reason
        return decoded

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        names = list(batch)
        size = len(batch[names[0]]) if names else 0
        rows = [self.decode_row({name: batch[name][i] for name in names}) for i in range(size)]
        out_names = list(rows[0]) if rows else [name for name in names if name not in WEBDATASET_ID_COLUMNS]
        return {name: [row[name] for row in rows] for name in out_names}


__all__ = [
    "BadSampleCounter",
    "BadSampleError",
    "DecodeImageText",
    "ImageTransform",
    "caption_text",
    "decode_image",
    "decode_sample",
    "image_source",
]
