"""ALBEF processor: images as ALBEF's test transform, text as its `pre_caption`/`pre_question` + BERT tokenizer.

ALBEF's own tokenizer (`models/tokenization_bert.py`) writes a single sentence as `[CLS] tokens` with **no**
trailing `[SEP]`; VQA answers end in `[SEP]` only because the scripts append the text '[SEP]' to them. This
processor reproduces both with a stock transformers `BertTokenizer`, finding the special tokens by name.
"""

from __future__ import annotations

import re
from typing import Any

from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import TensorType, logging

from ...utils.text_processing import (
    TEXT_KINDS,
    check_bert_tokenizer,
    check_positive_int,
    checked_answers,
    checked_texts,
    first_words,
    squeeze_whitespace,
)

logger = logging.get_logger(__name__)

# Pretraining settings of the original (Pretrain.py: max_length=25; dataset/utils.py via the datasets: 30 words).
DEFAULT_MAX_LENGTH = 25
DEFAULT_MAX_WORDS = 30

_PUNCTUATION = re.compile(r"([,.'!?\"()*#:;~])")


def pre_caption(caption: str, max_words: int = DEFAULT_MAX_WORDS) -> str:
    """ALBEF's caption normalisation: lowercase, drop `,.'!?"()*#:;~`, `-` and `/` to spaces, `<person>` to
    `person`, squeeze whitespace, strip, keep the first `max_words` words."""
    caption = _PUNCTUATION.sub("", caption.lower()).replace("-", " ").replace("/", " ").replace("<person>", "person")
    return first_words(squeeze_whitespace(caption), max_words)


def pre_question(question: str, max_words: int = DEFAULT_MAX_WORDS) -> str:
    """ALBEF's question normalisation: as `pre_caption` but without squeezing whitespace or `<person>`, and only
    trailing spaces stripped (the original counts empty strings between repeated spaces as words)."""
    question = _PUNCTUATION.sub("", question.lower()).replace("-", " ").replace("/", " ").rstrip(" ")
    return first_words(question, max_words)


