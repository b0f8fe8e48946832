"""Initialising VLMo from a tiny random transformers BEiT (its stage 1) reproduces BEiT's image encoder exactly and
leaves the text side, the VL-FFN and the table's text rows untouched."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from transformers import (
    BeitConfig,
    BeitForImageClassification,
    BeitForMaskedImageModeling,
    BeitModel,
    Data2VecVisionConfig,
    Data2VecVisionModel,
    ViTConfig,
    ViTModel,
)

from hf_vlp.models.vlmo import VlpVlmoForMaskedLM, VlpVlmoModel
from hf_vlp.modules.relative_position import resized_image_rows
from hf_vlp.utils.tower_init import TowerInitError, load_vlmo_from_beit
from tests.helpers.tiny_models import TINY_VLMO, tiny_vlmo_config

WIDTH, HEADS, LAYERS = TINY_VLMO["hidden_size"], TINY_VLMO["num_attention_heads"], TINY_VLMO["num_hidden_layers"]
VL_START = TINY_VLMO["vl_ffn_start_layer"]
IMAGE_ROWS = 3 * 3 + 3  # 2x2 patch grid: (2*2-1)^2 offsets + 3 class-token rows
TABLE = "relative_position_bias.table"


def beit_config(config_class=BeitConfig, **settings) -> BeitConfig:
    """A BEiT of the tiny VLMo's sizes (eps 1e-6 as VLMo's, unless ``settings`` say otherwise)."""
    values = dict(
        hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=TINY_VLMO["intermediate_size"], image_size=TINY_VLMO["image_size"],
        patch_size=TINY_VLMO["patch_size"], hidden_act="gelu", layer_norm_eps=1e-6, use_relative_position_bias=True,
        layer_scale_init_value=0.1, use_mean_pooling=False, num_labels=3,
    )
    return config_class(**{**values, **settings})


def randomised(model, seed: int):
    """Every parameter random (LayerNorms, layer scales and bias tables too), so a swapped or skipped tensor shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2 + (parameter == 1).float())
    return model.eval()


def vlmo(seed: int = 10, **settings) -> VlpVlmoModel:
    """A tiny VLMo with random weights everywhere (so "left as initialised" is checked against non-trivial values)."""
    return randomised(VlpVlmoModel(tiny_vlmo_config(**settings)), seed)


def pixels(size: int = TINY_VLMO["image_size"]) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))


def saved(model, tmp_path, name: str):
    directory = tmp_path / name
    model.save_pretrained(directory)
    return directory


def max_difference(model: VlpVlmoModel, expected: torch.Tensor, images: torch.Tensor) -> float:
    with torch.no_grad():
        return (model.encode_image(images).last_hidden_state - expected).abs().max().item()


@pytest.fixture(scope="module")
def beit() -> BeitModel:
    return randomised(BeitModel(beit_config()), 0)


# --------------------------------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("from_directory", [True, False], ids=["directory", "instance"])
def test_image_pass_reproduces_beit(beit, tmp_path, from_directory):
    model = vlmo()
    report = load_vlmo_from_beit(model, saved(beit, tmp_path, "beit") if from_directory else beit)
    images = pixels()
    with torch.no_grad():
        expected = beit(pixel_values=images).last_hidden_state  # use_mean_pooling=False: layernorm on every token
    assert max_difference(model, expected, images) < 1e-5
    # saved files use the serialized names, instances transformers 5's in-memory names
    if from_directory:
        attention = "encoder.layer.1.attention.attention."
        parts, q_bias = [attention + f"{part}.weight" for part in ("query", "key", "value")], attention + "query.bias"
    else:
        parts = [f"layers.1.attention.{part}_proj.weight" for part in "qkv"]
        q_bias = "layers.1.attention.q_proj.bias"
    assert report.copied["encoder.layers.1.attn.qkv.weight"] == parts
    assert report.copied["encoder.layers.1.attn.q_bias"] == [q_bias]
    assert len(report.copied[TABLE]) == LAYERS  # one BEiT table per layer, concatenated along the head axis
    assert report.dropped == {} and report.interpolated == {}


def test_data2vec_vision_loads_the_same_way():
    data2vec = randomised(Data2VecVisionModel(beit_config(Data2VecVisionConfig)), 3)
    model = vlmo()
    load_vlmo_from_beit(model, data2vec)
    images = pixels()
    with torch.no_grad():
        expected = data2vec(pixel_values=images).last_hidden_state
    assert max_difference(model, expected, images) < 1e-5


