"""Processor bases shared by the hf_vlp models: the text-and/or-images call, length checks and padding of token rows,
the BERT-tokenizer side of ALBEF and BLIP (normalisation by text kind, VQA answers, special tokens by name), and the
raw-text BERT call with NLVR2 image pairs of ViLT and VLMo.

Each model's processor keeps its own ``__init__`` signature (transformers saves exactly the ``__init__`` arguments in
``processor_config.json``) and ``__call__`` options; the shared steps live here.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from typing import Any

from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import TensorType

from ..utils.text_processing import (
    TEXT_KINDS,
    check_bert_tokenizer,
    check_positive_int,
    checked_answers,
    checked_texts,
    encode_answer_ids,
)


def overlong_rows(
    lengths: list[int],
    limit: int,
    *,
    limit_name: str,
    truncation: bool,
    fix: str,
    logger: logging.Logger,
    kept_note: str = "",
) -> list[int]:
    """Indices of the rows longer than ``limit`` tokens: an error naming the first when ``truncation`` is off, else a
    warning (on the calling processor's ``logger``) saying how many will be cut. ``fix`` says how to avoid the error,
    ``kept_note`` what the cut keeps."""
    too_long = [index for index, length in enumerate(lengths) if length > limit]
    if too_long and not truncation:
        raise ValueError(
            f"Text {too_long[0]} has {lengths[too_long[0]]} tokens, more than {limit_name}={limit}; {fix}."
        )
    if too_long:
        logger.warning(
            f"{len(too_long)} of {len(lengths)} texts were longer than {limit_name}={limit} tokens and were "
            f"truncated{kept_note}."
        )
    return too_long


PADDING_MODES = ("longest", True, "max_length")


def padded_length(padding: bool | str, max_length: int) -> int | None:
    """The row length ``padding`` asks for: ``max_length`` for ``"max_length"``, ``None`` (the longest row) for
    ``"longest"``/``True``; anything else is an error."""
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be 'longest', True or 'max_length'; got {padding!r}.")
    return max_length if padding == "max_length" else None


def pad_rows(rows: list[list[int]], pad_id: int, length: int | None = None) -> dict[str, list[list[int]]]:
    """Right-pad token rows with ``pad_id`` to ``length`` (the longest row when ``None``), with their 1/0 masks."""
    target = max(len(row) for row in rows) if length is None else length
    return {
        "input_ids": [row + [pad_id] * (target - len(row)) for row in rows],
        "attention_mask": [[1] * len(row) + [0] * (target - len(row)) for row in rows],
    }


class VlpProcessorBase(ProcessorMixin, abc.ABC):
    """A processor pairing an image processor with a tokenizer; ``__call__`` takes text, images or both."""

    @abc.abstractmethod
    def _encode_text(self, text: Any, **text_options: Any) -> dict[str, list[list[int]]]:
        """``input_ids`` and ``attention_mask`` rows of ``text`` (each model's tokenisation)."""

    def _text_and_images(
        self,
        text: Any,
        images: Any,
        return_tensors: str | TensorType | None,
        images_kwargs: dict[str, Any],
        **text_options: Any,
    ) -> BatchFeature:
        """The text's ``input_ids``/``attention_mask`` (``_encode_text(text, **text_options)``) and/or the images'
        ``pixel_values`` (``images_kwargs`` go to the image processor), as one ``BatchFeature``."""
        if text is None and images is None:
            raise ValueError(f"Pass `text`, `images` or both to {type(self).__name__}.")
        if images_kwargs and images is None:
            raise TypeError(f"Unexpected keyword arguments without images: {sorted(images_kwargs)}.")
        data: dict[str, Any] = {}
        if text is not None:
            data.update(self._encode_text(text, **text_options))
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors, **images_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)


class BertTextProcessorBase(VlpProcessorBase):
    """The BERT-tokenizer side shared by ALBEF's and BLIP's processors (and, through
    :class:`RawTextBertProcessorBase`, ViLT's and VLMo's).

    Subclasses name their text normalisations (``normalizers``: text kind -> ``f(text, max_words)``), the default
    word limit per kind (:meth:`default_max_words`) and the special tokens of a row (``row_special_tokens``,
    ``row_room``); :meth:`_set_text_settings` keeps ``max_length``, ``max_words`` and ``answer_list`` (the fixed VQA
    candidates, or ``None``).
    """

    normalizers: dict[str, Callable[[str, int], str]] = {}
    answer_list: list[str] | None = None
    prompt: str = ""  # put before each normalised caption with ``add_prompt`` (BLIP's captioner prompt)

    # special tokens every text row holds, and how an error names them with the one token a row needs besides
    row_special_tokens = 1
    row_room = "[CLS] and one token"

    def _set_text_settings(
        self, model_name: str, max_length: int, max_words: int, answer_list: list[str] | None
    ) -> None:
        """Check the tokenizer and the length settings, and keep them."""
        check_bert_tokenizer(self.tokenizer, model_name)
        self._check_max_length(max_length)
        check_positive_int("max_words", max_words, minimum=1, why="at least one word")
        self.max_length = max_length
        self.max_words = max_words
        self.answer_list = checked_answers(answer_list, "answer_list") if answer_list is not None else None

    def _overlong_rows(self, lengths: list[int], max_length: int, truncation: bool, kept_note: str = "") -> list[int]:
        """:func:`overlong_rows` against ``max_length``, warning on the subclass module's logger."""
        return overlong_rows(
            lengths,
            max_length,
            limit_name="max_length",
            truncation=truncation,
            fix="shorten it, raise max_length or pass truncation=True",
            logger=logging.getLogger(type(self).__module__),
            kept_note=kept_note,
        )

    def _check_max_length(self, max_length: Any) -> None:
        minimum = self.row_special_tokens + 1
        check_positive_int("max_length", max_length, minimum=minimum, why=f"room for {self.row_room}")

    @property
    def unused_input_names(self) -> list[str]:
        """The tokenizer lists ``token_type_ids``, which these processors never return."""
        return ["token_type_ids"]

    def default_max_words(self, text_kind: str) -> int:
        return self.max_words

    def normalize_text(
        self, text: str | list[str], text_kind: str = "caption", max_words: int | None = None
    ) -> list[str]:
        """The text as the model sees it before tokenisation (the original's ``pre_caption`` or ``pre_question``)."""
        if text_kind not in TEXT_KINDS:
            raise ValueError(f"text_kind must be one of {TEXT_KINDS}; got {text_kind!r}.")
        if max_words is None:
            max_words = self.default_max_words(text_kind)
        check_positive_int("max_words", max_words, minimum=1, why="at least one word")
        normalize = self.normalizers[text_kind]
        return [normalize(item, max_words) for item in checked_texts(text)]

    def encode_answers(
        self, answers: list[str] | None = None, return_tensors: str | TensorType | None = None
    ) -> BatchFeature:
        """Tokenise VQA answers as ``[CLS] tokens [SEP]``, padded with ``[PAD]`` to the longest, with their
        ``attention_mask`` (``answer_list`` when ``answers`` is not given).

        Answers are neither normalised nor truncated, as in the originals (they come from a curated answer list); the
        model puts its own start token at position 0.
        """
        if answers is None:
            if self.answer_list is None:
                raise ValueError("No answers given and the processor has no answer_list: pass `answers`.")
            answers = self.answer_list
        return BatchFeature(data=encode_answer_ids(self.tokenizer, answers), tensor_type=return_tensors)

    def _encode_text(
        self,
        text: str | list[str],
        text_kind: str,
        padding: bool | str,
        truncation: bool,
        max_length: int,
        max_words: int | None,
        add_prompt: bool = False,
    ) -> dict[str, list[list[int]]]:
        """Normalise, tokenise, frame (:meth:`_framed_rows`) and pad ``text``; ``add_prompt`` puts ``prompt`` first."""
        pad_to = padded_length(padding, max_length)
        self._check_max_length(max_length)
        texts = self.normalize_text(text, text_kind=text_kind, max_words=max_words)
        if add_prompt:
            texts = [self.prompt + item for item in texts]
        rows = self._framed_rows(self._token_ids(texts), max_length, truncation)
        return pad_rows(rows, self._special_id("pad_token"), pad_to)

    @abc.abstractmethod
    def _framed_rows(self, tokens: list[list[int]], max_length: int, truncation: bool) -> list[list[int]]:
        """Each row of token ids with the model's special tokens, at most ``max_length`` long (see
        :meth:`_overlong_rows` for the warning or error)."""

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tokenizer(
            texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False
        )
        return encoded["input_ids"]

    def _special_id(self, name: str) -> int:
        value = getattr(self.tokenizer, f"{name}_id")
        if value is None:
            raise ValueError(
                f"The tokenizer has no {name}: a BERT tokenizer with [PAD], [CLS], [SEP], [MASK] is needed."
            )
        return int(value)


# appended to the image processor's input names for the second images of NLVR2 pairs (pixel_values_2, ...)
SECOND_IMAGE_SUFFIX = "_2"


class RawTextBertProcessorBase(BertTextProcessorBase):
    """The processor of models whose original tokenises text as it is with one BERT tokenizer call (ViLT, VLMo).

    Those originals call ``tokenizer(text, padding="max_length", truncation=True, max_length=max_text_len)``:
    ``[CLS] tokens [SEP]`` padded with ``[PAD]`` to exactly ``max_length``, no normalisation beyond the uncased
    tokenizer's own, and no token types. Their NLVR2 batches hold two images per sample, given here as ``images`` and
    ``images_2``. Subclasses keep their own ``__init__`` (transformers saves its arguments) and call
    :meth:`_set_max_length` there.
    """

    row_special_tokens = 2
    row_room = "[CLS], one token and [SEP]"

    def _set_max_length(self, model_name: str, max_length: int) -> None:
        """Check the tokenizer (a BERT one, for ``model_name``'s messages) and ``max_length``, and keep the latter."""
        check_bert_tokenizer(self.tokenizer, model_name)
        self._check_max_length(max_length)
        self.max_length = max_length

    @property
    def model_input_names(self) -> list[str]:
        """The text's and the images' inputs, then the second images' (``pixel_values_2``, ...)."""
        second = [name + SECOND_IMAGE_SUFFIX for name in self.image_processor.model_input_names]
        return super().model_input_names + second

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        images_2: Any = None,
        padding: bool | str = "max_length",
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors: str | TensorType | None = None,
        **images_kwargs: Any,
    ) -> BatchFeature:
        """Tokenise ``text`` and/or preprocess ``images`` (and ``images_2``, the second images of NLVR2 pairs).

        Returns ``input_ids`` and ``attention_mask`` for text and the image processor's outputs for images
        (``pixel_values``, and ViLT's ``pixel_mask``); the same names with ``_2`` for ``images_2``, which needs as
        many images as ``images``. Both lists go through one image-processor call, so a padding image processor
        (ViLT's) puts them on one canvas, as the original collate does. ``padding`` is ``"max_length"`` (the
        original's) or ``"longest"``/``True``; ``max_length`` overrides the processor's for this call. With
        ``truncation=False`` over-long text raises instead of being cut. Extra keyword arguments go to the image
        processor.
        """
        max_length = self.max_length if max_length is None else max_length
        text_options = {"text_kind": "caption", "padding": padding, "truncation": truncation,
                        "max_length": max_length, "max_words": None}
        if images_2 is None:
            return self._text_and_images(text, images, return_tensors, images_kwargs, **text_options)
        if images is None:
            raise ValueError("`images_2` holds the second image of each pair: pass the first images as `images` too.")
        first, second = self.image_processor.flatten_images(images), self.image_processor.flatten_images(images_2)
        if len(first) != len(second):
            raise ValueError(
                f"`images` has {len(first)} images and `images_2` {len(second)}: pass one second image per pair."
            )
        batch = self._text_and_images(text, first + second, return_tensors, images_kwargs, **text_options)
        for name in [name for name in self.image_processor.model_input_names if name in batch]:
            batch[name + SECOND_IMAGE_SUFFIX] = batch[name][len(first) :]
            batch[name] = batch[name][: len(first)]
        return batch

    def normalize_text(
        self, text: str | list[str], text_kind: str = "caption", max_words: int | None = None
    ) -> list[str]:
        """The text as it is: no normalisation or word limit (the uncased tokenizer lowercases it)."""
        return checked_texts(text)

    def _framed_rows(self, tokens: list[list[int]], max_length: int, truncation: bool) -> list[list[int]]:
        """``[CLS] tokens [SEP]`` (a BERT tokenizer's single text), cut to ``max_length`` keeping ``[SEP]``."""
        cls_id, sep_id = self._special_id("cls_token"), self._special_id("sep_token")
        self._overlong_rows([len(ids) + 2 for ids in tokens], max_length, truncation, " (the closing [SEP] is kept)")
        return [[cls_id, *ids[: max_length - 2], sep_id] for ids in tokens]


__all__ = [
    "PADDING_MODES",
    "SECOND_IMAGE_SUFFIX",
    "BertTextProcessorBase",
    "RawTextBertProcessorBase",
    "VlpProcessorBase",
    "overlong_rows",
    "pad_rows",
    "padded_length",
]
