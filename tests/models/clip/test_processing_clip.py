"""Parity of the CLIP tokenizer, image processor and processor with openai/CLIP's preprocessing (fixtures)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoTokenizer, CLIPTokenizer
from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

from hf_vlp.models.clip.image_processing_clip import VlpClipImageProcessor
from hf_vlp.models.image_processing_utils import center_crop_pil
from hf_vlp.models.clip.processing_clip import VlpClipProcessor
from hf_vlp.models.clip.tokenization_clip import (
    byte_to_unicode_table,
    clean_text,
    clip_tokenizer_from_bpe,
    load_clip_tokenizer,
    read_bpe_merges,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "originals"
FIXTURE_NAMES = ["clip_vit", "clip_resnet"]
PROCESSOR_LOGGER = "hf_vlp.models.clip.processing_clip"
OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def _fixture(name: str) -> tuple[dict[str, np.ndarray], dict]:
    inputs = load_file(str(FIXTURES / name / "inputs.safetensors"))
    meta = json.loads((FIXTURES / name / "fixture_meta.json").read_text())
    return inputs, meta


def _image_processor_for(meta: dict) -> VlpClipImageProcessor:
    crop = meta["image"]["center_crop"]
    return VlpClipImageProcessor(size=crop, crop_size=crop)


def _processor_for(name: str, **kwargs) -> VlpClipProcessor:
    _, meta = _fixture(name)
    tokenizer = clip_tokenizer_from_bpe(FIXTURES / name / meta["tokenizer"]["bpe_file"])
    return VlpClipProcessor(_image_processor_for(meta), tokenizer, **kwargs)


def _open_clip_merges_file() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        pytest.skip("open_clip is not installed: it ships the real bpe_simple_vocab_16e6.txt.gz")
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        pytest.skip(f"open_clip is installed without its merges file ({path})")
    return path


@pytest.fixture(scope="module")
def image_processor_registered() -> None:
    """Loading a processor needs AutoImageProcessor to know VlpClipImageProcessor: importing hf_vlp registers it."""
    assert get_image_processor_class_from_name("VlpClipImageProcessor") is VlpClipImageProcessor


# ---------------------------------------------------------------- tokenizer


def test_truncated_vocab_layout_matches_fixture_meta():
    _, meta = _fixture("clip_vit")
    tokenizer = clip_tokenizer_from_bpe(FIXTURES / "clip_vit" / meta["tokenizer"]["bpe_file"])
    assert isinstance(tokenizer, CLIPTokenizer)
    assert len(tokenizer) == meta["tokenizer"]["vocab_size"]
    assert tokenizer.bos_token_id == meta["tokenizer"]["sot_token_id"]
    assert tokenizer.eos_token_id == meta["tokenizer"]["eot_token_id"]
    assert tokenizer.convert_tokens_to_ids("!") == meta["tokenizer"]["pad_token_id"]
    merges = read_bpe_merges(FIXTURES / "clip_vit" / meta["tokenizer"]["bpe_file"])
    assert len(merges) == meta["tokenizer"]["num_merges"]


def test_byte_table_covers_every_byte_once():
    table = byte_to_unicode_table()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert list(table.values())[0] == "!"


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_text_matches_original_tokenize(name, caplog):
    inputs, meta = _fixture(name)
    processor = _processor_for(name)
    with caplog.at_level(logging.WARNING, logger=PROCESSOR_LOGGER):
        encoded = processor(text=meta["texts"], return_tensors="pt")
    assert encoded["input_ids"].dtype == torch.int64
    np.testing.assert_array_equal(encoded["input_ids"].numpy(), inputs["input_ids"])
    np.testing.assert_array_equal(encoded["attention_mask"].numpy(), inputs["attention_mask"])

    untruncated = meta["untruncated_token_lengths"]
    n_truncated = sum(length > 77 for length in untruncated)
    assert n_truncated == 1
    long_row = untruncated.index(max(untruncated))
    assert encoded["input_ids"][long_row, -1].item() == meta["tokenizer"]["eot_token_id"]
    warnings = [record for record in caplog.records if record.name == PROCESSOR_LOGGER]
    assert len(warnings) == 1
    assert f"{n_truncated} of {len(untruncated)} texts" in warnings[0].getMessage()
    assert "context_length=77" in warnings[0].getMessage()


def test_full_vocab_matches_original_tokenize():
    inputs, meta = _fixture("clip_vit")
    tokenizer = clip_tokenizer_from_bpe(_open_clip_merges_file())
    assert len(tokenizer) == meta["tokenizer"]["full_vocab"]["vocab_size"]
    assert tokenizer.bos_token_id == meta["tokenizer"]["full_vocab"]["sot_token_id"]
    assert tokenizer.eos_token_id == meta["tokenizer"]["full_vocab"]["eot_token_id"]
    processor = VlpClipProcessor(_image_processor_for(meta), tokenizer)
    encoded = processor(text=meta["texts"], return_tensors="np")
    np.testing.assert_array_equal(encoded["input_ids"], inputs["input_ids_full_vocab"])


def test_text_cleaning_matches_original_on_hard_text():
    """HTML entities, curly quotes, ligatures, full-width and accented letters, tabs: compared with open_clip's
    copy of the original SimpleTokenizer (same cleaning, same BPE)."""
    merges_file = _open_clip_merges_file()
    from open_clip.tokenizer import SimpleTokenizer

    texts = [
        "Tom &amp; Jerry &lt;3 &#39;quoted&#39; &amp;amp;",
        "\u201ccurly quotes\u201d and \u2018single\u2019 \ufb01ne \ufb02ow",
        "\uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48  CAF\u00c9 na\u00efve \u00dcber",
        "tabs\tand\nnewlines   and 12345 digits, don't we'll I'M",
        "emoji \U0001f431\U0001f436 and \u4e2d\u6587 text!!",
    ]
    original = SimpleTokenizer(str(merges_file))(texts, context_length=77).numpy()
    tokenizer = clip_tokenizer_from_bpe(merges_file)
    processor = VlpClipProcessor(VlpClipImageProcessor(), tokenizer)
    np.testing.assert_array_equal(processor(text=texts, return_tensors="np")["input_ids"], original)
    assert clean_text("  A&amp;B\n\tC ") == "a&b c"


def test_padding_longest_and_custom_pad_id():
    _, meta = _fixture("clip_vit")
    full = _processor_for("clip_vit")(text=meta["texts"][2:], return_tensors="np")
    processor = _processor_for("clip_vit", pad_token_id=7)
    longest = processor(text=meta["texts"][2:], padding="longest", return_tensors="np")
    width = max(meta["untruncated_token_lengths"][2:])
    assert longest["input_ids"].shape == (2, width)
    ids = longest["input_ids"]
    mask = longest["attention_mask"].astype(bool)
    np.testing.assert_array_equal(ids[mask], full["input_ids"][:, :width][mask])
    assert (ids[~mask] == 7).all()
    np.testing.assert_array_equal(longest["attention_mask"], full["attention_mask"][:, :width])


def test_truncation_false_raises_and_short_context_truncates():
    _, meta = _fixture("clip_vit")
    processor = _processor_for("clip_vit", context_length=5)
    with pytest.raises(ValueError, match="context_length=5"):
        processor(text=meta["texts"][0], truncation=False)
    ids = processor(text=meta["texts"][0])["input_ids"][0]
    assert ids == [998, 320, 816, 531, 999]


def test_tokenizer_alone_still_pads_for_pipelines():
    """The zero-shot pipeline calls the tokenizer directly with padding=True."""
    tokenizer = _processor_for("clip_vit").tokenizer
    batch = tokenizer(["two dogs", "a photo of a cat."], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape == (2, 10)
    assert batch["input_ids"][0, 0].item() == 998
    assert batch["attention_mask"][0].tolist() == [1] * 7 + [0] * 3


def test_load_clip_tokenizer_from_file_and_directory(tmp_path):
    merges_file = FIXTURES / "clip_vit" / "bpe_simple_vocab_truncated.txt.gz"
    from_file = load_clip_tokenizer(merges_file)
    from_file.save_pretrained(tmp_path)
    from_dir = load_clip_tokenizer(tmp_path)
    text = ["a red bicycle leaning against a brick wall at sunset"]
    assert from_dir(text)["input_ids"] == from_file(text)["input_ids"]
    plain = tmp_path / "merges_plain.txt"
    plain.write_bytes(gzip.decompress(merges_file.read_bytes()))
    assert load_clip_tokenizer(plain).get_vocab() == from_file.get_vocab()


def test_bad_merges_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="No tokenizer"):
        load_clip_tokenizer(tmp_path / "missing.txt.gz")
    broken = tmp_path / "broken.txt"
    broken.write_text("header\ni n\nthis has three\n")
    with pytest.raises(ValueError, match="Line 3"):
        read_bpe_merges(broken)
    header_only = tmp_path / "header_only.txt"
    header_only.write_text("header\n")
    with pytest.raises(ValueError, match="no BPE merges"):
        read_bpe_merges(header_only)


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_images_match_original_transform(name):
    inputs, meta = _fixture(name)
    raw = inputs["raw_images_uint8"]
    assert list(raw.shape[1:3]) == meta["image"]["raw_hw"]
    image_processor = _image_processor_for(meta)
    expected = inputs["pixel_values"]
    as_batch = image_processor(raw, return_tensors="pt")["pixel_values"]
    assert as_batch.dtype == torch.float32
    np.testing.assert_allclose(as_batch.numpy(), expected, rtol=0, atol=1e-6)
    as_pil = image_processor([PIL.Image.fromarray(image) for image in raw], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(as_pil, expected, rtol=0, atol=1e-6)
    as_chw_tensors = [torch.from_numpy(image).permute(2, 0, 1) for image in raw]
    from_tensors = image_processor(as_chw_tensors, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(from_tensors, expected, rtol=0, atol=1e-6)
    as_floats = image_processor(raw.astype(np.float32) / 255, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(as_floats, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("width", "expected_left"), [(71, 4), (69, 2), (70, 3)])
def test_center_crop_offset_rounds_half_to_even(width, expected_left):
    columns = np.tile(np.arange(width, dtype=np.uint8), (64, 1))
    image = PIL.Image.fromarray(columns)
    cropped = np.asarray(center_crop_pil(image, 64, 64))
    assert cropped[0, 0] == expected_left
    processor = VlpClipImageProcessor(
        do_resize=False, crop_size=64, do_rescale=False, do_normalize=False, do_convert_rgb=False
    )
    pixels = processor(columns, return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(pixels[0, 0, 0], np.arange(expected_left, expected_left + 64))


def test_center_crop_pads_small_images_like_torchvision():
    image = PIL.Image.fromarray(np.full((3, 4), 200, dtype=np.uint8))
    padded = np.asarray(center_crop_pil(image, 6, 7))
    assert padded.shape == (6, 7)
    np.testing.assert_array_equal(np.argwhere(padded == 200).min(0), [1, 1])
    np.testing.assert_array_equal(np.argwhere(padded == 200).max(0), [3, 4])


def test_matches_torchvision_original_pipeline_on_modes_and_sizes():
    transforms = pytest.importorskip("torchvision.transforms")
    original = transforms.Compose(
        [
            transforms.Resize(24, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(24),
            lambda image: image.convert("RGB"),
            transforms.ToTensor(),
            transforms.Normalize(OPENAI_MEAN.tolist(), OPENAI_STD.tolist()),
        ]
    )
    rng = np.random.default_rng(0)
    # Resized long sides 31, 48, 33, 31, 24: odd margins 7 and 9 exercise the half-to-even crop offset.
    images = [
        PIL.Image.fromarray(rng.integers(0, 256, (37, 48, 3), dtype=np.uint8)),
        PIL.Image.fromarray(rng.integers(0, 256, (61, 30), dtype=np.uint8)),
        PIL.Image.fromarray(rng.integers(0, 256, (29, 41, 4), dtype=np.uint8)),
        PIL.Image.fromarray(rng.integers(0, 256, (33, 43, 3), dtype=np.uint8)).convert("P"),
        PIL.Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)),
    ]
    processor = VlpClipImageProcessor(size=24, crop_size=24)
    ours = processor(images, return_tensors="np")["pixel_values"]
    reference = np.stack([original(image).numpy() for image in images])
    np.testing.assert_array_equal(ours, reference)


def test_image_processor_save_load_round_trip(tmp_path):
    processor = VlpClipImageProcessor(size=40, crop_size={"height": 32, "width": 36})
    processor.save_pretrained(tmp_path)
    loaded = VlpClipImageProcessor.from_pretrained(tmp_path)
    assert loaded.size.shortest_edge == 40
    assert (loaded.crop_size.height, loaded.crop_size.width) == (32, 36)
    image = np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        loaded(image, return_tensors="np")["pixel_values"], processor(image, return_tensors="np")["pixel_values"]
    )


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (np.zeros(10, dtype=np.uint8), ValueError, "2-D"),
        (np.zeros((1, 2, 8, 8, 3), dtype=np.uint8), ValueError, "2-D"),
        (np.zeros((8, 8, 2), dtype=np.uint8), ValueError, "channel axis"),
        (np.zeros((0, 8, 3), dtype=np.uint8), ValueError, "Empty image"),
        ([], ValueError, "No images"),
        (np.full((8, 8, 3), 300, dtype=np.int32), ValueError, r"\[0, 255\]"),
        (np.full((8, 8, 3), -0.5, dtype=np.float32), ValueError, r"\[0, 1\]"),
        (np.full((8, 8, 3), np.nan, dtype=np.float32), ValueError, "NaN"),
        ([None], TypeError, "Unsupported image type"),
    ],
)
def test_bad_images_raise_clear_errors(images, error, match):
    with pytest.raises(error, match=match):
        VlpClipImageProcessor(size=8, crop_size=8)(images)


def test_channel_layout_from_input_data_format():
    image = np.random.default_rng(2).integers(0, 256, (3, 10, 3), dtype=np.uint8)
    processor = VlpClipImageProcessor(size=3, crop_size=3)
    as_last = processor(image, input_data_format="channels_last", return_tensors="np")["pixel_values"]
    as_first = processor(np.moveaxis(image, -1, 0), input_data_format="channels_first", return_tensors="np")
    np.testing.assert_array_equal(as_last, as_first["pixel_values"])
    with pytest.raises(ValueError, match="input_data_format"):
        processor(np.zeros((5, 10, 3), dtype=np.uint8), input_data_format="channels_first")


# ---------------------------------------------------------------- processor


def test_processor_text_and_images_together():
    inputs, meta = _fixture("clip_resnet")
    processor = _processor_for("clip_resnet")
    batch = processor(images=list(inputs["raw_images_uint8"]), text=meta["texts"], return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    np.testing.assert_allclose(batch["pixel_values"].numpy(), inputs["pixel_values"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(batch["input_ids"].numpy(), inputs["input_ids"])


def test_processor_round_trip_keeps_settings(tmp_path, image_processor_registered):
    processor = _processor_for("clip_vit", context_length=16, pad_token_id=3, prompt_template="itap of a {}")
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert (saved["context_length"], saved["pad_token_id"], saved["prompt_template"]) == (16, 3, "itap of a {}")

    loaded = VlpClipProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded.image_processor, VlpClipImageProcessor)
    assert (loaded.context_length, loaded.pad_token_id, loaded.prompt_template) == (16, 3, "itap of a {}")
    assert loaded.format_labels(["cat", "dog"]) == ["itap of a cat", "itap of a dog"]
    _, meta = _fixture("clip_vit")
    texts = loaded.format_labels(["cat"]) + meta["texts"][:1]
    np.testing.assert_array_equal(
        loaded(text=texts, return_tensors="np")["input_ids"], processor(text=texts, return_tensors="np")["input_ids"]
    )
    assert loaded(text=texts, return_tensors="np")["input_ids"].shape == (2, 16)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded_tokenizer(["two dogs"], padding=True)["input_ids"] == [[998, 966, 334, 639, 70, 338, 999]]


def test_format_labels_default_template():
    processor = _processor_for("clip_vit")
    assert processor.format_labels(["cat", "red bus"]) == ["a photo of a cat.", "a photo of a red bus."]
    with pytest.raises(TypeError, match="list of strings"):
        processor.format_labels("cat")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"context_length": 1}, "context_length"),
        ({"pad_token_id": 5000}, "pad_token_id"),
        ({"prompt_template": "no placeholder"}, "placeholder"),
        ({"prompt_template": "{} and {}"}, "placeholder"),
        ({"prompt_template": "{label}"}, "placeholder"),
    ],
)
def test_bad_processor_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _processor_for("clip_vit", **kwargs)
