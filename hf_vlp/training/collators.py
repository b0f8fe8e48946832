"""Data collators: lists of ``{"image", "text", ...}`` rows to model-ready tensors, one per training objective.

They accept rows from :func:`hf_vlp.training.data.load_image_text_dataset` (already decoded, with
``sample_index``/``source``/``bad_sample``) as well as plain user rows (PIL images, ``datasets.Image``
storage dicts, paths). The shared :class:`ImageTextCollator` decodes and checks every row, so a bad image is
reported with its index and file name instead of a bare PIL traceback, and with ``skip_bad_samples`` it is
dropped and counted. ``processor`` is any callable with the transformers processor interface
``processor(text=[...], images=[...], return_tensors="pt", ...)``.
"""

from __future__ import annotations

import functools

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from hf_vlp.training.data import BadSampleCounter, BadSampleError, ImageTransform, decode_sample, image_source

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
_UNBOUNDED_LENGTH = 1_000_000  # tokenizers without a real limit report a huge model_max_length


@dataclass
class ImageTextBatch:
    """The usable rows of a batch: decoded RGB images, captions and the source rows they came from."""

    images: list[Image.Image]
    texts: list[str]
    rows: list[dict[str, Any]]


class ImageTextCollator:
    """Base for image-text collators: decodes and validates rows, skips or reports bad ones, runs the processor.

    Args:
        processor: transformers-style processor (image processor + tokenizer) called with ``text=``/``images=``.
        image_transform: optional PIL -> PIL augmentation applied after decoding (e.g. ``clip_train_transform``).
        skip_bad_samples: drop rows whose image cannot be decoded (or whose caption is empty) and count them in
            ``bad_samples``, instead of raising :class:`~hf_vlp.training.data.BadSampleError`. Rows that the
            dataset already marked as skipped (``image=None`` with a ``bad_sample`` reason) are always dropped.
        bad_samples: the counter to record skips in; one is created when omitted (read ``collator.bad_samples``).
        max_length: token limit passed to the tokenizer; ``None`` uses the tokenizer's own limit.
        padding: tokenizer padding mode (``True``/"longest" or "max_length").
        augmentation_seed: when set, ``image_transform`` gets a generator seeded from (seed, epoch, sample index):
            every sample's augmentation is then a pure function of the data, not of global RNG state, so a run
            resumed from a checkpoint or split over processes sees exactly the same images. :meth:`set_epoch`
            (called by :class:`~hf_vlp.training.callbacks.CollatorEpochCallback`) varies it per epoch.
    """

    def __init__(
        self,
        processor: Any,
        image_transform: ImageTransform | None = None,
        skip_bad_samples: bool = False,
        bad_samples: BadSampleCounter | None = None,
        max_length: int | None = None,
        padding: bool | str = True,
        augmentation_seed: int | None = None,
    ):
        if not callable(processor):
            raise TypeError(
                f"processor must be callable like a transformers processor, got {type(processor).__name__}."
            )
        self.processor = processor
        self.image_transform = image_transform
        self.skip_bad_samples = skip_bad_samples
        self.bad_samples = bad_samples if bad_samples is not None else BadSampleCounter()
        self.max_length = max_length
        self.padding = padding
        self.augmentation_seed = augmentation_seed
        self.epoch = 0
        self._warned_truncation = False

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws are used (with ``augmentation_seed``)."""
        self.epoch = epoch

    def _transform_for(self, index: int) -> ImageTransform | None:
        if self.image_transform is None or self.augmentation_seed is None:
            return self.image_transform
        generator = torch.Generator().manual_seed(hash((self.augmentation_seed, self.epoch, int(index))) & (2**63 - 1))
        return functools.partial(self.image_transform, generator=generator)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer inside the processor (or the processor itself when it is a tokenizer)."""
        return getattr(self.processor, "tokenizer", self.processor)

    def _decode_row(self, row: dict[str, Any], position: int, image_key: str, text_key: str) -> tuple[Image.Image, str]:
        has_index = row.get("sample_index") is not None
        index = row["sample_index"] if has_index else position
        source = row.get("source") or image_source(row.get(image_key))
        try:
            if image_key not in row:
                raise BadSampleError(index, source, f"the row has no {image_key!r} entry (keys: {sorted(row)})")
            return decode_sample(row[image_key], row.get(text_key), index, source, self._transform_for(index))
        except BadSampleError as error:
            if has_index:
                raise
            raise BadSampleError(index, error.source, f"{error.reason} [index = position in the batch]") from error

    def collect(
        self, rows: Sequence[dict[str, Any]], image_key: str = "image", text_key: str = "text"
    ) -> ImageTextBatch:
        """Decode every row; drop (and count) bad ones when skipping, else raise naming the sample."""
        batch = ImageTextBatch([], [], [])
        for position, row in enumerate(rows):
            if row.get(image_key) is None and row.get("bad_sample"):
                continue  # skipped and counted by the dataset's decoding transform
            try:
                image, text = self._decode_row(row, position, image_key, text_key)
            except BadSampleError as error:
                if not self.skip_bad_samples:
                    raise
                self.bad_samples.record(error)
                continue
            batch.images.append(image)
            batch.texts.append(text)
            batch.rows.append(row)
        if not batch.rows:
            indices = [row.get("sample_index", position) for position, row in enumerate(rows)]
            raise ValueError(
                f"Every sample of this batch was bad and skipped (indices {indices}); nothing is left to train on. "
                "Check the dataset (see the logged bad samples)."
            )
        return batch

    def _effective_max_length(self) -> int | None:
        if self.max_length is not None:
            return self.max_length
        limit = getattr(self.tokenizer, "model_max_length", None)
        return limit if isinstance(limit, int) and limit < _UNBOUNDED_LENGTH else None

    def encode(self, images: list[Image.Image], texts: list[str]) -> dict[str, torch.Tensor]:
        """Run the processor; returns ``pixel_values``, ``input_ids`` and ``attention_mask``."""
        max_length = self._effective_max_length()
        encoded = self.processor(
            text=texts,
            images=images,
            return_tensors="pt",
            padding=self.padding,
            truncation=max_length is not None,
            max_length=max_length,
        )
        missing = [key for key in ("pixel_values", "input_ids") if key not in encoded]
        if missing:
            raise ValueError(
                f"The processor returned no {missing}; got keys {sorted(encoded)}. Pass an image-text processor."
            )
        input_ids = encoded["input_ids"]
        attention_mask = encoded.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self._warn_if_truncated(attention_mask, max_length)
        return {"pixel_values": encoded["pixel_values"], "input_ids": input_ids, "attention_mask": attention_mask}

    def _warn_if_truncated(self, attention_mask: torch.Tensor, max_length: int | None) -> None:
        if max_length is None or self._warned_truncation:
            return
        at_limit = int((attention_mask.sum(-1) >= max_length).sum())
        if at_limit:
            self._warned_truncation = True
            logger.warning(
                "%d caption(s) in a batch reached the %d-token limit and may have been truncated; "
                "raise max_length if captions are longer. (Warned once.)",
                at_limit,
                max_length,
            )


