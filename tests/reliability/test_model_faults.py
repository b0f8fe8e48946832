"""Fault injection on the models and the image processors (issue 11, items 7, 10 and 12): a bad batch never
poisons state, an empty batch or integer pixels get a one-line error, 16-bit images keep their values, NaN pixels
never become a caption."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from hf_vlp.models.albef import VlpAlbefForPretraining
from hf_vlp.models.blip import VlpBlipForConditionalGeneration, VlpBlipForImageTextRetrieval, VlpBlipModel
from hf_vlp.models.clip import VlpClipImageProcessor
from tests.helpers.tiny_models import CLS_ID, MASK_ID, tiny_albef_config, tiny_batch, tiny_blip_batch, tiny_blip_config


def queue_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in model.named_buffers() if "_queue." in name}


@pytest.mark.parametrize("architecture", ["albef-pretraining", "blip-retrieval"])
def test_item7_a_nan_image_leaves_the_queues_unpoisoned(architecture):
    if architecture == "albef-pretraining":
        model = VlpAlbefForPretraining(tiny_albef_config(text=dict(mask_token_id=MASK_ID, cls_token_id=CLS_ID)))
        extra = {"return_loss": True}
    else:
        model = VlpBlipForImageTextRetrieval(tiny_blip_config(queue_size=8))
        extra = {"image_ids": torch.arange(4)}
    model.train()
    batch = tiny_batch(4) if architecture == "albef-pretraining" else tiny_blip_batch(4)
    before = queue_state(model)
    poisoned = {**batch, "pixel_values": batch["pixel_values"].clone()}
    poisoned["pixel_values"][1] = float("nan")
    with pytest.raises((FloatingPointError, ValueError, RuntimeError)):
        model(**poisoned, **extra, generator=torch.Generator().manual_seed(0))
    for name, buffer in queue_state(model).items():
        assert torch.equal(buffer, before[name]), f"{name} changed during a refused step"
    loss = model(**batch, **extra, generator=torch.Generator().manual_seed(0)).loss
    assert torch.isfinite(loss)
    assert all(torch.isfinite(buffer.float()).all() for buffer in queue_state(model).values())


def test_item10_an_empty_batch_is_named_not_a_reshape_traceback():
    model = VlpBlipModel(tiny_blip_config()).eval()
    batch = {name: value[:0] for name, value in tiny_blip_batch(2).items()}
    with pytest.raises(ValueError, match=r"VlpBlipModel.forward got an empty batch \(input_ids has 0 rows\)"):
        model(**batch)
    captioner = VlpBlipForConditionalGeneration(tiny_blip_config()).eval()
    with pytest.raises(ValueError, match="empty batch"):
        captioner.generate(batch["pixel_values"], max_length=4)


def test_item12_integer_pixel_values_are_refused():
    model = VlpBlipModel(tiny_blip_config()).eval()
    batch = tiny_blip_batch(2)
    batch["pixel_values"] = (batch["pixel_values"] * 50).clamp(0, 255).to(torch.int64)
    with pytest.raises(ValueError, match="pixel_values must be floating point .* got torch.int64"):
        model(**batch)


def test_item12_nan_pixels_never_become_a_caption():
    captioner = VlpBlipForConditionalGeneration(tiny_blip_config()).eval()
    pixel_values = tiny_blip_batch(3)["pixel_values"]
    pixel_values[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values \(images \[2\]\)"):
        captioner.generate(pixel_values, max_length=4)


@pytest.mark.parametrize("bits", [16, 32])
def test_item12_a_wide_image_is_scaled_not_saturated_to_white(bits):
    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    wide = PIL.Image.fromarray((ramp * 65535).astype(np.uint16 if bits == 16 else np.int32))
    assert wide.mode == ("I;16" if bits == 16 else "I")
    narrow = PIL.Image.fromarray((ramp * 255).round().astype(np.uint8))
    processor = VlpClipImageProcessor(size=32, crop_size=32)
    got, expected = (processor(images=image, return_tensors="pt")["pixel_values"] for image in (wide, narrow))
    level = 1 / 255 / min(processor.image_std)  # one 8-bit level after normalisation
    assert (got - expected).abs().max() <= level + 1e-6
    assert got.max() < expected.max() + level  # not white
