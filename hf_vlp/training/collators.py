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
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from hf_vlp.training.data import (
    IMAGE_COLUMN_CANDIDATES,
    TEXT_COLUMN_CANDIDATES,
    BadSampleCounter,
    BadSampleError,
    ImageTransform,
    decode_image,
    decode_sample,
    image_source,
)

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
_UNBOUNDED_LENGTH = 1_000_000  # tokenizers without a real limit report a huge model_max_length


HORIZONTAL_FLIPS = ("none", "image", "swap-left-right")
_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """``text`` with the words "left" and "right" exchanged (case kept), for a horizontally flipped image."""

    def swapped(match: re.Match) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT.sub(swapped, text)


@dataclass
class ImageTextBatch:
    """The usable rows of a batch: decoded RGB images, captions and the source rows they came from; ``flipped[i]``
    tells whether image ``i`` was mirrored (its caption then has "left"/"right" exchanged, see ``horizontal_flip``)."""

    images: list[Image.Image]
    texts: list[str]
    rows: list[dict[str, Any]]
    flipped: list[bool] = field(default_factory=list)


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
        horizontal_flip: mirror each image with probability 0.5 after ``image_transform`` (drawn from the same
            generator): ``"none"`` (default), ``"image"`` (the image only, as the originals do) or
            ``"swap-left-right"`` (also exchange the words "left" and "right" in the text, so that captions about
            positions stay true). Texts that use "left"/"right" for something a mirror does not change (NLVR2's
            "the left image") must use ``"none"``.
        image_column / text_column: the row keys holding the image and the caption. By default ``image``/``text``
            (what :func:`~hf_vlp.training.data.load_image_text_dataset` gives), else the first common name a row
            has (``caption``, ``captions``, ``sentence``, ``description``, ... / ``img``, ``file_name``, ...), so
            rows of a raw ``datasets.Dataset`` work as they are; a row with none of them is an error naming its keys.
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
        horizontal_flip: str = "none",
        image_column: str | None = None,
        text_column: str | None = None,
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
        if horizontal_flip not in HORIZONTAL_FLIPS:
            raise ValueError(f"horizontal_flip must be one of {HORIZONTAL_FLIPS}, got {horizontal_flip!r}.")
        self.horizontal_flip = horizontal_flip
        self.image_column = image_column
        self.text_column = text_column
        self.epoch = 0
        self._warned_truncation = False

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws are used (with ``augmentation_seed``)."""
        self.epoch = epoch

    def sample_generator(self, index: int, stream: str = "") -> torch.Generator | None:
        """The generator of sample ``index`` in the current epoch (``None`` without ``augmentation_seed``: torch's
        global generator is used then). ``stream`` names an independent draw (e.g. ``"mlm"``)."""
        if self.augmentation_seed is None:
            return None
        if not stream:  # tuples of ints hash the same in every process
            return torch.Generator().manual_seed(hash((self.augmentation_seed, self.epoch, int(index))) & (2**63 - 1))
        return torch.Generator().manual_seed(stable_hash((self.augmentation_seed, self.epoch, int(index), stream)))

    def _transform_for(self, index: int, generator: torch.Generator | None = None) -> ImageTransform | None:
        if self.image_transform is None or self.augmentation_seed is None:
            return self.image_transform
        generator = generator if generator is not None else self.sample_generator(index)
        return functools.partial(self.image_transform, generator=generator)

    def _flip(self, image: Image.Image, text: str, generator: torch.Generator | None) -> tuple[Image.Image, str, bool]:
        if self.horizontal_flip == "none" or torch.rand((), generator=generator).item() >= 0.5:
            return image, text, False
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image, swap_left_right(text) if self.horizontal_flip == "swap-left-right" else text, True

    @property
    def tokenizer(self) -> Any:
        """The tokenizer inside the processor (or the processor itself when it is a tokenizer)."""
        return getattr(self.processor, "tokenizer", self.processor)

    @staticmethod
    def row_index(row: dict[str, Any], position: int) -> int:
        """The dataset index of ``row`` (``sample_index``), else its position in the batch."""
        index = row.get("sample_index")
        return int(index) if index is not None else position

    def _decode_row(
        self, row: dict[str, Any], position: int, image_key: str, text_key: str
    ) -> tuple[Image.Image, str, bool]:
        has_index = row.get("sample_index") is not None
        index = self.row_index(row, position)
        source = row.get("source") or image_source(row.get(image_key))
        generator = self.sample_generator(index)
        try:
            if image_key not in row:
                raise BadSampleError(index, source, f"the row has no {image_key!r} entry (keys: {sorted(row)})")
            image, text = decode_sample(row[image_key], row.get(text_key), index, source, self._transform_for(index, generator))
        except BadSampleError as error:
            if has_index:
                raise
            raise BadSampleError(index, error.source, f"{error.reason} [index = position in the batch]") from error
        return self._flip(image, text, generator)

    def row_key(self, row: dict[str, Any], role: str, requested: str | None = None) -> str:
        """The key of ``row`` holding its ``role`` ("image" or "text"): ``requested`` (or the collator's
        ``image_column``/``text_column``) when given, else ``role`` itself, else the first common name the row has.
        A row holding none of them is a ``ValueError`` naming its keys (a dataset problem, never skipped as a bad
        sample)."""
        requested = requested or (self.image_column if role == "image" else self.text_column)
        if requested is not None:
            if requested in row:
                return requested
            candidates: Sequence[str] = (requested,)
        else:
            candidates = (role, *(IMAGE_COLUMN_CANDIDATES if role == "image" else TEXT_COLUMN_CANDIDATES))
            for candidate in candidates:
                if candidate in row:
                    return candidate
        hint = (
            " The row is empty: with transformers.Trainer set remove_unused_columns=False (TrainingArguments), or the "
            "Trainer drops every column the model's forward does not name."
            if not row else ""
        )
        raise ValueError(
            f"The collator cannot find the {role} of a row: it has the keys {sorted(row)}, none of "
            f"{', '.join(map(repr, dict.fromkeys(candidates)))}. Pass {role}_column='<key>' to "
            f"{type(self).__name__} (hf-vlp train: --{role}-column), or rename the column to '{role}'.{hint}"
        )

    def collect(
        self, rows: Sequence[dict[str, Any]], image_key: str | None = None, text_key: str | None = None
    ) -> ImageTextBatch:
        """Decode every row; drop (and count) bad ones when skipping, else raise naming the sample. The image and
        caption are read from ``image_key``/``text_key`` (default: see :meth:`row_key`)."""
        batch = ImageTextBatch([], [], [])
        if rows:
            image_key = self.row_key(rows[0], "image", image_key)
            text_key = self.row_key(rows[0], "text", text_key)
        for position, row in enumerate(rows):
            if row.get(image_key) is None and row.get("bad_sample"):
                continue  # skipped and counted by the dataset's decoding transform
            try:
                image, text, flipped = self._decode_row(row, position, image_key, text_key)
            except BadSampleError as error:
                if not self.skip_bad_samples:
                    raise
                self.bad_samples.record(error)
                continue
            batch.images.append(image)
            batch.texts.append(text)
            batch.rows.append(row)
            batch.flipped.append(flipped)
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

    def encode(self, images: list[Image.Image], texts: list[str], **text_kwargs: Any) -> dict[str, torch.Tensor]:
        """Run the processor; returns ``pixel_values``, ``input_ids`` and ``attention_mask``, plus every other image
        tensor the processor gives (``pixel_mask`` of a padded canvas, ViLT's ``pixel_values_2``/``pixel_mask_2``).
        ``text_kwargs`` go to the processor too (e.g. ALBEF's ``text_kind="question"``, ViLT's ``images_2=``)."""
        max_length = self._effective_max_length()
        encoded = self.processor(
            text=texts,
            images=images,
            return_tensors="pt",
            padding=self.padding,
            truncation=max_length is not None,
            max_length=max_length,
            **text_kwargs,
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
        pixels = {name: value for name, value in encoded.items() if name.startswith("pixel_")}
        return {**pixels, "input_ids": input_ids, "attention_mask": attention_mask}

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


def stable_hash(key: tuple) -> int:
    """A 63-bit seed from a tuple of ints and strings, equal in every process (``hash`` of a string is salted)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


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

    def __init__(self, processor: Any, *args: Any, prompt: str = "", **kwargs: Any):
        super().__init__(processor, *args, **kwargs)
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


class BlipCaptionCollator(ImageTextCollator):
    """Captioner batches as ``BLIP_Decoder`` trains: ``prompt + pre_caption(caption)`` (the processor's
    ``add_prompt``) as ``input_ids``/``attention_mask`` with ``labels`` = the ids with ``[PAD]`` and the first
    ``processor.prompt_length`` positions (``[DEC]`` + prompt) set to -100, so the loss covers the caption only."""

    def __init__(self, processor: Any, **kwargs: Any):
        if not hasattr(processor, "prompt_length"):
            raise TypeError(f"{type(processor).__name__} has no caption prompt; pass a VlpBlipProcessor.")
        kwargs.setdefault("max_length", getattr(processor, "max_length", None))
        super().__init__(processor, **kwargs)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collect(rows)
        encoded = self.encode(batch.images, batch.texts, add_prompt=True)
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, IGNORE_INDEX)
        labels[:, : self.processor.prompt_length] = IGNORE_INDEX
        return {**encoded, "labels": labels}