@pytest.mark.parametrize("tables", ["shared", "shared+per-layer"])
def test_shared_table_goes_into_every_layer(tables):
    source = randomised(
        BeitModel(beit_config(use_shared_relative_position_bias=True, use_relative_position_bias=tables != "shared")), 4
    )
    model = vlmo()
    report = load_vlmo_from_beit(model, source)
    images = pixels()
    with torch.no_grad():
        expected = source(pixel_values=images).last_hidden_state
    assert max_difference(model, expected, images) < 1e-5
    shared = source.shared_position_bias.relative_position_bias_table.detach()
    for index in range(LAYERS):
        columns = model.relative_position_bias.table[:IMAGE_ROWS, index * HEADS : (index + 1) * HEADS].detach()
        if tables == "shared":
            torch.testing.assert_close(columns, shared, atol=0, rtol=0)
        else:  # BEiT adds both biases
            own = source.layers[index].relative_position_bias.relative_position_bias_table.detach()
            torch.testing.assert_close(columns, own + shared, atol=0, rtol=0)
    assert any("shared" in note for note in report.notes)


def test_grid_interpolation_matches_beit_at_the_larger_size(beit):
    model = vlmo(image_size=32)  # 2x2 -> 4x4 patch grid
    report = load_vlmo_from_beit(model, beit)
    assert list(report.interpolated) == [TABLE] and TABLE not in report.copied
    assert "2x2 -> 4x4 patch grid" in report.interpolated[TABLE]
    merged = torch.cat([layer.relative_position_bias.relative_position_bias_table.detach() for layer in beit.layers], 1)
    rows = torch.cat([resized_image_rows(merged[:-3], (2, 2), (4, 4)), merged[-3:]])
    torch.testing.assert_close(model.relative_position_bias.table[: rows.shape[0]].detach(), rows, atol=0, rtol=0)
    # transformers' BEiT resizes its tables the same way when it runs at another resolution
    images = pixels(32)
    with torch.no_grad():
        expected = beit(pixel_values=images, interpolate_pos_encoding=True).last_hidden_state
    assert max_difference(model, expected, images) < 1e-5


@pytest.mark.parametrize("head", ["masked-image-modelling", "classifier"])
def test_heads_and_final_norms(head):
    """BeitForMaskedImageModeling's head norm is BEiT's final norm (copied); a classifier's fc_norm normalises the
    mean-pooled patches only, so VLMo's final norm stays as initialised, as the original leaves it."""
    if head == "masked-image-modelling":
        config = beit_config(use_mean_pooling=True, use_mask_token=True, vocab_size=24)
        source = randomised(BeitForMaskedImageModeling(config), 5)
    else:
        source = randomised(BeitForImageClassification(beit_config(use_mean_pooling=True)), 6)
    model = vlmo()
    norm_before = {key: value.clone() for key, value in model.norm.state_dict().items()}
    report = load_vlmo_from_beit(model, source)
    images = pixels()
    with torch.no_grad():
        blocks = source.beit(pixel_values=images).last_hidden_state  # use_mean_pooling=True: no norm yet
        if head == "masked-image-modelling":
            expected = source.layernorm(blocks)
        else:
            expected = F.layer_norm(blocks, (WIDTH,), model.norm.weight, model.norm.bias, model.norm.eps)
    assert max_difference(model, expected, images) < 1e-5
    if head == "masked-image-modelling":
        assert report.copied["norm.weight"] == ["layernorm.weight"]
        assert set(report.dropped) == {"beit.embeddings.mask_token", "lm_head.weight", "lm_head.bias"}
    else:
        assert "norm.weight" in report.not_initialised
        assert all(torch.equal(model.norm.state_dict()[key], value) for key, value in norm_before.items())
        assert set(report.dropped) == {
            "beit.pooler.layernorm.weight", "beit.pooler.layernorm.bias", "classifier.weight", "classifier.bias"
        }
        assert any("fc_norm" in note for note in report.notes)
        assert "fc_norm" in report.summary()


def test_beit_without_layer_scale_gets_a_scale_of_one():
    source = randomised(BeitModel(beit_config(layer_scale_init_value=0.0)), 7)
    model = vlmo()
    report = load_vlmo_from_beit(model, source)
    images = pixels()
    with torch.no_grad():
        expected = source(pixel_values=images).last_hidden_state
    assert max_difference(model, expected, images) < 1e-5
    assert torch.equal(model.encoder.layers[2].layer_scale2, torch.ones(WIDTH))
    assert any("no layer scale" in note for note in report.notes)


def test_absolute_positions_need_an_absolute_vlmo():
    source = randomised(
        BeitModel(beit_config(use_absolute_position_embeddings=True, use_relative_position_bias=False)), 8
    )
    with pytest.raises(TowerInitError, match=r"absolute position embeddings .* position_embedding_type='absolute'"):
        load_vlmo_from_beit(vlmo(), source)
    model = vlmo(position_embedding_type="absolute")
    report = load_vlmo_from_beit(model, source)
    images = pixels()
    with torch.no_grad():
        expected = source(pixel_values=images).last_hidden_state
    assert max_difference(model, expected, images) < 1e-5
    assert report.copied["image_embeddings.position_embedding"] == ["embeddings.position_embeddings"]


