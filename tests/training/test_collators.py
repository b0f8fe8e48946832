"""Collators: tensors from image-text rows, bad-sample reporting/skipping, captioning labels."""

import io
import logging
import string

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import BertTokenizer, CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

from hf_vlp.training.collators import IGNORE_INDEX, CaptioningCollator, ContrastiveCollator
from hf_vlp.training.data import BadSampleCounter, BadSampleError, load_image_text_dataset
from hf_vlp.training.transforms import clip_train_transform

IMAGE_SIZE = 32


def _image_processor():
    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def _clip_processor():
    """A real CLIPProcessor with a character-level BPE vocabulary, built in memory."""
    vocab = {}
    for suffix in ("", "</w>"):
        for char in string.ascii_lowercase:
            vocab[char + suffix] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    return CLIPProcessor(image_processor=_image_processor(), tokenizer=tokenizer)


class _BertImageTextProcessor:
    """A minimal processor pairing a WordPiece tokenizer with an image processor, as BLIP/ALBEF do."""

    def __init__(self):
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "picture", "of", "two", "three", "small", "large",
                 "red", "green", "blue", "yellow", "purple", "orange", "circle", "circles", "square", "squares",
                 "triangle", "triangles", "cross", "crosses", "on", "the", "left", "right", "at", "top", "bottom",
                 "in", "centre"]
        self.tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(words)})
        self.image_processor = _image_processor()

    def __call__(self, text, images, return_tensors="pt", **text_kwargs):
        encoded = dict(self.tokenizer(text, return_tensors=return_tensors, **text_kwargs))
        encoded["pixel_values"] = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        return encoded


@pytest.fixture(scope="module")
def processor():
    return _clip_processor()


@pytest.fixture(scope="module")
def synthetic_rows():
    dataset = load_image_text_dataset("synthetic-shapes:n=6,size=48")
    return [dataset[index] for index in range(6)]


def _png(colour=(200, 10, 10), size=(40, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_contrastive_batch_shapes_and_dtypes(processor, synthetic_rows):
    batch = ContrastiveCollator(processor)(synthetic_rows[:4])
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "return_loss"} and batch["return_loss"] is True
    assert batch["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 4
    lengths = batch["attention_mask"].sum(-1)
    expected = [len(processor.tokenizer(row["text"])["input_ids"]) for row in synthetic_rows[:4]]
    assert lengths.tolist() == expected
    assert batch["input_ids"].shape[1] == max(expected)  # padded to the longest caption


def test_contrastive_collator_with_augmentation_in_a_dataloader(processor):
    dataset = load_image_text_dataset("synthetic-shapes:n=10,size=48")
    collator = ContrastiveCollator(
        processor, image_transform=clip_train_transform(40), max_length=16, padding="max_length"
    )
    batches = list(DataLoader(dataset, batch_size=4, collate_fn=collator))
    assert [batch["pixel_values"].shape[0] for batch in batches] == [4, 4, 2]
    assert all(batch["input_ids"].shape == (batch["pixel_values"].shape[0], 16) for batch in batches)


def test_plain_user_rows_are_accepted(processor):
    rows = [
        {"image": Image.new("L", (20, 50), 128), "text": "a red circle"},
        {"image": {"bytes": _png(), "path": None}, "text": "blue square"},
        {"image": _png((0, 0, 255)), "text": ["first caption", "second"]},
    ]
    batch = ContrastiveCollator(processor)(rows)
    assert batch["pixel_values"].shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_bad_image_error_names_index_and_file(processor, synthetic_rows):
    bad = {"image": {"bytes": b"\x89PNG broken", "path": "photos/cat.png"}, "text": "a cat", "sample_index": 17}
    with pytest.raises(BadSampleError, match=r"sample 17 \(file 'photos/cat.png'\): cannot decode the image"):
        ContrastiveCollator(processor)([synthetic_rows[0], bad])
    without_index = {"image": b"junk", "text": "a cat"}
    with pytest.raises(BadSampleError, match=r"sample 1: cannot decode the image .*position in the batch"):
        ContrastiveCollator(processor)([synthetic_rows[0], without_index])
    no_caption = {**synthetic_rows[1], "text": "  "}
    with pytest.raises(BadSampleError, match="caption is missing or empty"):
        ContrastiveCollator(processor)([no_caption])


def test_skip_bad_samples_drops_and_counts(processor, synthetic_rows):
    counter = BadSampleCounter()
    collator = ContrastiveCollator(processor, skip_bad_samples=True, bad_samples=counter)
    bad = {"image": {"bytes": b"junk", "path": "broken.jpg"}, "text": "x", "sample_index": 9}
    already_marked = {"image": None, "text": "y", "sample_index": 10, "bad_sample": "cannot decode"}
    batch = collator([synthetic_rows[0], bad, synthetic_rows[1], already_marked])
    assert batch["pixel_values"].shape[0] == batch["input_ids"].shape[0] == 2
    assert counter.count == 1  # the pre-marked row was counted by the dataset transform, not again here
    assert counter.examples[0].index == 9 and counter.examples[0].source == "broken.jpg"
    with pytest.raises(ValueError, match=r"Every sample of this batch was bad.*\[9, 10\]"):
        collator([bad, already_marked])


def test_collator_drops_rows_skipped_by_the_dataset(tmp_path, processor):
    (tmp_path / "good.png").write_bytes(_png())
    (tmp_path / "bad.png").write_bytes(b"nope")
    (tmp_path / "captions.csv").write_text("image,caption\ngood.png,a good one\nbad.png,a bad one\ngood.png,again\n")
    counter = BadSampleCounter()
    dataset = load_image_text_dataset(str(tmp_path), skip_bad_samples=True, bad_samples=counter)
    collator = ContrastiveCollator(processor, bad_samples=counter)
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collator)))
    assert batch["pixel_values"].shape[0] == 2
    assert counter.count == 1 and counter.examples[0].source.endswith("bad.png")