# ------------------------------------------------------------------------------- fusion-model fine-tuning tasks


def stable_image_id(value: Any, index: int) -> int:
    """A non-negative integer id for an image: integers as they are, strings (file names, COCO ids as text)
    through a stable 63-bit hash, a missing id as the row's dataset index (each row its own image)."""
    if value is None:
        return int(index)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"image_id of sample {index} must be an integer or a string, got {type(value).__name__}.")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"image_id of sample {index} is negative ({value}); image ids must be >= 0.")
        return value
    return stable_hash(("image_id", value))


class AlbefPretrainingCollator(ImageTextCollator):
    """ALBEF pre-training batches: ``pixel_values``, ``input_ids``, ``attention_mask`` and the MLM inputs
    ``mlm_input_ids``/``mlm_labels``, plus ``return_loss=True``.

    The masking is ALBEF's (:func:`hf_vlp.objectives.mlm.mask_tokens`: 15% of the non-special tokens,
    80% ``[MASK]`` / 10% random id over ``vocab_size`` / 10% kept) but done here, on each caption's own tokens
    with a generator seeded by ``(mlm_seed, epoch, sample index)``: the masking is then a function of the data,
    so a resumed run or one split over processes masks exactly as one uninterrupted process does (the model's own
    masking would draw from the global RNG, whose state depends on what ran before).
    """

    def __init__(
        self,
        processor: Any,
        *,
        vocab_size: int,
        mlm_probability: float = 0.15,
        mlm_seed: int = 0,
        **kwargs: Any,
    ):
        kwargs.setdefault("max_length", getattr(processor, "max_length", None))
        super().__init__(processor, **kwargs)
        tokenizer = self.tokenizer
        missing = [name for name in ("mask_token_id", "cls_token_id", "pad_token_id") if getattr(tokenizer, name, None) is None]
        if missing:
            raise ValueError(f"MLM masking needs a tokenizer with [MASK], [CLS] and [PAD]; it has no {missing}.")
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must lie in (0, 1), got {mlm_probability}.")
        self.vocab_size = vocab_size
        self.mlm_probability = mlm_probability
        self.mlm_seed = mlm_seed

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        from ..objectives.mlm import mask_tokens

        batch = self.collect(rows)
        encoded = self.encode(batch.images, batch.texts)
        input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
        tokenizer = self.tokenizer
        mlm_input_ids = input_ids.clone()
        mlm_labels = torch.full_like(input_ids, IGNORE_INDEX)
        for position, row in enumerate(batch.rows):
            keep = attention_mask[position].bool()
            index = self.row_index(row, position)
            generator = torch.Generator().manual_seed(stable_hash((self.mlm_seed, self.epoch, index, "mlm")))
            masked, labels = mask_tokens(
                input_ids[position, keep][None],
                vocab_size=self.vocab_size,
                mask_token_id=tokenizer.mask_token_id,
                special_token_ids=(tokenizer.pad_token_id, tokenizer.cls_token_id),
                mlm_probability=self.mlm_probability,
                generator=generator,
            )
            mlm_input_ids[position, keep] = masked[0]
            mlm_labels[position, keep] = labels[0]
        return {**encoded, "mlm_input_ids": mlm_input_ids, "mlm_labels": mlm_labels, "return_loss": True}


