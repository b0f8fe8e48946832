"""The ViLT image processor and processor: ViLT's resize, padding and tokenisation, parity with transformers' ViLT
image processors and with the original collate (vilt fixture)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoProcessor
from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil, get_resize_output_image_size

from hf_vlp.models.vilt.image_processing_vilt import VlpViltImageProcessor, vilt_resized_height_width
from hf_vlp.models.vilt.processing_vilt import VlpViltProcessor
from hf_vlp.training.tokenizers import wordpiece_tokenizer

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "originals" / "vilt"
PROCESSOR_LOGGER = "hf_vlp.models.vilt.processing_vilt"
LEVEL = 1 / 127.5  # one 8-bit level after ViLT's normalisation (x / 255 - 0.5) / 0.5
# (height, width) -> ViLT's resized (height, width), worked by hand: shorter side 384, longer side at most
# int(1333 / 800 * 384) = 639, each side int(x + 0.5) floored to a multiple of 32
HAND_CHECKED = [
    ((480, 640), (384, 512)),
    ((640, 480), (512, 384)),
    ((384, 384), (384, 384)),
    ((100, 1000), (64, 608)),  # 384 x 3840 capped to 63.9 x 639 -> 64 x 639 -> 64 x 608
    ((1000, 100), (608, 64)),
    ((384, 640), (352, 608)),  # 640 > 639: scaled to 383.4 x 639 -> 383 x 639 -> 352 x 608
    ((333, 500), (384, 576)),  # 384 x 576.6 -> 384 x 577 -> 384 x 576
    ((50, 60), (384, 448)),  # upscaled: 384 x 460.8 -> 384 x 461 -> 384 x 448
]
# sizes for the parity checks: ordinary, very wide, very tall, upscaled, exactly at and past the cap
PARITY_SIZES = [(480, 640), (640, 480), (100, 1000), (1000, 100), (2000, 150), (37, 700), (384, 640), (50, 60)]


def _noise(height: int, width: int, seed: int = 0) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _smooth(height: int, width: int) -> PIL.Image.Image:
    """A photo-like image (smooth colour gradients)."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [127 + 120 * np.sin(x / 17 + phase) * np.cos(y / 23) for phase in range(3)]
    return PIL.Image.fromarray(np.stack(channels, -1).astype(np.uint8))


def _processor(**kwargs) -> VlpViltProcessor:
    tokenizer = wordpiece_tokenizer(["a", "dog", "cat", "on", "the", "grass", "two", "left", "image"])
    return VlpViltProcessor(VlpViltImageProcessor(), tokenizer, **kwargs)


# ---------------------------------------------------------------- resize rule


@pytest.mark.parametrize(("size", "expected"), HAND_CHECKED)
def test_resize_rule_on_hand_checked_sizes(size, expected) -> None:
    assert vilt_resized_height_width(*size, shortest_edge=384, longest_edge=639, size_divisor=32) == expected
    pixels = VlpViltImageProcessor()(_noise(*size), return_tensors="np")["pixel_values"]
    assert pixels.shape == (1, 3, *expected)


def test_defaults_are_the_originals() -> None:
    processor = VlpViltImageProcessor()
    assert dict(processor.size) == {"shortest_edge": 384, "longest_edge": int(1333 / 800 * 384)} == {
        "shortest_edge": 384, "longest_edge": 639}
    assert processor.size_divisor == 32 and processor.do_pad and processor.resample == PIL.Image.BICUBIC
    assert tuple(processor.image_mean) == tuple(processor.image_std) == (0.5, 0.5, 0.5)
    assert processor.model_input_names == ["pixel_values", "pixel_mask"]


def test_resize_rule_matches_transformers_on_a_sweep() -> None:
    for shorter, divisor in ((384, 32), (200, 16)):
        longer = int(1333 / 800 * shorter)
        for height in range(20, 2000, 37):
            for width in range(20, 2000, 41):
                if max(height, width) / min(height, width) > 18:
                    continue  # too elongated: a side would round to 0 (an error here, see below)
                image = np.broadcast_to(np.uint8(0), (3, height, width))
                expected = get_resize_output_image_size(image, shorter, longer, divisor, "channels_first")
                assert vilt_resized_height_width(height, width, shorter, longer, divisor) == expected


