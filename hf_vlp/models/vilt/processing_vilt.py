"""ViLT processor: images as ViLT's transform and collate, text as its BERT tokenizer call.

The original (``vilt/datasets/base_dataset.py``) tokenises the raw text with bert-base-uncased as
``tokenizer(text, padding="max_length", truncation=True, max_length=40)``: ``[CLS] tokens [SEP]`` padded with
``[PAD]`` to exactly 40 tokens, the size of the model's text position table. There is no text normalisation beyond the
uncased tokenizer's own. NLVR2 batches hold two images per sample, and the collate pads the images of *every* image
key to one canvas (the largest height and width among them all).
"""

from __future__ import annotations

from typing import Any

from ..processing_utils import RawTextBertProcessorBase

# max_text_len of the original config: the text position table has this many rows
DEFAULT_MAX_LENGTH = 40


class VlpViltProcessor(RawTextBertProcessorBase):
    """Pairs a ``VlpViltImageProcessor`` with a BERT (uncased) tokenizer and prepares inputs as the original ViLT does.

    Text is tokenised as it is (the uncased tokenizer lowercases it) to ``[CLS] tokens [SEP]``, padded with ``[PAD]``
    to ``max_length`` (40 by default, as the original; ``padding="longest"`` pads to the longest text instead) and
    cut to ``max_length`` keeping ``[SEP]``, with a warning. No ``token_type_ids`` are returned (the original always
    uses token type 0). Images give ``pixel_values`` and ``pixel_mask``; for NLVR2 pairs ``images_2`` (the second
    image of each pair) gives ``pixel_values_2`` and ``pixel_mask_2`` on the same canvas as the first images.
    ``max_length`` is saved with the processor. The call and its checks are those of
    :class:`~hf_vlp.models.processing_utils.RawTextBertProcessorBase`.
    """

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, max_length: int = DEFAULT_MAX_LENGTH, **kwargs: Any
    ):
        super().__init__(image_processor, tokenizer, **kwargs)
        self._set_max_length("ViLT", max_length)


__all__ = ["VlpViltProcessor"]
