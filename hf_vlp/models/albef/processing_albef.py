"""ALBEF processor: images as ALBEF's test transform, text as its `pre_caption`/`pre_question` + BERT tokenizer.

ALBEF's own tokenizer (`models/tokenization_bert.py`) writes a single sentence as `[CLS] tokens` with **no**
trailing `[SEP]`; VQA answers end in `[SEP]` only because the scripts append the text '[SEP]' to them. This
processor reproduces both with a stock transformers `BertTokenizer`, finding the special tokens by name.
"""

from __future__ import annotations

import re
from typing import Any

from transformers import BatchFeature
from transformers.utils import TensorType

from ...utils.text_processing import first_words, squeeze_whitespace
from ..processing_utils import BertTextProcessorBase

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


class VlpAlbefProcessor(BertTextProcessorBase):
    """Pairs a `VlpAlbefImageProcessor` with a BERT tokenizer and prepares inputs as the original ALBEF does.

    Text is normalised with `pre_caption` (or `pre_question` with `text_kind="question"`), tokenised to
    `[CLS] tokens` without `[SEP]`, padded with `[PAD]` to the longest text (or to `max_length`), and cut to
    `max_length` tokens with a warning. No `token_type_ids` are returned (the model adds type 0 itself, and
    `generate()` rejects unknown inputs). `encode_answers` writes VQA answers as `[CLS] tokens [SEP]`;
    `answer_list` (the fixed candidate answers of VQA ranking) is saved with the processor.
    """

    normalizers = {"caption": pre_caption, "question": pre_question}

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
        self._set_text_settings("ALBEF", max_length, max_words, answer_list)

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
        max_length = self.max_length if max_length is None else max_length
        return self._text_and_images(
            text, images, return_tensors, images_kwargs, text_kind=text_kind, padding=padding,
            truncation=truncation, max_length=max_length, max_words=max_words,
        )

    def _framed_rows(self, tokens: list[list[int]], max_length: int, truncation: bool) -> list[list[int]]:
        """``[CLS] tokens`` (no ``[SEP]``), cut to ``max_length``."""
        cls_id = self._special_id("cls_token")
        sequences = [[cls_id, *ids] for ids in tokens]
        if self._overlong_rows([len(sequence) for sequence in sequences], max_length, truncation):
            sequences = [sequence[:max_length] for sequence in sequences]
        return sequences


__all__ = ["VlpAlbefProcessor", "pre_caption", "pre_question"]
