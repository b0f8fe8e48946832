"""Decoding image-text rows: images to RGB ``PIL.Image``, captions to ``str``, and the bad-sample errors, counter and
row transforms that name (or skip and count) a sample that cannot be used."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
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
            self.bad_samples.record(error)
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