def test_int_size_caps_the_longer_side_as_the_original() -> None:
    """Without ``longest_edge`` the cap is ``int(1333 / 800 * shortest_edge)``, as MinMaxResize and transformers."""
    ours = VlpViltImageProcessor(size=480, size_divisor=16)
    assert dict(ours.size) == {"shortest_edge": 480}
    image = _noise(100, 1000)
    expected = ViltImageProcessorPil(size={"shortest_edge": 480}, size_divisor=16)(image, return_tensors="np")
    assert ours(image, return_tensors="np")["pixel_values"].shape == expected["pixel_values"].shape == (1, 3, 80, 784)


def test_bad_sizes_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="too elongated"):
        VlpViltImageProcessor()(_noise(20, 700))
    with pytest.raises(ValueError, match="shortest_edge"):
        VlpViltImageProcessor(size={"height": 64, "width": 64})(_noise(30, 40))
    with pytest.raises(ValueError, match="size_divisor"):
        VlpViltImageProcessor()(_noise(30, 40), size_divisor=0)


# ---------------------------------------------------------------- padding and mask


def test_mixed_batch_is_zero_padded_top_left_with_a_pixel_mask() -> None:
    sizes = [(480, 640), (640, 480), (384, 384)]  # -> 384x512, 512x384, 384x384 on a 512x512 canvas
    images = [_noise(*size, seed=index) for index, size in enumerate(sizes)]
    processor = VlpViltImageProcessor()
    batch = processor(images, return_tensors="pt")
    assert set(batch) == {"pixel_values", "pixel_mask"}
    pixels, mask = batch["pixel_values"], batch["pixel_mask"]
    assert pixels.shape == (3, 3, 512, 512) and pixels.dtype == torch.float32
    assert mask.shape == (3, 512, 512) and mask.dtype == torch.int64
    for index, (image, (height, width)) in enumerate(zip(images, [(384, 512), (512, 384), (384, 384)])):
        alone = processor(image, return_tensors="pt")["pixel_values"][0]
        assert alone.shape == (3, height, width)
        torch.testing.assert_close(pixels[index, :, :height, :width], alone, rtol=0, atol=0)
        assert mask[index, :height, :width].eq(1).all() and mask[index].sum() == height * width
        assert pixels[index].abs().sum() == alone.abs().sum()  # the padding is exactly 0
    # the original infers the mask as (pixels.sum(channels) != 0): the same for real 8-bit images
    assert torch.equal(mask, (pixels.sum(1) != 0).long())


def test_pad_options() -> None:
    images = [_noise(480, 640), _noise(384, 384)]
    unpadded = VlpViltImageProcessor()(images, do_pad=False)
    assert set(unpadded) == {"pixel_values"}
    assert [image.shape for image in unpadded["pixel_values"]] == [(3, 384, 512), (3, 384, 384)]
    on_canvas = VlpViltImageProcessor(pad_size={"height": 416, "width": 640})(images, return_tensors="np")
    assert on_canvas["pixel_values"].shape == (2, 3, 416, 640)
    np.testing.assert_array_equal(on_canvas["pixel_mask"].sum((1, 2)), [384 * 512, 384 * 384])


def test_images_are_converted_to_rgb_before_the_resize() -> None:
    """The original opens every image with ``.convert("RGB")`` before MinMaxResize."""
    processor = VlpViltImageProcessor()
    for mode in ("L", "RGBA", "P"):
        image = _smooth(90, 120).convert(mode)
        np.testing.assert_array_equal(
            processor(image, return_tensors="np")["pixel_values"],
            processor(image.convert("RGB"), return_tensors="np")["pixel_values"],
        )


# ---------------------------------------------------------------- parity with transformers' ViltImageProcessor


def test_matches_transformers_vilt_image_processor_pil_exactly() -> None:
    """transformers' PIL backend runs the same PIL bicubic resize: identical sizes, pixels and masks."""
    images = [_noise(*size, seed=index) for index, size in enumerate(PARITY_SIZES)]
    ours = VlpViltImageProcessor()(images, return_tensors="np")
    theirs = ViltImageProcessorPil()(images, return_tensors="np")
    assert ours["pixel_values"].shape == theirs["pixel_values"].shape == (len(images), 3, 608, 608)
    np.testing.assert_array_equal(ours["pixel_values"], theirs["pixel_values"])
    np.testing.assert_array_equal(ours["pixel_mask"], theirs["pixel_mask"])


