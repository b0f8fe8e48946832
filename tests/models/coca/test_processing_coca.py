"""CoCa's processor against open_clip's preprocessing (the coca fixture: its tokenizer with the truncated and the real
vocabulary, its eval transform on the recorded uint8 images), directly and as ``convert_coca.py`` builds it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import PIL.Image
import pytest
import torch
from transformers import AutoProcessor

from conversion.common import installed_clip_bpe
from conversion.convert_coca import OPENAI_MEAN, OPENAI_STD, build_processor, coca_config, read_model_config
from hf_vlp.models.clip.tokenization_clip import clip_tokenizer_from_bpe
from hf_vlp.models.coca import VlpCocaImageProcessor, VlpCocaProcessor
from tests.helpers.coca import FIXTURE_BPE, FIXTURE_CHECKPOINT, OPEN_CLIP_CONFIG
from tests.helpers.fixtures import fixture_dir, fixture_tensors

META = json.loads((fixture_dir("coca") / "fixture_meta.json").read_text())
IMAGE_SIZE = 32
PROCESSOR_LOGGER = "hf_vlp.models.clip.processing_clip"


def fixture_processor(bpe: Path = FIXTURE_BPE) -> VlpCocaProcessor:
    """The processor with its defaults (context 76, pad 0, OpenAI mean/std) at the fixture's image size."""
    image_processor = VlpCocaImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return VlpCocaProcessor(image_processor, clip_tokenizer_from_bpe(bpe, model_max_length=76))


def raw_images() -> list[PIL.Image.Image]:
    inputs, _ = fixture_tensors("coca")
    return [PIL.Image.fromarray(image.numpy()) for image in inputs["raw_images_uint8"]]


def test_texts_tokenise_as_open_clip_does_for_coca(caplog: pytest.LogCaptureFixture) -> None:
    inputs, _ = fixture_tensors("coca")
    with caplog.at_level(logging.WARNING, logger=PROCESSOR_LOGGER):
        encoded = fixture_processor()(text=META["texts"], return_tensors="pt")
    assert torch.equal(encoded["input_ids"], inputs["input_ids"])
    assert torch.equal(encoded["attention_mask"], inputs["attention_mask"])
    lengths = encoded["attention_mask"].sum(dim=1).tolist()
    assert lengths == [10, 76, 7, 26] and encoded["input_ids"][1, -1] == META["tokenizer"]["eot_token_id"]
    assert encoded["input_ids"][0, 10:].eq(0).all()  # pads are CoCa's pad_id 0, not end-of-text
    assert "1 of 4 texts were longer than context_length=76" in caplog.text


def test_full_clip_vocabulary_matches_open_clip() -> None:
    bpe = installed_clip_bpe()
    if bpe is None:
        pytest.skip("open_clip (which ships CLIP's bpe_simple_vocab_16e6.txt.gz) is not installed")
    inputs, _ = fixture_tensors("coca")
    encoded = fixture_processor(bpe)(text=META["texts"], return_tensors="pt")
    assert torch.equal(encoded["input_ids"], inputs["input_ids_full_vocab"])


def test_images_preprocess_as_open_clips_eval_transform() -> None:
    inputs, _ = fixture_tensors("coca")
    from_pil = fixture_processor()(images=raw_images(), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(from_pil, inputs["pixel_values"], atol=1e-6, rtol=0)
    arrays = list(inputs["raw_images_uint8"].numpy())
    from_arrays = fixture_processor()(images=arrays, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(from_arrays, inputs["pixel_values"], atol=1e-6, rtol=0)


def test_the_converters_processor_is_open_clips_and_survives_saving(tmp_path: Path) -> None:
    """``build_processor`` from ``open_clip_config.json`` (image size, mean/std, context, pad) equals the direct one,
    and reloads through ``AutoProcessor`` with the same outputs; another ``preprocess_cfg`` mean/std is applied."""
    inputs, _ = fixture_tensors("coca")
    original = read_model_config(OPEN_CLIP_CONFIG, FIXTURE_CHECKPOINT)
    config = coca_config(original.model_cfg, "fixture")
    tokenizer = clip_tokenizer_from_bpe(FIXTURE_BPE, model_max_length=76)
    processor = build_processor(tokenizer, config, original.preprocess_cfg)
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, VlpCocaProcessor)
    assert (reloaded.context_length, reloaded.pad_token_id) == (76, 0)
    assert reloaded.tokenizer.pad_token_id == 0  # what the stock Trainer copies into the model's pad id
    for candidate in (processor, reloaded):
        encoded = candidate(images=raw_images(), text=META["texts"], return_tensors="pt")
        assert torch.equal(encoded["input_ids"], inputs["input_ids"])
        torch.testing.assert_close(encoded["pixel_values"], inputs["pixel_values"], atol=1e-6, rtol=0)

    halves = build_processor(tokenizer, config, {**original.preprocess_cfg, "mean": [0.5] * 3, "std": [0.25] * 3})
    mean, std = torch.tensor(OPENAI_MEAN)[:, None, None], torch.tensor(OPENAI_STD)[:, None, None]
    expected = (inputs["pixel_values"] * std + mean - 0.5) / 0.25
    actual = halves(images=raw_images(), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
