"""VLMo processor: images as VLMo's square transform, text as its BERT tokenizer call.

The original (microsoft/unilm ``vlmo/datasets/base_dataset.py``, ViLT's data pipeline) tokenises the raw text with
bert-base-uncased as ``tokenizer(text, padding="max_length", truncation=True, max_length=max_text_len)``, 40 by
default: ``[CLS] tokens [SEP]`` padded with ``[PAD]`` to exactly ``max_text_len``. The padding matters more than in
ViLT: the fusion layers split the joint sequence at ``max_text_len`` and the relative-position indices are built for
that text length. NLVR2 samples hold two images; the square resize gives them one size, so no pixel mask is needed.
"""

from __future__ import annotations

from typing import Any

from ..processing_utils import RawTextBertProcessorBase

# max_text_len of the original config: the fused sequence's text part has this many tokens
DEFAULT_MAX_LENGTH = 40


class VlpVlmoProcessor(RawTextBertProcessorBase):
    """Pairs a ``VlpVlmoImageProcessor`` with a BERT (uncased) tokenizer and prepares inputs as the original VLMo does.

    Text is tokenised as it is (the uncased tokenizer lowercases it) to ``[CLS] tokens [SEP]``, padded with ``[PAD]``
    to ``max_length`` (40 by default, the original's ``max_text_len``; ``padding="longest"`` pads to the longest
    text instead, for the text-only encoder) and cut to ``max_length`` keeping ``[SEP]``, with a warning. No
    ``token_type_ids`` are returned. Images give ``pixel_values``; for NLVR2 pairs ``images_2`` (the second image of
    each pair) gives ``pixel_values_2``. ``max_length`` is saved with the processor. The call and its checks are
    those of :class:`~hf_vlp.models.processing_utils.RawTextBertProcessorBase`.
    """

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, max_length: int = DEFAULT_MAX_LENGTH, **kwargs: Any
    ):
        super().__init__(image_processor, tokenizer, **kwargs)
        self._set_max_length("VLMo", max_length)


__all__ = ["VlpVlmoProcessor"]