class VlpAlbefProcessor(ProcessorMixin):
    """Pairs a `VlpAlbefImageProcessor` with a BERT tokenizer and prepares inputs as the original ALBEF does.

    Text is normalised with `pre_caption` (or `pre_question` with `text_kind="question"`), tokenised to
    `[CLS] tokens` without `[SEP]`, padded with `[PAD]` to the longest text (or to `max_length`), and cut to
    `max_length` tokens with a warning. No `token_type_ids` are returned (the model adds type 0 itself, and
    `generate()` rejects unknown inputs). `encode_answers` writes VQA answers as `[CLS] tokens [SEP]`;
    `answer_list` (the fixed candidate answers of VQA ranking) is saved with the processor.
    """

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        max_words: int = DEFAULT_MAX_WORDS,
        answer_list: list[str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(image_processor, tokenizer, **kwargs)
        check_bert_tokenizer(tokenizer, "ALBEF")
        check_positive_int("max_length", max_length, minimum=2, why="room for [CLS] and one token")
        check_positive_int("max_words", max_words, minimum=1, why="at least one word")
        self.max_length = max_length
        self.max_words = max_words
        self.answer_list = checked_answers(answer_list, "answer_list") if answer_list is not None else None

    @property
    def unused_input_names(self) -> list[str]:
        """The tokenizer lists `token_type_ids`, which this processor never returns."""
        return ["token_type_ids"]

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        text_kind: str = "caption",
        padding: bool | str = "longest",
        truncation: bool = True,
        max_length: int | None = None,
        max_words: int | None = None,
        return_tensors: str | TensorType | None = None,
        **images_kwargs: Any,
    ) -> BatchFeature:
        """Tokenise `text` and/or preprocess `images`.

        Returns `input_ids` and `attention_mask` for text, `pixel_values` for images. `text_kind` picks the
        normalisation (`"caption"`: `pre_caption`, `"question"`: `pre_question`, as ALBEF's VQA). `padding` is
        `"longest"`/`True` (the original's setting) or `"max_length"` (ALBEF's retrieval evaluation).
        `max_length`/`max_words` override the processor's settings for this call. With `truncation=False`,
        over-long text raises instead of being cut. Extra keyword arguments go to the image processor.
        """
        if text is None and images is None:
            raise ValueError("Pass `text`, `images` or both to VlpAlbefProcessor.")
        if images_kwargs and images is None:
            raise TypeError(f"Unexpected keyword arguments without images: {sorted(images_kwargs)}.")
        data: dict[str, Any] = {}
        if text is not None:
            data.update(
                self._encode_text(
                    text,
                    text_kind=text_kind,
                    padding=padding,
                    truncation=truncation,
                    max_length=self.max_length if max_length is None else max_length,
                    max_words=self.max_words if max_words is None else max_words,
                )
            )
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors, **images_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def normalize_text(
        self, text: str | list[str], text_kind: str = "caption", max_words: int | None = None
    ) -> list[str]:
        """The text as the model sees it before tokenisation (`pre_caption` or `pre_question`)."""
        if text_kind not in TEXT_KINDS:
            raise ValueError(f"text_kind must be one of {TEXT_KINDS}; got {text_kind!r}.")
        max_words = self.max_words if max_words is None else max_words
        check_positive_int("max_words", max_words, minimum=1, why="at least one word")
        normalize = pre_caption if text_kind == "caption" else pre_question
        return [normalize(item, max_words) for item in checked_texts(text)]

    def encode_answers(
        self, answers: list[str] | None = None, return_tensors: str | TensorType | None = None
    ) -> BatchFeature:
        """Tokenise VQA answers as `[CLS] tokens [SEP]`, padded to the longest (`answer_list` when not given).

        Answers are not normalised or truncated, as in the original (they come from a curated answer list).
        """
        if answers is None:
            if self.answer_list is None:
                raise ValueError("No answers given and the processor has no answer_list: pass `answers`.")
            answers = self.answer_list
        answers = checked_answers(answers, "answers")
        cls_id, sep_id = self._special_id("cls_token"), self._special_id("sep_token")
        token_ids = self._token_ids(answers)
        return BatchFeature(
            data=self._pad([[cls_id, *ids, sep_id] for ids in token_ids], None), tensor_type=return_tensors
        )

    def _encode_text(
        self,
        text: str | list[str],
        text_kind: str,
        padding: bool | str,
        truncation: bool,
        max_length: int,
        max_words: int,
    ) -> dict[str, list[list[int]]]:
        if padding not in ("longest", True, "max_length"):
            raise ValueError(f"padding must be 'longest', True or 'max_length'; got {padding!r}.")
        check_positive_int("max_length", max_length, minimum=2, why="room for [CLS] and one token")
        normalized = self.normalize_text(text, text_kind=text_kind, max_words=max_words)
        cls_id = self._special_id("cls_token")
        sequences = [[cls_id, *ids] for ids in self._token_ids(normalized)]

        too_long = [index for index, sequence in enumerate(sequences) if len(sequence) > max_length]
        if too_long and not truncation:
            raise ValueError(
                f"Text {too_long[0]} has {len(sequences[too_long[0]])} tokens, more than max_length={max_length}; "
                "shorten it, raise max_length or pass truncation=True."
            )
        if too_long:
            logger.warning(
                f"{len(too_long)} of {len(sequences)} texts were longer than max_length={max_length} tokens and "
                "were truncated."
            )
            sequences = [sequence[:max_length] for sequence in sequences]
        return self._pad(sequences, max_length if padding == "max_length" else None)

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tokenizer(
            texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False
        )
        return encoded["input_ids"]

    def _pad(self, sequences: list[list[int]], length: int | None) -> dict[str, list[list[int]]]:
        target = max(len(sequence) for sequence in sequences) if length is None else length
        pad_id = self._special_id("pad_token")
        return {
            "input_ids": [sequence + [pad_id] * (target - len(sequence)) for sequence in sequences],
            "attention_mask": [[1] * len(sequence) + [0] * (target - len(sequence)) for sequence in sequences],
        }

    def _special_id(self, name: str) -> int:
        return getattr(self.tokenizer, f"{name}_id")


__all__ = ["VlpAlbefProcessor", "pre_caption", "pre_question"]