def test_matches_transformers_default_vilt_image_processor_within_two_levels() -> None:
    """``transformers.ViltImageProcessor`` (torchvision backend) resamples with torchvision's antialiased bicubic
    instead of PIL's: same sizes and masks, pixels within 2 levels of 255 on these photo-like images (measured: at
    most 2 levels, mean 0.004 level; on pure noise 0.01% of the pixels differ by more than 1 level, up to 10)."""
    pytest.importorskip("torchvision")
    from transformers import ViltImageProcessor

    images = [_smooth(*size) for size in PARITY_SIZES]
    ours = VlpViltImageProcessor()(images, return_tensors="pt")
    theirs = ViltImageProcessor()(images, return_tensors="pt")
    assert ours["pixel_values"].shape == theirs["pixel_values"].shape
    assert torch.equal(ours["pixel_mask"], theirs["pixel_mask"])
    difference = (ours["pixel_values"] - theirs["pixel_values"]).abs()
    assert difference.max() <= 2 * LEVEL + 1e-6
    assert difference[ours["pixel_mask"].unsqueeze(1).expand_as(difference).bool()].mean() < 0.01 * LEVEL


# ---------------------------------------------------------------- processor: text


def test_text_is_the_original_tokenizer_call_padded_to_40() -> None:
    processor = _processor()
    texts = ["A dog on the grass", "two cats"]
    encoded = processor(text=texts, return_tensors="pt")
    assert set(encoded) == {"input_ids", "attention_mask"}
    assert encoded["input_ids"].shape == (2, 40) and encoded["input_ids"].dtype == torch.int64
    # the original: tokenizer(text, padding="max_length", truncation=True, max_length=40), token types unused
    original = processor.tokenizer(texts, padding="max_length", truncation=True, max_length=40)
    assert encoded["input_ids"].tolist() == original["input_ids"]
    assert encoded["attention_mask"].tolist() == original["attention_mask"]
    tokens = processor.tokenizer.convert_ids_to_tokens(encoded["input_ids"][1])
    assert tokens[:5] == ["[CLS]", "two", "cat", "##s", "[SEP]"] and set(tokens[5:]) == {"[PAD]"}
    longest = processor(text=texts, padding="longest")
    assert [len(row) for row in longest["input_ids"]] == [7, 7]


def test_truncation_keeps_sep_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    processor = _processor()
    texts = [" ".join(["dog"] * 45), "a cat"]
    with caplog.at_level(logging.WARNING, logger=PROCESSOR_LOGGER):
        cut = processor(text=texts)["input_ids"]
    warnings = [record.getMessage() for record in caplog.records if record.name == PROCESSOR_LOGGER]
    assert len(warnings) == 1 and "1 of 2 texts" in warnings[0] and "max_length=40" in warnings[0]
    assert cut == processor.tokenizer(texts, padding="max_length", truncation=True, max_length=40)["input_ids"]
    assert cut[0][-1] == processor.tokenizer.sep_token_id
    with pytest.raises(ValueError, match="max_length=40"):
        processor(text=texts, truncation=False)
    assert len(processor(text="a dog", max_length=8)["input_ids"][0]) == 8


# ---------------------------------------------------------------- processor: images, pairs


def test_images_only_text_only_and_both() -> None:
    processor = _processor()
    images = [_noise(100, 120), _noise(60, 90, seed=1)]
    assert set(processor(images=images)) == {"pixel_values", "pixel_mask"}
    assert set(processor(text="a dog")) == {"input_ids", "attention_mask"}
    both = processor(images=images, text=["a dog", "a cat"], return_tensors="pt")
    assert set(both) == {"input_ids", "attention_mask", "pixel_values", "pixel_mask"}
    torch.testing.assert_close(
        both["pixel_values"], processor.image_processor(images, return_tensors="pt")["pixel_values"], rtol=0, atol=0
    )
    assert processor.model_input_names == [
        "pixel_values", "pixel_mask", "input_ids", "attention_mask", "pixel_values_2", "pixel_mask_2"]


