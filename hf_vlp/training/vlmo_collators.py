"""VLMo's pre-training collators (``hf-vlp train vlmo``): image-text batches with whole-word-masked captions for the
image-text stage, and caption-only batches for the text-only stage (no image decoded). Both mask as ViLT's
pre-training collator does (:class:`~hf_vlp.training.vilt_collators.WholeWordMaskingCollator`); VLMo's VQA and NLVR2
batches are ViLT's (:mod:`hf_vlp.training.vilt_collators`), its retrieval batches plain contrastive ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .data import BadSampleError, caption_text
from .vilt_collators import WholeWordMaskingCollator


class VlmoPretrainingCollator(WholeWordMaskingCollator):
    """Image-text pre-training batches (``VlpVlmoForPretraining.forward``): ``pixel_values``, the clean captions
    (``input_ids``, ``attention_mask``; ITC and ITM read them), the masked captions ``mlm_input_ids`` with
    ``mlm_labels`` (the MLM pass) and ``return_loss=True``. The ITM negatives are not drawn here: the model takes them
    from its contrastive similarities over the global batch."""

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collect(rows)
        encoded = self.encode(batch.images, batch.texts)
        indices = [self.row_index(row, position) for position, row in enumerate(batch.rows)]
        mlm_input_ids, mlm_labels = self.mask(encoded["input_ids"], indices)
        return {**encoded, "mlm_input_ids": mlm_input_ids, "mlm_labels": mlm_labels, "return_loss": True}


class VlmoTextMlmCollator(WholeWordMaskingCollator):
    """Text-only MLM batches (``VlpVlmoForMaskedLM.forward`` without images, VLMo's second stage): the masked captions
    as ``input_ids`` with ``attention_mask`` and ``labels``.

    Rows need only their text (``text``, or ``text_column``; a list of captions gives its first): the image column
    may be absent, and is never decoded. An empty caption is a bad sample (skipped and counted with
    ``skip_bad_samples``)."""

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        texts, indices = self.collect_texts(rows)
        max_length = self._effective_max_length()
        encoded = self.processor(
            text=texts, return_tensors="pt", padding=self.padding, truncation=max_length is not None,
            max_length=max_length,
        )
        self._warn_if_truncated(encoded["attention_mask"], max_length)
        input_ids, labels = self.mask(encoded["input_ids"], indices)
        return {"input_ids": input_ids, "attention_mask": encoded["attention_mask"], "labels": labels}

    def collect_texts(self, rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[int]]:
        """The usable rows' captions and sample indices."""
        texts: list[str] = []
        indices: list[int] = []
        key = self.row_key(rows[0], "text") if rows else "text"
        for position, row in enumerate(rows):
            index = self.row_index(row, position)
            try:
                texts.append(caption_text(row.get(key), index, row.get("source")))
            except BadSampleError as error:
                if not self.skip_bad_samples:
                    raise
                self.bad_samples.record(error)
                continue
            indices.append(index)
        if not texts:
            raise ValueError("Every caption of this batch was empty and skipped; nothing is left to train on.")
        return texts, indices


__all__ = ["VlmoPretrainingCollator", "VlmoTextMlmCollator"]