class RetrievalCollator(ImageTextCollator):
    """Image-text retrieval fine-tuning batches (ALBEF/BLIP): ``pixel_values``, ``input_ids``, ``attention_mask``
    and ``image_ids`` (captions of one image share its id; see :func:`stable_image_id`), read from ``id_key``."""

    def __init__(self, processor: Any, *, id_key: str = "image_id", **kwargs: Any):
        kwargs.setdefault("max_length", getattr(processor, "max_length", None))
        super().__init__(processor, **kwargs)
        self.id_key = id_key

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collect(rows)
        ids = [
            stable_image_id(row.get(self.id_key), self.row_index(row, position))
            for position, row in enumerate(batch.rows)
        ]
        return {**self.encode(batch.images, batch.texts), "image_ids": torch.tensor(ids, dtype=torch.long)}


def answer_strings(value: Any, index: int) -> str | list[str]:
    """A VQA row's answer as a string, or its list of (human) answers as strings (duplicates kept, for scoring)."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (list, tuple)) and value:
        answers = [item.get("answer") if isinstance(item, dict) else item for item in value]
        if all(isinstance(answer, str) and answer.strip() for answer in answers):
            return answers
    raise BadSampleError(index, None, f"the answer is missing or not a string / list of strings ({value!r})")


def weighted_answers(value: Any, index: int) -> tuple[list[str], list[float]]:
    """The distinct answers of a VQA row and their weights: a single answer weighs 1; a list (VQA's ten human
    answers, as strings or ``{"answer": ...}`` dicts) gives each distinct answer its share of the list, as the
    original ``vqa_dataset`` does."""
    answers = answer_strings(value, index)
    answers = [answers] if isinstance(answers, str) else answers
    weights: dict[str, float] = {}
    for answer in answers:
        weights[answer] = weights.get(answer, 0.0) + 1.0 / len(answers)
    return list(weights), list(weights.values())


class QuestionAnsweringCollator(ImageTextCollator):
    """VQA fine-tuning batches in the format of ``VlpAlbefForQuestionAnswering.forward``: ``pixel_values``,
    ``input_ids``/``attention_mask`` (questions, normalised as questions), ``answer_input_ids``/
    ``answer_attention_mask`` (every answer of every question, grouped by question, from
    ``processor.encode_answers``), ``answer_weights``, ``answers_per_question`` and ``return_loss=True``.

    Rows hold the question in ``text`` and the answer(s) in ``answer_key`` (a name, or names tried in order; see
    :func:`weighted_answers`). With
    ``horizontal_flip="swap-left-right"`` a mirrored image gets "left"/"right" exchanged in question and answers.
    """

    def __init__(self, processor: Any, *, answer_key: str | Sequence[str] = ("answer", "answers"), **kwargs: Any):
        if not callable(getattr(processor, "encode_answers", None)):
            raise TypeError(f"{type(processor).__name__} has no encode_answers(answers); pass a VQA processor.")
        kwargs.setdefault("max_length", getattr(processor, "max_length", None))
        super().__init__(processor, **kwargs)
        self.answer_key = answer_key

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collect(rows)
        answers: list[str] = []
        weights: list[float] = []
        counts: list[int] = []
        for position, (row, flipped) in enumerate(zip(batch.rows, batch.flipped)):
            row_answers, row_weights = weighted_answers(first_present(row, self.answer_key), self.row_index(row, position))
            if flipped and self.horizontal_flip == "swap-left-right":
                row_answers = [swap_left_right(answer) for answer in row_answers]
            answers += row_answers
            weights += row_weights
            counts.append(len(row_answers))
        encoded = self.encode(batch.images, batch.texts, text_kind="question")
        answer_tokens = self.processor.encode_answers(answers, return_tensors="pt")
        return {
            **encoded,
            "answer_input_ids": answer_tokens["input_ids"],
            "answer_attention_mask": answer_tokens["attention_mask"],
            "answer_weights": torch.tensor(weights, dtype=torch.float32),
            "answers_per_question": torch.tensor(counts, dtype=torch.long),
            "return_loss": True,
        }


def first_present(row: dict[str, Any], keys: str | Sequence[str]) -> Any:
    """The value of the first of ``keys`` that ``row`` holds (not ``None``), else ``None``."""
    for key in (keys,) if isinstance(keys, str) else keys:
        if row.get(key) is not None:
            return row[key]
    return None


def binary_label(value: Any, index: int) -> int:
    """0/1 from a bool, 0/1 integer or "true"/"false" string (NLVR2 labels)."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return int(value.strip().lower() == "true")
    if isinstance(value, (bool, int)) and int(value) in (0, 1):
        return int(value)
    raise BadSampleError(index, None, f"the label must be true/false or 0/1, got {value!r}")


