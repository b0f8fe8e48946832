"""ViLT's data collators (``hf-vlp train vilt``): pre-training batches with whole-word masking and in-batch ITM
pairs, VQA batches with soft answer scores over the answer vocabulary, NLVR2 image pairs and retrieval groups of one
image with its caption and negative captions. They build on :class:`~hf_vlp.training.collators.ImageTextCollator`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from .collators import ImageTextCollator, VisualReasoningCollator, stable_hash, answer_strings, first_present
from .collators import stable_image_id, swap_left_right
from .data import BadSampleError

logger = logging.getLogger(__name__)

# ViLT's VQA target per answer from the number of annotators who gave it (``vilt/utils/write_vqa.py``'s get_score)
VQA_ANNOTATOR_SCORES = (0.0, 0.3, 0.6, 0.9, 1.0)


def vqa_soft_score(count: int) -> float:
    """The soft target of an answer given by ``count`` of a question's annotators: 0.3 / 0.6 / 0.9 for 1 / 2 / 3,
    1.0 from 4 on (VQAv2's ten answers per question)."""
    return VQA_ANNOTATOR_SCORES[min(max(int(count), 0), len(VQA_ANNOTATOR_SCORES) - 1)]


def _batch_generator(seed: int, epoch: int, indices: Sequence[int], stream: str) -> torch.Generator:
    """A generator for a draw over a whole batch, a function of the seed, the epoch and the batch's sample indices
    (so a resumed run or another process draws the same for the same batch)."""
    return torch.Generator().manual_seed(stable_hash((seed, epoch, tuple(int(index) for index in indices), stream)))


def _other_images(ids: Sequence[int], row: int) -> list[int]:
    """The batch rows whose image is not row ``row``'s (another ``image_id``); rows other than ``row`` when every row
    shows the same image."""
    others = [other for other, image_id in enumerate(ids) if image_id != ids[row]]
    return others or [other for other in range(len(ids)) if other != row]


class WholeWordMaskingCollator(ImageTextCollator):
    """Base of the collators that mask captions for MLM as ViLT and VLMo pre-train: :meth:`mask` gives the masked
    ids and their labels.

    Whole-word masking (``whole_word_masking``, the released models' setting; :func:`whole_word_mask_tokens`: words of
    a WordPiece token and its ``##`` pieces, up to ``mlm_probability`` of the caption's tokens, 80% [MASK] / 10% random
    id below ``vocab_size`` / 10% kept), else ``mlm_probability`` of the tokens one by one with [CLS], [SEP] and [PAD]
    never masked (the originals' ``DataCollatorForLanguageModeling``). ``count_padding_as_words`` reproduces ViLT's
    pre-training quirk: its collator saw captions padded to ``max_length`` (40) and counted every [PAD] as a candidate
    word of the 15% budget, then dropped them, so short captions get fewer masks than 15% (often none). It pads the
    captions to ``max_length`` too; off by default (correct masking).

    Each row is masked with a generator seeded by ``(seed, epoch, sample index)``, so resumed and multi-process runs
    mask exactly as one uninterrupted run.
    """

    def __init__(
        self,
        processor: Any,
        *,
        vocab_size: int,
        mlm_probability: float = 0.15,
        whole_word_masking: bool = True,
        count_padding_as_words: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ):
        kwargs.setdefault("max_length", getattr(processor, "max_length", None))
        if count_padding_as_words:
            kwargs["padding"] = "max_length"  # the quirk counts the padding of the original's 40-token captions
        super().__init__(processor, **kwargs)
        tokenizer = self.tokenizer
        names = ("mask_token_id", "cls_token_id", "sep_token_id", "pad_token_id")
        missing = [name for name in names if getattr(tokenizer, name, None) is None]
        if missing:
            raise ValueError(f"MLM masking needs a tokenizer with [MASK], [CLS], [SEP] and [PAD]; it has no {missing}.")
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must lie in (0, 1), got {mlm_probability}.")
        if count_padding_as_words and not whole_word_masking:
            raise ValueError("count_padding_as_words is a quirk of whole-word masking; set whole_word_masking=True.")
        self.vocab_size = vocab_size
        self.mlm_probability = mlm_probability
        self.whole_word_masking = whole_word_masking
        self.count_padding_as_words = count_padding_as_words
        self.seed = seed

    def mask(self, input_ids: torch.Tensor, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The masked captions and their MLM labels (-100 where nothing is masked), each row drawn from its sample's
        own generator."""
        from ..objectives.mlm import mask_tokens, whole_word_mask_tokens, word_starts_from_tokens

        tokenizer = self.tokenizer
        special = (tokenizer.cls_token_id, tokenizer.sep_token_id)
        masked_rows, label_rows = [], []
        for row, index in zip(input_ids, indices):
            generator = torch.Generator().manual_seed(stable_hash((self.seed, self.epoch, int(index), "mlm")))
            ids = row[None]
            if self.whole_word_masking:
                starts = word_starts_from_tokens([tokenizer.convert_ids_to_tokens(row.tolist())])
                masked, labels = whole_word_mask_tokens(
                    ids, starts, vocab_size=self.vocab_size, mask_token_id=tokenizer.mask_token_id,
                    special_token_ids=special, pad_token_id=tokenizer.pad_token_id,
                    mlm_probability=self.mlm_probability, count_padding_as_words=self.count_padding_as_words,
                    generator=generator,
                )
            else:
                masked, labels = mask_tokens(
                    ids, vocab_size=self.vocab_size, mask_token_id=tokenizer.mask_token_id,
                    special_token_ids=(*special, tokenizer.pad_token_id), mlm_probability=self.mlm_probability,
                    generator=generator,
                )
            masked_rows.append(masked[0])
            label_rows.append(labels[0])
        return torch.stack(masked_rows), torch.stack(label_rows)


class ViltPretrainingCollator(WholeWordMaskingCollator):
    """ViLT pre-training batches (``VlpViltForPretraining.forward``): the images (``pixel_values``, ``pixel_mask``), the
    clean captions (``input_ids``, ``attention_mask``), the MLM pass's masked captions ``mlm_input_ids`` with their
    ``labels`` (see :class:`WholeWordMaskingCollator`), and the ITM pairing ``itm_labels`` / ``itm_image_index``.

    ITM, as the original's ``compute_itm_wpa``: exactly ``floor(B / 2)`` captions keep their own image, the others are
    paired with another example's image of the batch, and which ones is a random permutation (the original shuffles
    the labels with ``randperm``). The original's negatives are random images of the dataset; here each negative takes
    the image of one of the batch's positives (a random one-to-one assignment, wrapping round for an odd batch), so
    every image of the ITM pass is seen once matched and once mismatched and the image alone tells nothing about the
    label (with in-batch images this roughly halves the steps a tiny model from scratch needs before ITM learns).
    Never a caption's own image: a positive with the same ``image_id`` (captions of one image are positives of each
    other) is skipped, and when every positive shows that image any other image of the batch is taken.
    ``itm_image_index[b]`` is the row of ``pixel_values`` caption ``b`` is paired with. A batch of one has no other
    image: its example stays a positive.

    Every draw comes from generators seeded by ``(seed, epoch, sample indices)``, so resumed and multi-process runs
    mask and pair exactly as one uninterrupted run.
    """

    def __init__(self, processor: Any, *, id_key: str = "image_id", **kwargs: Any):
        super().__init__(processor, **kwargs)
        self.id_key = id_key

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collect(rows)
        encoded = self.encode(batch.images, batch.texts)
        indices = [self.row_index(row, position) for position, row in enumerate(batch.rows)]
        mlm_input_ids, labels = self.mask(encoded["input_ids"], indices)
        ids = [stable_image_id(row.get(self.id_key), index) for row, index in zip(batch.rows, indices)]
        itm_labels, itm_image_index = self.itm_pairs(ids, indices)
        return {
            **encoded,
            "mlm_input_ids": mlm_input_ids,
            "labels": labels,
            "itm_labels": itm_labels,
            "itm_image_index": itm_image_index,
        }

    def itm_pairs(self, ids: Sequence[int], indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``itm_labels`` (``floor(B / 2)`` ones in random places) and ``itm_image_index`` (own image for a one,
        another image of the batch for a zero) for a batch whose rows show the images ``ids``."""
        size = len(ids)
        generator = _batch_generator(self.seed, self.epoch, indices, "itm")
        positives = size // 2 if size > 1 else size
        labels = torch.cat([torch.ones(positives, dtype=torch.long), torch.zeros(size - positives, dtype=torch.long)])
        labels = labels[torch.randperm(size, generator=generator)]
        image_index = torch.arange(size)
        positive_rows = (labels == 1).nonzero().flatten()
        positive_rows = positive_rows[torch.randperm(len(positive_rows), generator=generator)].tolist()
        for turn, row in enumerate((labels == 0).nonzero().flatten().tolist()):
            rotated = positive_rows[turn % len(positive_rows) :] + positive_rows[: turn % len(positive_rows)]
            candidates = [other for other in rotated if ids[other] != ids[row]]
            if candidates:
                image_index[row] = candidates[0]
            else:
                others = _other_images(ids, row)
                image_index[row] = others[int(torch.randint(len(others), (1,), generator=generator))]
        return labels, image_index