def test_truncation_is_warned_about(processor, synthetic_rows, caplog):
    collator = ContrastiveCollator(processor, max_length=8)
    with caplog.at_level(logging.WARNING, logger="hf_vlp.training.collators"):
        batch = collator(synthetic_rows[:2])
    assert batch["input_ids"].shape[1] == 8
    assert "8-token limit" in caplog.text


def test_captioning_labels_ignore_padding(processor, synthetic_rows):
    batch = CaptioningCollator(processor)(synthetic_rows[:4])
    labels, input_ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    assert labels.shape == input_ids.shape and labels.dtype == torch.long
    assert torch.equal(labels[mask == 1], input_ids[mask == 1])
    assert (labels[mask == 0] == IGNORE_INDEX).all()
    assert (mask == 0).any()  # captions of different lengths, so padding exists


def test_captioning_prompt_tokens_are_ignored_with_right_and_left_padding(synthetic_rows):
    prompt = "a picture of "
    for padding_side in ("right", "left"):
        bert_processor = _BertImageTextProcessor()
        bert_processor.tokenizer.padding_side = padding_side
        batch = CaptioningCollator(bert_processor, prompt=prompt)(synthetic_rows[:4])
        tokenizer = bert_processor.tokenizer
        for row, labels, ids, mask in zip(synthetic_rows, batch["labels"], batch["input_ids"], batch["attention_mask"]):
            kept = labels[labels != IGNORE_INDEX].tolist()
            caption_ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
            assert kept == caption_ids + [tokenizer.sep_token_id]
            assert ids[mask == 1][:4].tolist() == tokenizer(prompt)["input_ids"][:4]  # [CLS] a picture of


def test_seeded_augmentation_is_a_function_of_seed_epoch_and_sample_only(processor):
    from hf_vlp.training.callbacks import CollatorEpochCallback

    rows = [{"image": Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 40, 3), dtype=np.uint8)),
             "text": "a red circle", "sample_index": i} for i in range(3)]
    collator = ContrastiveCollator(processor, image_transform=clip_train_transform(IMAGE_SIZE, scale=(0.3, 1.0)),
                                   augmentation_seed=7)
    torch.manual_seed(0)
    first = collator(rows)["pixel_values"]
    torch.manual_seed(123)  # global RNG state must not matter
    again = collator(rows)["pixel_values"]
    assert torch.equal(first, again)
    assert torch.equal(collator(rows[1:])["pixel_values"], first[1:])  # per sample, not per batch position
    callback = CollatorEpochCallback(collator)
    callback.on_epoch_begin(None, type("State", (), {"epoch": 1.0})(), None)
    assert collator.epoch == 1
    assert not torch.equal(collator(rows)["pixel_values"], first)
    unseeded = ContrastiveCollator(processor, image_transform=clip_train_transform(IMAGE_SIZE, scale=(0.3, 1.0)))
    assert not torch.equal(unseeded(rows)["pixel_values"], unseeded(rows)["pixel_values"])
