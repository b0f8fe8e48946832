"""Collators of the fusion-model tasks (ALBEF pre-training, retrieval, VQA, NLVR2, SNLI-VE) and the flip policy."""

import pytest
import torch
from PIL import Image

from hf_vlp.models.albef import VlpAlbefImageProcessor, VlpAlbefProcessor
from hf_vlp.models.albef.modeling_albef_reasoning import SNLI_VE_LABELS
from hf_vlp.synthetic import VQA_ANSWERS
from hf_vlp.training.transforms import albef_train_transform
from hf_vlp.training.collators import (
    IGNORE_INDEX,
    AlbefPretrainingCollator,
    QuestionAnsweringCollator,
    RetrievalCollator,
    VisualEntailmentCollator,
    VisualReasoningCollator,
    stable_image_id,
    swap_left_right,
    weighted_answers,
)
from hf_vlp.training.data import BadSampleError, load_image_text_dataset
from hf_vlp.training.tokenizers import synthetic_wordpiece_tokenizer

SIZE = 32


@pytest.fixture(scope="module")
def processor():
    return VlpAlbefProcessor(VlpAlbefImageProcessor(size=SIZE), synthetic_wordpiece_tokenizer(), max_length=30,
                             answer_list=list(VQA_ANSWERS))


def _rows(task, n, **columns):
    dataset = load_image_text_dataset(f"synthetic-shapes:n={n},size=48,task={task}", **columns)
    return [dataset[index] for index in range(len(dataset))]


@pytest.fixture(scope="module")
def caption_rows():
    return _rows("retrieval", 4, optional_columns=("image_id",))


def test_swap_left_right_exchanges_whole_words_only():
    assert swap_left_right("two circles on the left, Right?") == "two circles on the right, Left?"
    assert swap_left_right("leftover brightness") == "leftover brightness"


def test_pretraining_masks_each_caption_by_its_own_seed(processor, caption_rows):
    tokenizer = processor.tokenizer
    collator = AlbefPretrainingCollator(processor, vocab_size=len(tokenizer), mlm_probability=0.5, mlm_seed=3)
    batch = collator(caption_rows[:6])
    assert batch["return_loss"] is True
    ids, masked, labels = batch["input_ids"], batch["mlm_input_ids"], batch["mlm_labels"]
    assert masked.shape == labels.shape == ids.shape
    special = (ids == tokenizer.pad_token_id) | (ids == tokenizer.cls_token_id)
    assert bool((labels[special] == IGNORE_INDEX).all()) and bool((masked[special] == ids[special]).all())
    picked = labels != IGNORE_INDEX
    assert bool((labels[picked] == ids[picked]).all()) and picked.any()
    assert bool((masked[~picked] == ids[~picked]).all())
    assert bool((masked[picked] == tokenizer.mask_token_id).any())

    # a caption's masking does not depend on the batch it is in, nor on padding; it does depend on the epoch
    alone = collator([caption_rows[4]])
    length = int(alone["attention_mask"].sum())
    assert torch.equal(alone["mlm_input_ids"][0, :length], masked[4, :length])
    collator.set_epoch(1)
    assert not torch.equal(collator(caption_rows[:6])["mlm_labels"], labels)

    with pytest.raises(ValueError, match="mlm_probability"):
        AlbefPretrainingCollator(processor, vocab_size=len(tokenizer), mlm_probability=0.0)


def test_retrieval_batches_carry_image_ids(processor, caption_rows):
    batch = RetrievalCollator(processor)(caption_rows[3:8])
    assert batch["image_ids"].tolist() == [0, 0, 1, 1, 1]
    assert batch["pixel_values"].shape == (5, 3, SIZE, SIZE) and "return_loss" not in batch
    without_ids = [{key: value for key, value in row.items() if key != "image_id"} for row in caption_rows[:2]]
    assert RetrievalCollator(processor)(without_ids)["image_ids"].tolist() == [0, 1]  # the sample indices
    assert stable_image_id("COCO_val2014_42.jpg", 0) == stable_image_id("COCO_val2014_42.jpg", 9) > 0
    with pytest.raises(ValueError, match="negative"):
        stable_image_id(-3, 0)