class ViltQuestionAnsweringCollator(ImageTextCollator):
    """ViLT VQA batches (``VlpViltForQuestionAnswering.forward``): ``pixel_values``, ``pixel_mask``, the questions as
    ``input_ids``/``attention_mask`` and ``labels`` ``[B, num_labels]``, each answer's soft score.

    ``label2id`` is the model's answer vocabulary (``config.label2id``); answers are matched after the VQA evaluation's
    normalisation. A row holding several answers (VQAv2's ten annotators: strings or ``{"answer": ...}`` dicts, in
    ``answer_key``, a name or names tried in order) scores each distinct answer by how many gave it
    (:func:`vqa_soft_score`: 0.3 / 0.6 / 0.9 / 1.0); a single answer scores 1.0. Answers outside the vocabulary are
    left out, and a question none of whose answers is in it is dropped from the batch, as the original drops such
    questions from its training data. With ``horizontal_flip="swap-left-right"`` a mirrored image gets "left" and
    "right" exchanged in the question and the answers.
    """

    def __init__(
        self,
        processor: Any,
        *,
        label2id: dict[str, int],
        answer_key: str | Sequence[str] = ("answer", "answers"),
        **kwargs: Any,
    ):
        from ..evaluation.vqa_answers import normalize_vqa_answer

        kwargs.setdefault("max_length", getattr(processor, "max_length", None))
        super().__init__(processor, **kwargs)
        if not label2id:
            raise ValueError("label2id is empty; pass the model's answer vocabulary (config.label2id).")
        self.num_labels = max(int(value) for value in label2id.values()) + 1
        self.answer_ids = {normalize_vqa_answer(str(name)): int(value) for name, value in label2id.items()}
        self.answer_key = answer_key
        self._normalize = normalize_vqa_answer
        self._warned_unknown = False

    def soft_scores(self, value: Any, index: int, flipped: bool = False) -> dict[int, float]:
        """Answer id -> soft score of one row's answer(s) (in-vocabulary answers only)."""
        answers = answer_strings(value, index)
        several = not isinstance(answers, str) and len(answers) > 1
        answers = [answers] if isinstance(answers, str) else list(answers)
        if flipped and self.horizontal_flip == "swap-left-right":
            answers = [swap_left_right(answer) for answer in answers]
        counts: dict[str, int] = {}
        for answer in answers:
            normalised = self._normalize(answer)
            counts[normalised] = counts.get(normalised, 0) + 1
        return {
            self.answer_ids[answer]: vqa_soft_score(count) if several else 1.0
            for answer, count in counts.items()
            if answer in self.answer_ids
        }

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collect(rows)
        kept, targets = [], []
        for position, (row, flipped) in enumerate(zip(batch.rows, batch.flipped)):
            index = self.row_index(row, position)
            try:
                scores = self.soft_scores(first_present(row, self.answer_key), index, flipped)
            except BadSampleError as error:
                if not self.skip_bad_samples:
                    raise
                self.bad_samples.record(error)
                continue
            if not scores:
                if not self._warned_unknown:
                    self._warned_unknown = True
                    logger.warning(
                        "Sample %d has no answer in the model's %d-answer vocabulary and is left out of training, as "
                        "the original drops such questions (warned once).", index, self.num_labels,
                    )
                continue
            target = torch.zeros(self.num_labels)
            for answer_id, score in scores.items():
                target[answer_id] = score
            kept.append(position)
            targets.append(target)
        if not kept:
            raise ValueError(
                "No question of this batch has an answer in the model's answer vocabulary; nothing is left to train "
                "on. Check the answer column (--text-column names the question) and the vocabulary (config.id2label)."
            )
        encoded = self.encode([batch.images[p] for p in kept], [batch.texts[p] for p in kept])
        return {**encoded, "labels": torch.stack(targets)}


