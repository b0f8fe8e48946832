"""The VLMo image processor and processor: VLMo's square transform (bit-exact against the vlmo fixture, made by the
original transform), its fixed-length BERT tokenisation, NLVR2 pairs, errors and saving."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.numpy import load_file
from transformers import BertTokenizer

from hf_vlp.models.clip.tokenization_clip import clip_tokenizer_from_bpe
from hf_vlp.models.image_processing_utils import SquareResizeImageProcessor
from hf_vlp.models.vlmo.image_processing_vlmo import VlpVlmoImageProcessor
from hf_vlp.models.vlmo.processing_vlmo import VlpVlmoProcessor
from hf_vlp.training.tokenizers import wordpiece_tokenizer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "originals"
FIXTURE = FIXTURES / "vlmo"
FIXTURE_IMAGE_SIZE = 32  # image_size of the fixture's config
PROCESSOR_LOGGER = "hf_vlp.models.vlmo.processing_vlmo"
WORDS = ["a", "dog", "cat", "on", "the", "grass", "two", "left", "image"]


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return load_file(str(FIXTURE / "inputs.safetensors"))


def _noise(height: int, width: int, seed: int = 0) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _processor(size: int = FIXTURE_IMAGE_SIZE, **kwargs) -> VlpVlmoProcessor:
    return VlpVlmoProcessor(VlpVlmoImageProcessor(size=size), wordpiece_tokenizer(WORDS), **kwargs)


# ---------------------------------------------------------------- image processor


def test_defaults_are_the_originals() -> None:
    processor = VlpVlmoImageProcessor()
    assert VlpVlmoImageProcessor.__bases__ == (SquareResizeImageProcessor,)
    assert dict(processor.size) == {"height": 224, "width": 224}
    assert processor.resample == PIL.Image.BICUBIC and not processor.do_center_crop
    assert tuple(processor.image_mean) == tuple(processor.image_std) == (0.5, 0.5, 0.5)
    assert processor.model_input_names == ["pixel_values"]
    assert dict(VlpVlmoImageProcessor(size=384).size) == {"height": 384, "width": 384}


@pytest.mark.parametrize("key", ["", "_2"])
def test_fixture_pixels_are_reproduced_bit_exactly(inputs, key: str) -> None:
    """The fixture's pixel_values(_2) are the original ``square_transform(32)`` of its raw 8-bit images."""
    raw, expected = inputs["raw_images" + key], inputs["pixel_values" + key]
    processor = VlpVlmoImageProcessor(size=FIXTURE_IMAGE_SIZE)
    for images in (raw, list(raw), [PIL.Image.fromarray(image) for image in raw]):
        pixels = processor(images, return_tensors="np")["pixel_values"]
        assert pixels.dtype == np.float32 and pixels.shape == expected.shape == (3, 3, 32, 32)
        np.testing.assert_array_equal(pixels, expected)
    assert expected.min() >= -1 and expected.max() <= 1


def test_any_image_becomes_a_square_converted_to_rgb_first() -> None:
    processor = VlpVlmoImageProcessor(size=48)
    images = [_noise(30, 90), _noise(90, 30, seed=1), _noise(48, 48, seed=2)]
    assert processor(images, return_tensors="pt")["pixel_values"].shape == (3, 3, 48, 48)
    image = _noise(40, 50).convert("RGBA")  # the original opens every image with .convert("RGB")
    np.testing.assert_array_equal(
        processor(image, return_tensors="np")["pixel_values"],
        processor(image.convert("RGB"), return_tensors="np")["pixel_values"],
    )


# ---------------------------------------------------------------- processor: text


def test_text_is_the_original_tokenizer_call_padded_to_40() -> None:
    processor = _processor()
    texts = ["A dog on the grass", "two cats"]
    encoded = processor(text=texts, return_tensors="pt")
    assert set(encoded) == {"input_ids", "attention_mask"}  # no token_type_ids
    assert encoded["input_ids"].shape == encoded["attention_mask"].shape == (2, 40)
    assert encoded["input_ids"].dtype == torch.int64
    # the original: tokenizer(text, padding="max_length", truncation=True, max_length=max_text_len)
    original = processor.tokenizer(texts, padding="max_length", truncation=True, max_length=40)
    assert encoded["input_ids"].tolist() == original["input_ids"]
    assert encoded["attention_mask"].tolist() == original["attention_mask"]
    tokens = processor.tokenizer.convert_ids_to_tokens(encoded["input_ids"][1])
    assert tokens[:5] == ["[CLS]", "two", "cat", "##s", "[SEP]"] and set(tokens[5:]) == {"[PAD]"}
    assert encoded["attention_mask"][1].tolist() == [1] * 5 + [0] * 35
    longest = processor(text=texts, padding="longest")
    assert [len(row) for row in longest["input_ids"]] == [7, 7]
    assert len(processor(text="a dog", max_length=12)["input_ids"][0]) == 12