def test_relative_tables_need_a_relative_vlmo(beit):
    with pytest.raises(TowerInitError, match=r"relative-position bias tables.*position_embedding_type='relative'"):
        load_vlmo_from_beit(vlmo(position_embedding_type="absolute"), beit)


# --------------------------------------------------------------------------------------------------- untouched parts


def test_text_side_vl_ffn_and_text_rows_stay_bitwise(beit):
    model = vlmo()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    report = load_vlmo_from_beit(model, beit)
    after = model.state_dict()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed == set(report.copied) | {"modality_embeddings.weight"}
    assert not any(".text." in key or ".vl." in key or key.startswith("text_embeddings.") for key in changed)
    assert torch.equal(after[TABLE][IMAGE_ROWS:], before[TABLE][IMAGE_ROWS:])  # cross-modal and text rows
    assert torch.equal(after["modality_embeddings.weight"][0], before["modality_embeddings.weight"][0])
    assert torch.equal(after["modality_embeddings.weight"][1], torch.zeros(WIDTH))  # zero_image_modality=True

    kept = vlmo()
    load_vlmo_from_beit(kept, beit, zero_image_modality=False)
    assert torch.equal(kept.modality_embeddings.weight, vlmo().modality_embeddings.weight)


def test_report_says_what_was_copied_and_left_per_expert(beit):
    report = load_vlmo_from_beit(vlmo(), beit)
    left = set(report.not_initialised)
    for index in range(LAYERS):
        assert f"encoder.layers.{index}.mlp.text.fc1.weight" in left
        assert f"encoder.layers.{index}.mlp.image.fc1.weight" in report.copied
        assert (f"encoder.layers.{index}.mlp.vl.fc2.bias" in left) == (index >= VL_START)
    table_rows = vlmo().relative_position_bias.table.shape[0]
    assert {f"{TABLE}[{IMAGE_ROWS}:{table_rows}]", "modality_embeddings.weight[0]", "pooler.dense.weight"} <= left
    assert {"text_projection.weight", "image_projection.weight", "logit_scale"} <= left
    summary = report.summary()
    copied, left_part = summary.split("left as initialised:")
    assert "V-FFN (image expert), layers 0-3: norm2.image, mlp.image" in copied
    assert "shared attention, layers 0-3: norm1, attn, layer_scale1, layer_scale2" in copied
    assert f"{TABLE}[0:{IMAGE_ROWS}] (image rows)" in copied
    assert "final norm: norm" in copied
    assert "L-FFN (text expert), layers 0-3: norm2.text, mlp.text" in left_part
    assert f"VL-FFN (fusion expert), layers {VL_START}-{LAYERS - 1}: norm2.vl, mlp.vl" in left_part
    assert f"{TABLE}[{IMAGE_ROWS}:] (cross-modal and text rows)" in left_part
    assert "text_embeddings" in left_part and "modality_embeddings.weight[0] (text row)" in left_part


# --------------------------------------------------------------------------------------------------- errors


def test_size_mismatch_names_the_field_and_the_fix(beit):
    with pytest.raises(TowerInitError, match=r"num_hidden_layers: VLMo config has 3, source has 4(.|\n)*VlpVlmoConfig"):
        load_vlmo_from_beit(vlmo(num_hidden_layers=3), beit)
    with pytest.raises(TowerInitError, match=r"intermediate_size: VLMo config has 64, source has 32"):
        load_vlmo_from_beit(vlmo(intermediate_size=64), beit)
    with pytest.raises(TowerInitError, match=r"patch_size: VLMo config has 4, source has 8"):
        load_vlmo_from_beit(vlmo(patch_size=4), beit)


def test_eps_difference_is_noted():
    source = randomised(BeitModel(beit_config(layer_norm_eps=1e-12)), 9)  # transformers' BEiT default
    report = load_vlmo_from_beit(vlmo(), source)
    assert any("eps differs: tower 1e-06, source 1e-12" in note for note in report.notes)


def test_rejects_other_models_and_head_models(beit, tmp_path):
    vit = ViTModel(ViTConfig(hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=HEADS, intermediate_size=32))
    with pytest.raises(TowerInitError, match=r"'vit' model; .*'beit'.*BeitModel"):
        load_vlmo_from_beit(vlmo(), vit)
    with pytest.raises(TypeError, match=r"pass model\.vlmo"):
        load_vlmo_from_beit(VlpVlmoForMaskedLM(tiny_vlmo_config()), beit)
    with pytest.raises(TowerInitError, match="neither a local model directory"):
        load_vlmo_from_beit(vlmo(), tmp_path / "missing")