class ViltVisualReasoningCollator(VisualReasoningCollator):
    """ViLT NLVR2 batches (``VlpViltForVisualReasoning.forward``): the statement as ``input_ids``/``attention_mask``,
    the first images as ``pixel_values``/``pixel_mask`` and the second as ``pixel_values_2``/``pixel_mask_2`` (both
    on one zero-padded canvas, as the original's collate) and ``labels`` ``[B]`` (see
    :class:`VisualReasoningCollator` for the rows and the absence of a flip)."""

    def encode_pairs(self, firsts: list[Image.Image], seconds: list[Image.Image], texts: list[str]) -> dict[str, Any]:
        encoded = self.encode(firsts, texts, images_2=seconds)
        if "pixel_values_2" not in encoded:
            raise TypeError(
                f"{type(self.processor).__name__} returned no pixel_values_2; pass a processor that takes images_2 "
                "(VlpViltProcessor, VlpVlmoProcessor)."
            )
        return encoded


class ViltRetrievalCollator(ImageTextCollator):
    """ViLT retrieval fine-tuning batches (``VlpViltForImageTextRetrieval.forward``): each row's image
    (``pixel_values``, ``pixel_mask``) with ``texts_per_image`` captions, its own first, as ``input_ids`` /
    ``attention_mask`` ``[B, T, L]``; the model's cross-entropy takes the first as the positive.

    The ``T - 1`` negatives are captions of other images of the batch (another ``image_id`` from ``id_key``: captions
    of the same image are not negatives), drawn without replacement while the batch has enough and with replacement
    beyond; the original draws 15 random captions of the whole dataset (``draw_false_text``). The draws come from a
    generator seeded by ``(seed, epoch, sample indices)``.
    """

    def __init__(
        self, processor: Any, *, texts_per_image: int = 16, id_key: str = "image_id", seed: int = 0, **kwargs: Any
    ):
        kwargs.setdefault("max_length", getattr(processor, "max_length", None))
        super().__init__(processor, **kwargs)
        if texts_per_image < 2:
            raise ValueError(f"texts_per_image must be >= 2 (the caption and a negative), got {texts_per_image}.")
        self.texts_per_image = texts_per_image
        self.id_key = id_key
        self.seed = seed

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collect(rows)
        indices = [self.row_index(row, position) for position, row in enumerate(batch.rows)]
        ids = [stable_image_id(row.get(self.id_key), index) for row, index in zip(batch.rows, indices)]
        if len(set(ids)) < 2:
            raise ValueError(
                "A retrieval batch needs captions of at least two images (the negatives are the other images' "
                f"captions); this one has {len(ids)} row(s) of one image. Raise --per-device-train-batch-size."
            )
        generator = _batch_generator(self.seed, self.epoch, indices, "negatives")
        negatives = self.texts_per_image - 1
        texts: list[str] = []
        for row in range(len(ids)):
            others = [other for other, image_id in enumerate(ids) if image_id != ids[row]]
            if len(others) >= negatives:
                picks = torch.randperm(len(others), generator=generator)[:negatives].tolist()
            else:
                picks = torch.randint(len(others), (negatives,), generator=generator).tolist()
            texts += [batch.texts[row], *(batch.texts[others[pick]] for pick in picks)]
        encoded = self.encode(batch.images, texts)
        shape = (len(ids), self.texts_per_image, -1)
        return {
            **encoded,
            "input_ids": encoded["input_ids"].view(shape),
            "attention_mask": encoded["attention_mask"].view(shape),
        }