class VisualReasoningCollator(ImageTextCollator):
    """NLVR2 batches: two images per row stacked as ``pixel_values`` ``[B, 2, C, H, W]`` (``image``, then
    ``second_image_key``: a name, or names tried in order), the statement as ``input_ids``/``attention_mask`` and
    ``labels`` ``[B]`` in {0, 1} (from ``label_key``, else ``label``).

    Each image gets ``image_transform`` with its own per-sample generator. There is no horizontal flip: NLVR2
    statements say "left"/"right" both for image order and for positions inside an image, so neither a plain
    flip nor a word swap keeps every statement true (``horizontal_flip`` must stay ``"none"``).
    """

    def __init__(
        self,
        processor: Any,
        *,
        second_image_key: str | Sequence[str] = ("image_right", "right_image"),
        label_key: str = "nlvr_label",
        **kwargs: Any,
    ):
        kwargs.setdefault("max_length", getattr(processor, "max_length", None))
        super().__init__(processor, **kwargs)
        if self.horizontal_flip != "none":
            raise ValueError("NLVR2 statements refer to image order with 'left'/'right'; use horizontal_flip='none'.")
        self.second_image_key = second_image_key
        self.label_key = label_key

    def _decode_second(self, row: dict[str, Any], position: int) -> Image.Image:
        index = self.row_index(row, position)
        value = first_present(row, self.second_image_key)
        source = image_source(value)
        generator = self.sample_generator(index, stream="second")
        transform = self.image_transform
        if transform is not None and self.augmentation_seed is not None:
            transform = functools.partial(transform, generator=generator)
        image = decode_image(value, index, source)
        if transform is None:
            return image
        try:
            return transform(image)
        except Exception as error:  # as decode_sample: a transform failing on one image is that image's problem
            raise BadSampleError(index, source, f"the image transform failed ({type(error).__name__}: {error})") from error

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        firsts, seconds, texts, labels = self.pairs(rows)
        return {**self.encode_pairs(firsts, seconds, texts), "labels": torch.tensor(labels, dtype=torch.long)}

    def pairs(self, rows: Sequence[dict[str, Any]]) -> tuple[list[Image.Image], list[Image.Image], list[str], list[int]]:
        """The usable rows' first images, second images, statements and labels (bad rows skipped or raised)."""
        batch = self.collect(rows)
        seconds, labels, kept = [], [], []
        for position, row in enumerate(batch.rows):
            try:
                label = binary_label(row.get(self.label_key, row.get("label")), self.row_index(row, position))
                second = self._decode_second(row, position)
            except BadSampleError as error:
                if not self.skip_bad_samples:
                    raise
                self.bad_samples.record(error)
                continue
            kept.append(position)
            seconds.append(second)
            labels.append(label)
        if not kept:
            raise ValueError("Every sample of this batch was bad and skipped; nothing is left to train on.")
        firsts = [batch.images[position] for position in kept]
        texts = [batch.texts[position] for position in kept]
        return firsts, seconds, texts, labels

    def encode_pairs(self, firsts: list[Image.Image], seconds: list[Image.Image], texts: list[str]) -> dict[str, Any]:
        """The model inputs of the pairs: both images stacked as ``pixel_values`` ``[B, 2, C, H, W]`` (ALBEF, BLIP)."""
        encoded = self.encode(firsts + seconds, texts + texts)
        size = len(firsts)
        pixel_values = torch.stack([encoded["pixel_values"][:size], encoded["pixel_values"][size:]], dim=1)
        return {
            "pixel_values": pixel_values,
            "input_ids": encoded["input_ids"][:size],
            "attention_mask": encoded["attention_mask"][:size],
        }


