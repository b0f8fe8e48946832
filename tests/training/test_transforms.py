"""Training transforms on PIL images: CLIP's crop, ALBEF's RandAugment(2, 7) operations, seeding, the crop scales."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_vlp.synthetic import build_synthetic_split
from hf_vlp.training.transforms import (
    ALBEF_RAND_AUGMENT_OPS,
    FILL,
    PRETRAIN_CROP_SCALE,
    RandAugmentPil,
    RandomResizedCropPil,
    _apply,
    albef_train_transform,
    clip_train_transform,
)


@pytest.fixture(scope="module")
def image():
    return build_synthetic_split("train", 1, image_size=64, seed=0)[0]["image"]


def _array(image):
    return np.asarray(image, dtype=np.int16)


def test_every_operation_keeps_size_and_mode(image):
    generator = torch.Generator().manual_seed(0)
    for name in ALBEF_RAND_AUGMENT_OPS:
        out = _apply(name, image, 7, generator)
        assert out.size == image.size and out.mode == "RGB", name
    assert _array(_apply("Identity", image, 7, generator)).tolist() == _array(image).tolist()


def test_geometric_operations_use_the_originals_magnitudes_and_grey_fill():
    square = Image.new("RGB", (40, 40), (10, 200, 10))
    # M = 7: translation 7 px, filled with (128, 128, 128) where the image moved away
    shifted = _array(_apply("TranslateX", square, 7, torch.Generator().manual_seed(1)))
    grey_columns = [column for column in range(40) if (shifted[:, column] == FILL).all()]
    assert len(grey_columns) == 7
    brighter = _array(_apply("Brightness", square, 7, None))
    assert np.abs(brighter[0, 0] - np.array([10 * 1.36, 255, 10 * 1.36])).max() <= 1  # factor 0.1 + 1.8 * 7 / 10
    rotated = _array(_apply("Rotate", square, 7, torch.Generator().manual_seed(0)))
    assert (rotated[0, 0] == FILL).all() and (rotated[20, 20] == (10, 200, 10)).all()


def test_rand_augment_is_a_function_of_its_generator(image):
    augment = RandAugmentPil(2, 7)
    draws = [_array(augment(image, torch.Generator().manual_seed(seed))) for seed in range(12)]
    again = [_array(augment(image, torch.Generator().manual_seed(seed))) for seed in range(12)]
    assert all(np.array_equal(a, b) for a, b in zip(draws, again))
    assert len({a.tobytes() for a in draws}) > 6  # ops applied with probability 0.5 each: mostly different images
    with pytest.raises(ValueError, match="subset"):
        RandAugmentPil(2, 7, ops=("Solarize",))
    with pytest.raises(ValueError, match="magnitude"):
        RandAugmentPil(2, 11)


def test_train_transform_crops_to_the_model_size(image):
    transform = albef_train_transform(32, PRETRAIN_CROP_SCALE)
    out = transform(image, generator=torch.Generator().manual_seed(3))
    assert out.size == (32, 32)
    assert _array(transform(image, generator=torch.Generator().manual_seed(3))).tolist() == _array(out).tolist()
    plain = albef_train_transform(32, rand_augment=False)
    assert len(plain.transforms) == 1


def test_clip_train_transform_crops_most_of_the_image_and_follows_torch_seed():
    image = Image.new("RGB", (80, 60), (10, 20, 30))
    transform = clip_train_transform(32)
    assert transform.scale == (0.9, 1.0)
    torch.manual_seed(0)
    boxes = [transform.crop_box(80, 60) for _ in range(50)]
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= 80 and 0 <= top < bottom <= 60
        assert (right - left) * (bottom - top) >= 0.9 * 80 * 60 - 80  # rounding of the sampled sides
    torch.manual_seed(0)
    assert [transform.crop_box(80, 60) for _ in range(50)] == boxes
    assert transform(image).size == (32, 32)
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCropPil(32, scale=(0.0, 1.0))