def test_truncation_keeps_sep_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    processor = _processor()
    texts = [" ".join(["dog"] * 45), "a cat"]
    with caplog.at_level(logging.WARNING, logger=PROCESSOR_LOGGER):
        cut = processor(text=texts)["input_ids"]
    warnings = [record.getMessage() for record in caplog.records if record.name == PROCESSOR_LOGGER]
    assert len(warnings) == 1 and "1 of 2 texts" in warnings[0] and "max_length=40" in warnings[0]
    assert cut == processor.tokenizer(texts, padding="max_length", truncation=True, max_length=40)["input_ids"]
    assert len(cut[0]) == 40 and cut[0][-1] == processor.tokenizer.sep_token_id
    with pytest.raises(ValueError, match="max_length=40"):
        processor(text=texts, truncation=False)


# ---------------------------------------------------------------- processor: images, pairs


def test_images_only_text_only_and_both(inputs) -> None:
    processor = _processor()
    assert set(processor(images=list(inputs["raw_images"]))) == {"pixel_values"}
    both = processor(images=inputs["raw_images"], text=["a dog", "a cat", "two dogs"], return_tensors="np")
    assert set(both) == {"input_ids", "attention_mask", "pixel_values"}
    np.testing.assert_array_equal(both["pixel_values"], inputs["pixel_values"])
    assert processor.model_input_names == ["pixel_values", "input_ids", "attention_mask", "pixel_values_2"]


def test_pairs_reproduce_both_fixture_images(inputs) -> None:
    """NLVR2: ``images_2`` gives ``pixel_values_2`` (the original's ``image_1``); the square resize needs no mask."""
    batch = _processor()(
        images=inputs["raw_images"], images_2=list(inputs["raw_images_2"]), text=["the left image"] * 3,
        return_tensors="pt",
    )
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "pixel_values_2"}
    for key in ("pixel_values", "pixel_values_2"):
        assert batch[key].shape == (3, 3, 32, 32)
        np.testing.assert_array_equal(batch[key].numpy(), inputs[key], err_msg=key)


def test_bad_calls_raise_clear_errors() -> None:
    processor = _processor()
    images = [_noise(40, 50), _noise(50, 40, seed=1)]
    with pytest.raises(ValueError, match="pass the first images as `images`"):
        processor(images_2=images, text=["a dog", "a cat"])
    with pytest.raises(ValueError, match="`images` has 2 images and `images_2` 1"):
        processor(images=images, images_2=images[:1])
    with pytest.raises(ValueError, match="text`, `images` or both"):
        processor()
    with pytest.raises(TypeError, match="string or a list of strings"):
        processor(text=[1, 2])
    with pytest.raises(TypeError, match="without images"):
        processor(text="a dog", size=64)
    with pytest.raises(ValueError, match="padding"):
        processor(text="a dog", padding="do_not_pad")
    with pytest.raises(ValueError, match="max_length must be an integer >= 3"):
        _processor(max_length=2)
    with pytest.raises(ValueError, match="max_length must be an integer >= 3"):
        processor(text="a dog", max_length=2)


def test_non_bert_tokenizers_are_rejected() -> None:
    clip = clip_tokenizer_from_bpe(FIXTURES / "clip_vit" / "bpe_simple_vocab_truncated.txt.gz")
    with pytest.raises(ValueError, match="no cls_token, sep_token: VLMo needs a BERT tokenizer"):
        VlpVlmoProcessor(VlpVlmoImageProcessor(), clip)
    with pytest.raises(ValueError, match="only its 5 special tokens"):
        VlpVlmoProcessor(VlpVlmoImageProcessor(), BertTokenizer(vocab={}))


# ---------------------------------------------------------------- saving and loading


def test_round_trip_keeps_settings(tmp_path: Path, inputs) -> None:
    processor = _processor(size=48, max_length=24)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["max_length"] == 24 and saved["processor_class"] == "VlpVlmoProcessor"
    assert saved["image_processor"]["image_processor_type"] == "VlpVlmoImageProcessor"
    assert saved["image_processor"]["size"] == {"height": 48, "width": 48}
    assert saved["image_processor"]["image_mean"] == saved["image_processor"]["image_std"] == [0.5, 0.5, 0.5]
    assert "convert_rgb_before_resize" not in saved["image_processor"]

    image_processor = VlpVlmoImageProcessor.from_pretrained(tmp_path)
    assert image_processor.to_dict() == processor.image_processor.to_dict()
    # the image processor is passed in: finding it by its saved type name needs the Auto registration
    loaded = VlpVlmoProcessor.from_pretrained(tmp_path, image_processor=image_processor)
    assert type(loaded) is VlpVlmoProcessor and loaded.max_length == 24
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    images, text = list(inputs["raw_images"][:2]), ["a dog on the grass", "two cats"]
    expected = processor(images=images, images_2=images[::-1], text=text, return_tensors="np")
    got = loaded(images=images, images_2=images[::-1], text=text, return_tensors="np")
    assert got["input_ids"].shape == (2, 24) and got["pixel_values_2"].shape == (2, 3, 48, 48)
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