class ContrastiveCollator(ImageTextCollator):
    """Image-text contrastive batches (CLIP, ALBEF/BLIP ITC): ``pixel_values``, ``input_ids``, ``attention_mask``."""

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collect(rows)
        # a scalar flag (not a column) so Trainer.evaluate() also asks the model for its loss
        return {**self.encode(batch.images, batch.texts), "return_loss": True}


class CaptioningCollator(ImageTextCollator):
    """Captioning / language-modelling batches: adds ``labels`` = ``input_ids`` with ``-100`` on padding.

    ``prompt`` (e.g. BLIP's ``"a picture of "``) is prepended to every caption and its tokens are also set to
    ``-100``, so the loss covers the caption only. The model shifts ``labels`` itself.
    """

    def __init__(
        self,
        processor: Any,
        image_transform: ImageTransform | None = None,
        skip_bad_samples: bool = False,
        bad_samples: BadSampleCounter | None = None,
        max_length: int | None = None,
        padding: bool | str = True,
        prompt: str = "",
    ):
        super().__init__(processor, image_transform, skip_bad_samples, bad_samples, max_length, padding)
        self.prompt = prompt
        self._prompt_ids: list[int] = list(self.tokenizer(prompt)["input_ids"]) if prompt else []

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collect(rows)
        encoded = self.encode(batch.images, [self.prompt + text for text in batch.texts])
        encoded["labels"] = self.caption_labels(encoded["input_ids"], encoded["attention_mask"])
        return encoded

    def caption_labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids`` with padding and prompt tokens replaced by ``-100``."""
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        if not self._prompt_ids:
            return labels
        prompt = torch.tensor(self._prompt_ids, dtype=input_ids.dtype)
        for row in range(input_ids.shape[0]):
            attended = attention_mask[row].nonzero().flatten()  # works for left and right padding
            tokens = input_ids[row, attended]
            length = min(len(prompt), len(tokens))
            mismatch = (tokens[:length] != prompt[:length]).nonzero()
            prefix = int(mismatch[0]) if len(mismatch) else length
            labels[row, attended[:prefix]] = IGNORE_INDEX
        return labels
