"""ViLT processor: images as ViLT's transform and collate, text as its BERT tokenizer call.

The original (``vilt/datasets/base_dataset.py``) tokenises the raw text with bert-base-uncased as
``tokenizer(text, padding="max_length", truncation=True, max_length=40)``: ``[CLS] tokens [SEP]`` padded with
``[PAD]`` to exactly 40 tokens, the size of the model's text position table. There is no text normalisation beyond the
uncased tokenizer's own. NLVR2 batches hold two images per sample, and the collate pads the images of *every* image
key to one canvas (the largest height and width among them all).
"""

from __future__ import annotations

from typing import Any

from transformers import BatchFeature
from transformers.utils import TensorType

from ...utils.text_processing import check_bert_tokenizer, checked_texts
from ..processing_utils import BertTextProcessorBase

# max_text_len of the original config: the text position table has this many rows
DEFAULT_MAX_LENGTH = 40
SECOND_IMAGE_SUFFIX = "_2"


class VlpViltProcessor(BertTextProcessorBase):
    """Pairs a ``VlpViltImageProcessor`` with a BERT (uncased) tokenizer and prepares inputs as the original ViLT does.

    Text is tokenised as it is (the uncased tokenizer lowercases it) to ``[CLS] tokens [SEP]``, padded with ``[PAD]``
    to ``max_length`` (40 by default, as the original; ``padding="longest"`` pads to the longest text instead) and
    cut to ``max_length`` keeping ``[SEP]``, with a warning. No ``token_type_ids`` are returned (the original always
    uses token type 0). Images give ``pixel_values`` and ``pixel_mask``; for NLVR2 pairs ``images_2`` (the second
    image of each pair) gives ``pixel_values_2`` and ``pixel_mask_2`` on the same canvas as the first images.
    ``max_length`` is saved with the processor.
    """

    row_special_tokens = 2
    row_room = "[CLS], one token and [SEP]"

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, max_length: int = DEFAULT_MAX_LENGTH, **kwargs: Any
    ):
        super().__init__(image_processor, tokenizer, **kwargs)
        check_bert_tokenizer(self.tokenizer, "ViLT")
        self._check_max_length(max_length)
        self.max_length = max_length

    @property
    def model_input_names(self) -> list[str]:
        """The text's and the images' inputs, then the second images' (``pixel_values_2``, ``pixel_mask_2``)."""
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

        Returns ``input_ids`` and ``attention_mask`` for text; ``pixel_values`` and ``pixel_mask`` for images;
        ``pixel_values_2`` and ``pixel_mask_2`` for ``images_2``, which needs as many images as ``images``: both lists
        are padded to one canvas, as the original collate does. ``padding`` is ``"max_length"`` (the original's) or
        ``"longest"``/``True``; ``max_length`` overrides the processor's for this call. With ``truncation=False``
        over-long text raises instead of being cut. Extra keyword arguments go to the image processor.
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
        """The text as it is: ViLT has no normalisation or word limit (the uncased tokenizer lowercases it)."""
        return checked_texts(text)

    def _framed_rows(self, tokens: list[list[int]], max_length: int, truncation: bool) -> list[list[int]]:
        """``[CLS] tokens [SEP]`` (a BERT tokenizer's single text), cut to ``max_length`` keeping ``[SEP]``."""
        cls_id, sep_id = self._special_id("cls_token"), self._special_id("sep_token")
        self._overlong_rows([len(ids) + 2 for ids in tokens], max_length, truncation, " (the closing [SEP] is kept)")
        return [[cls_id, *ids[: max_length - 2], sep_id] for ids in tokens]


__all__ = ["VlpViltProcessor"]