def test_pairs_share_one_canvas() -> None:
    processor = _processor()
    first = [_noise(480, 640), _noise(384, 384, seed=1)]  # -> 384x512, 384x384
    second = [_noise(640, 480, seed=2), _noise(384, 384, seed=3)]  # -> 512x384, 384x384
    batch = processor(images=first, images_2=second, text=["the left image", "two dogs"], return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "pixel_mask", "pixel_values_2", "pixel_mask_2"}
    for key in ("pixel_values", "pixel_values_2"):
        assert batch[key].shape == (2, 3, 512, 512)
    alone = processor(images=first, return_tensors="pt")  # a 384x512 canvas when padded without the pairs
    torch.testing.assert_close(batch["pixel_values"][:, :, :384, :512], alone["pixel_values"], rtol=0, atol=0)
    assert batch["pixel_values"][:, :, 384:].eq(0).all() and batch["pixel_mask"][:, 384:].eq(0).all()
    np.testing.assert_array_equal(batch["pixel_mask"].sum((1, 2)), [384 * 512, 384 * 384])
    np.testing.assert_array_equal(batch["pixel_mask_2"].sum((1, 2)), [512 * 384, 384 * 384])
    as_lists = processor(images=first, images_2=second)
    np.testing.assert_array_equal(np.stack(as_lists["pixel_values_2"]), batch["pixel_values_2"].numpy())


def test_pairs_match_the_original_collate() -> None:
    """The vilt fixture's NLVR2 batch (the original collate of two image keys) from its own unpadded 8-bit images."""
    inputs = load_file(str(FIXTURE / "inputs.safetensors"))

    def real_images(key: str) -> list[np.ndarray]:
        images = []
        for pixels, mask in zip(inputs[key], inputs[key.replace("values", "mask")]):
            height, width = int(mask[:, 0].sum()), int(mask[0].sum())
            images.append(np.rint((pixels[:, :height, :width] + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0))
        return images

    batch = _processor()(
        images=real_images("pixel_values"), images_2=real_images("pixel_values_2"), do_resize=False, return_tensors="np"
    )
    for key in ("pixel_values", "pixel_mask", "pixel_values_2", "pixel_mask_2"):
        np.testing.assert_allclose(batch[key], inputs[key], rtol=0, atol=1e-6, err_msg=key)


def test_bad_calls_raise_clear_errors() -> None:
    processor = _processor()
    images = [_noise(40, 50), _noise(50, 40, seed=1)]
    with pytest.raises(ValueError, match="pass the first images as `images`"):
        processor(images_2=images, text=["a dog", "a cat"])
    with pytest.raises(ValueError, match="`images` has 2 images and `images_2` 1"):
        processor(images=images, images_2=images[:1])
    with pytest.raises(ValueError, match="text`, `images` or both"):
        processor()
    with pytest.raises(TypeError, match="without images"):
        processor(text="a dog", size_divisor=16)
    with pytest.raises(ValueError, match="padding"):
        processor(text="a dog", padding="do_not_pad")
    with pytest.raises(ValueError, match="max_length"):
        _processor(max_length=2)


# ---------------------------------------------------------------- saving and loading


def test_round_trip_keeps_settings(tmp_path: Path) -> None:
    image_processor = VlpViltImageProcessor(size={"shortest_edge": 64, "longest_edge": 100}, size_divisor=16)
    processor = VlpViltProcessor(image_processor, _processor().tokenizer, max_length=24)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["max_length"] == 24
    assert saved["image_processor"]["image_processor_type"] == "VlpViltImageProcessor"
    assert saved["image_processor"]["size_divisor"] == 16
    assert "convert_rgb_before_resize" not in saved["image_processor"]

    # importing hf_vlp registers VlpViltImageProcessor/VlpViltProcessor with the Auto classes that loading uses
    loaded = VlpViltProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded.image_processor, VlpViltImageProcessor)
    assert loaded.max_length == 24 and loaded.image_processor.to_dict() == image_processor.to_dict()
    assert isinstance(AutoProcessor.from_pretrained(tmp_path), VlpViltProcessor)
    assert VlpViltImageProcessor.from_pretrained(tmp_path).to_dict() == image_processor.to_dict()
    images, text = [_noise(100, 300), _noise(90, 60, seed=1)], ["a dog on the grass", "two cats"]
    expected = processor(images=images, text=text, return_tensors="np")
    got = loaded(images=images, text=text, return_tensors="np")
    assert got["input_ids"].shape == (2, 24)
    # 100x300 -> 64x192, capped to 33.3x100 -> 32x96; 90x60 -> 96x64: a 96x96 canvas
    assert got["pixel_values"].shape == (2, 3, 96, 96)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