def test_vqa_batches_in_the_model_format(processor):
    rows = _rows("vqa", 3, text_column="question", optional_columns=("answer",))
    rows[1] = {**rows[1], "answer": ["red"] * 6 + ["orange"] * 4}  # VQAv2-style human answers
    batch = QuestionAnsweringCollator(processor)(rows)
    assert batch["answers_per_question"].tolist() == [1, 2, 1]
    assert batch["answer_weights"].tolist() == pytest.approx([1.0, 0.6, 0.4, 1.0])
    assert batch["answer_input_ids"].shape[0] == 4 and batch["return_loss"] is True
    first = processor.encode_answers([rows[0]["answer"]], return_tensors="pt")["input_ids"][0]
    assert batch["answer_input_ids"][0, : len(first)].tolist() == first.tolist()
    assert weighted_answers([{"answer": "yes"}, {"answer": "no"}], 0) == (["yes", "no"], [0.5, 0.5])
    with pytest.raises(BadSampleError, match="answer"):
        QuestionAnsweringCollator(processor)([{**rows[0], "answer": None}])


def test_flip_swaps_left_and_right_in_question_and_answers(processor):
    rows = _rows("vqa", 40, text_column="question", optional_columns=("answer", "question_type"))
    position_rows = [row for row in rows if row["question_type"] == "position"]
    collator = QuestionAnsweringCollator(
        processor, image_transform=albef_train_transform(SIZE), augmentation_seed=0, horizontal_flip="swap-left-right"
    )
    batch = collator.collect(position_rows)
    assert any(batch.flipped) and not all(batch.flipped)
    encoded = collator(position_rows)
    answers = processor.tokenizer.batch_decode(encoded["answer_input_ids"], skip_special_tokens=True)
    for row, flipped, answer in zip(position_rows, batch.flipped, answers):
        swapped = {"left": "right", "right": "left"}.get(row["answer"], row["answer"])
        assert answer == (swapped if flipped else row["answer"])
    # the flip is drawn per sample from (seed, epoch, index): the same again, but not in another epoch
    assert collator.collect(position_rows).flipped == batch.flipped
    collator.set_epoch(5)
    assert collator.collect(position_rows).flipped != batch.flipped


def test_nlvr2_batches_stack_image_pairs(processor):
    rows = _rows("nlvr", 5, image_column="image_left", text_column="statement", optional_columns=("image_right", "nlvr_label"))
    batch = VisualReasoningCollator(processor, image_transform=albef_train_transform(SIZE), augmentation_seed=1)(rows)
    assert batch["pixel_values"].shape == (5, 2, 3, SIZE, SIZE)
    assert batch["labels"].tolist() == [int(row["nlvr_label"]) for row in rows]
    assert not torch.equal(batch["pixel_values"][:, 0], batch["pixel_values"][:, 1])
    with pytest.raises(ValueError, match="horizontal_flip='none'"):
        VisualReasoningCollator(processor, horizontal_flip="swap-left-right")
    bad = {**rows[0], "nlvr_label": "maybe"}
    with pytest.raises(BadSampleError, match="true/false"):
        VisualReasoningCollator(processor)([bad])
    broken = {**rows[1], "image_right": {"bytes": b"junk", "path": "right.png"}}
    skipping = VisualReasoningCollator(processor, skip_bad_samples=True)
    kept = skipping([rows[0], broken, rows[2]])
    assert kept["labels"].tolist() == [int(rows[0]["nlvr_label"]), int(rows[2]["nlvr_label"])]
    assert kept["pixel_values"].shape[0] == 2 and skipping.bad_samples.examples[0].source == "right.png"


def test_snli_ve_labels_follow_the_models_label2id(processor):
    rows = _rows("snli-ve", 6, text_column="hypothesis", optional_columns=("gold_label",))
    label2id = {name: index for index, name in enumerate(SNLI_VE_LABELS)}
    batch = VisualEntailmentCollator(processor, label2id=label2id)(rows)
    assert batch["labels"].tolist() == [label2id[row["gold_label"]] for row in rows]
    assert VisualEntailmentCollator(processor, label2id=label2id)([{**rows[0], "gold_label": 2}])["labels"].tolist() == [2]
    with pytest.raises(BadSampleError, match="none of"):
        VisualEntailmentCollator(processor, label2id=label2id)([{**rows[0], "gold_label": "unsure"}])


def test_bad_flip_mode_is_rejected(processor):
    with pytest.raises(ValueError, match="horizontal_flip"):
        RetrievalCollator(processor, horizontal_flip="mirror")


def test_image_only_flip_keeps_the_text(processor, caption_rows):
    collator = RetrievalCollator(processor, augmentation_seed=0, horizontal_flip="image")
    batch = collator.collect(caption_rows)
    assert any(batch.flipped)
    assert batch.texts == [row["text"] for row in caption_rows]
    flipped = batch.flipped.index(True)
    original = caption_rows[flipped]["image"]
    assert list(batch.images[flipped].getdata()) == list(original.transpose(Image.Transpose.FLIP_LEFT_RIGHT).getdata())