class VisualEntailmentCollator(ImageTextCollator):
    """SNLI-VE batches: ``pixel_values``, the hypothesis as ``input_ids``/``attention_mask`` and ``labels``
    ``[B]``: a string label (``gold_label``: "entailment", ...) goes through ``label2id`` (the model's
    ``config.label2id``), an integer is taken as the model's class id."""

    def __init__(self, processor: Any, *, label2id: dict[str, int], label_key: str = "gold_label", **kwargs: Any):
        kwargs.setdefault("max_length", getattr(processor, "max_length", None))
        super().__init__(processor, **kwargs)
        if not label2id:
            raise ValueError("label2id is empty; pass the model's config.label2id.")
        self.label2id = {str(name).lower(): int(value) for name, value in label2id.items()}
        self.label_key = label_key

    def label_id(self, value: Any, index: int) -> int:
        """The model's class id of a row's label."""
        if isinstance(value, str) and value.strip().lower() in self.label2id:
            return self.label2id[value.strip().lower()]
        if isinstance(value, int) and not isinstance(value, bool) and value in self.label2id.values():
            return value
        raise BadSampleError(index, None, f"the label {value!r} is none of {sorted(self.label2id)} (or their ids)")

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collect(rows)
        labels = [
            self.label_id(row.get(self.label_key, row.get("label")), self.row_index(row, position))
            for position, row in enumerate(batch.rows)
        ]
        return {**self.encode(batch.images, batch.texts), "labels": torch.tensor(labels, dtype=torch.long)}
