"""BLIP NLVR2 head: the paired cross-attention (average in layers 0-5, merge from layer 6), starting from pre-trained
BLIP (parity with the original's image-grounded encoder when both images are the same), forward contract, errors,
overfitting, save/load; and the ViT's stochastic depth (drop path 0.1 in the original NLVR2/VQA/ViT-L models)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conversion.convert_blip import convert_blip_checkpoint
from hf_vlp.models.blip import (
    VlpBlipConfig,
    VlpBlipForConditionalGeneration,
    VlpBlipModel,
    VlpBlipVisionConfig,
    VlpBlipVisionModel,
)
from hf_vlp.models.blip.modeling_blip_reasoning import PairedCrossAttention, VlpBlipForVisualReasoning
from hf_vlp.modules.transformer import DropPath, drop_path_rates
from tests.helpers.fixtures import converted_state, fixture_tensors, model_from_state
from tests.helpers.tiny_models import tiny_blip_batch, tiny_blip_config

FIXTURE = "blip_pretrain"
FEATURE_ATOL = 1e-5


def fixture_encoders() -> VlpBlipModel:
    return model_from_state(VlpBlipModel, converted_state(convert_blip_checkpoint, FIXTURE, head="model"))


def tiny_config(text_layers: int = 7, **vision_overrides) -> VlpBlipConfig:
    return tiny_blip_config(vision=vision_overrides, text=dict(num_hidden_layers=text_layers))


def tiny_batch(batch: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Each caption with a pair of images."""
    return tiny_blip_batch(batch, seed, image_shape=(2, 3, 16, 16))


# --------------------------------------------------------------------------------------------------- architecture


def test_layers_average_both_images_then_merge_them_from_layer_six() -> None:
    torch.manual_seed(0)
    model = VlpBlipForVisualReasoning(tiny_config()).eval()
    layers = model.text_model.transformer.encoder.layers
    assert all(isinstance(layer.cross_attn, PairedCrossAttention) for layer in layers)
    assert [layer.cross_attn.merge is not None for layer in layers] == [False] * 6 + [True]
    assert model.config.id2label == {0: "False", 1: "True"}
    names = {name for name, _ in model.named_parameters()}
    assert "text_model.transformer.encoder.layers.6.cross_attn.merge.weight" in names
    assert "text_model.transformer.encoder.layers.0.cross_attn.attn1.kv.weight" in names
    assert not any(".causal_attn." in name for name in names) and "cls_head.2.weight" in names
    hidden, first, second = torch.randn(2, 5, 16), torch.randn(2, 4, 24), torch.randn(2, 4, 24)
    memory = torch.cat([first, second], dim=1)
    with torch.no_grad():
        for layer in (layers[0], layers[6]):
            paired = layer.cross_attn
            out0 = paired.attn0(hidden, first)[0]
            out1 = paired.attn1(hidden, second)[0]
            expected = (out0 + out1) / 2 if paired.merge is None else paired.merge(torch.cat([out0, out1], dim=-1))
            torch.testing.assert_close(paired(hidden, memory)[0], expected)
        # a padding mask over both images' tokens is split between the two attentions
        mask = torch.zeros(2, 1, 1, 8)
        mask[:, ..., 3] = torch.finfo(torch.float32).min
        masked = layers[0].cross_attn(hidden, memory, attention_mask=mask)[0]
        paired = layers[0].cross_attn
        expected = (paired.attn0(hidden, first[:, :3])[0] + paired.attn1(hidden, second)[0]) / 2
        torch.testing.assert_close(masked, expected)
    with pytest.raises(ValueError, match="odd length"):
        layers[0].cross_attn(hidden, memory[:, :7])


def test_from_pretrained_blip_reproduces_the_originals_encoder_when_both_images_are_the_same() -> None:
    """Averaging two copies of the same cross-attention over the same image is the original single-image encoder:
    the states equal the fixture's recorded image-grounded encoder states ([ENC] first, mode 'multimodal')."""
    source = fixture_encoders()
    model = VlpBlipForVisualReasoning.from_blip_pretrained(source)
    inputs, outputs = fixture_tensors(FIXTURE)
    expected = outputs["multimodal_hidden"]
    pairs = torch.stack([inputs["pixel_values"], inputs["pixel_values"]], dim=1)
    with torch.no_grad():
        out = model(inputs["input_ids"], pairs, inputs["attention_mask"], output_hidden_states=True)
    torch.testing.assert_close(out.last_hidden_state, expected, atol=FEATURE_ATOL, rtol=0)
    assert out.image_hidden_states.shape == (4, 2, 17, 48) and out.logits.shape == (4, 2)
    assert model.config.vision_config.drop_path_rate == 0.1 and not model.training
    layer = model.text_model.transformer.encoder.layers[1]
    source_cross = source.text_model.transformer.encoder.layers[1].cross_attn
    for copy in (layer.cross_attn.attn0, layer.cross_attn.attn1):
        assert torch.equal(copy.kv.weight, source_cross.kv.weight) and torch.equal(copy.q.bias, source_cross.q.bias)
        assert torch.equal(copy.out_proj.weight, source_cross.out_proj.weight)
    positions = model.vision_model.transformer.position_embedding
    assert torch.equal(positions, source.vision_model.transformer.position_embedding)


def test_from_pretrained_blip_takes_directories_resizes_positions_and_refuses_other_models(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = VlpBlipModel(tiny_config())
    source.save_pretrained(tmp_path)
    model = VlpBlipForVisualReasoning.from_blip_pretrained(tmp_path, image_size=24, drop_path_rate=0.2)
    assert model.config.vision_config.image_size == 24 and model.config.vision_config.drop_path_rate == 0.2
    assert model.vision_model.transformer.position_embedding.shape == (10, 24)  # 3 x 3 patches + [CLS]
    torch.testing.assert_close(
        model.vision_model.transformer.position_embedding[0], source.vision_model.transformer.position_embedding[0]
    )
    merge = model.text_model.transformer.encoder.layers[6].cross_attn.merge
    assert merge.weight.shape == (16, 32)  # new: Linear(2D, D)
    assert torch.equal(model.text_model.transformer.encoder.layers[6].mlp.fc1.weight,
                       source.text_model.transformer.encoder.layers[6].mlp.fc1.weight)
    batch = tiny_batch(2)
    pairs = torch.randn(2, 2, 3, 24, 24)
    assert model(batch["input_ids"], pairs, batch["attention_mask"]).logits.shape == (2, 2)
    captioner_dir = tmp_path / "captioner"
    VlpBlipForConditionalGeneration(tiny_config()).save_pretrained(captioner_dir)
    with pytest.raises(ValueError, match=r"holds \['VlpBlipForConditionalGeneration'\], not BLIP's image-grounded"):
        VlpBlipForVisualReasoning.from_blip_pretrained(captioner_dir)
    with pytest.raises(TypeError, match="only apply when `source` is a directory"):
        VlpBlipForVisualReasoning.from_blip_pretrained(source, dtype=torch.float32)
    with pytest.raises(TypeError, match="already an NLVR2 model"):
        VlpBlipForVisualReasoning.from_blip_pretrained(model)
    with pytest.raises(TypeError, match="holding the image-grounded encoder"):
        VlpBlipForVisualReasoning.from_blip_pretrained(torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------------------------------- forward


def test_forward_contract_and_errors() -> None:
    torch.manual_seed(0)
    model = VlpBlipForVisualReasoning(tiny_config(text_layers=2)).eval()
    batch = tiny_batch(4)
    labels = torch.tensor([0, 1, 1, 0])
    out = model(**batch, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    assert out.last_hidden_state is None and model(**batch).loss is None
    assert isinstance(model(**batch, labels=labels, return_dict=False), tuple)
    # [ENC] is put first: the statement's own first token does not matter
    other_first = dict(batch, input_ids=batch["input_ids"].clone())
    other_first["input_ids"][:, 0] = 7
    torch.testing.assert_close(model(**other_first).logits, model(**batch).logits)
    # the two images are told apart: swapping them changes the logits once a merge layer exists
    swapped = dict(batch, pixel_values=batch["pixel_values"].flip(1))
    merged = VlpBlipForVisualReasoning(tiny_config()).eval()
    assert not torch.allclose(merged(**swapped).logits, merged(**batch).logits)
    with pytest.raises(ValueError, match=r"\[batch, 2, channels, height, width\].*torch.stack"):
        model(batch["input_ids"], batch["pixel_values"][:, 0])
    with pytest.raises(ValueError, match="one image pair per statement: got 4 pairs and 2 texts"):
        model(batch["input_ids"][:2], batch["pixel_values"])
    with pytest.raises(ValueError, match="labels"):
        model(**batch, labels=torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="no token-type embeddings"):
        model(**batch, token_type_ids=torch.ones_like(batch["input_ids"]))


def test_overfit_eight_examples() -> None:
    torch.manual_seed(0)
    config = tiny_config(text_layers=7)
    for settings in (config, config.vision_config, config.text_config):
        settings.initializer_range = 0.2
    model = VlpBlipForVisualReasoning(config).train()
    batch = tiny_batch(8, seed=1)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses
    assert (model.eval()(**batch).logits.argmax(dim=1) == labels).all()


def test_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VlpBlipForVisualReasoning(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert "text_model.transformer.encoder.layers.6.cross_attn.merge.weight" in saved
    loaded = VlpBlipForVisualReasoning.from_pretrained(tmp_path, dtype=torch.float32).eval()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    batch = tiny_batch(2)
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)
    assert (tmp_path / "README.md").exists()


# --------------------------------------------------------------------------------------------------- drop path


def test_drop_path_drops_whole_samples_in_training_only() -> None:
    drop = DropPath(0.5)
    x = torch.ones(400, 3, 2)
    torch.manual_seed(0)
    out = drop.train()(x)
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - rate)
    assert (per_sample == per_sample[:, :1]).all()  # the whole residual branch of a sample at once
    assert 0.35 < (per_sample[:, 0] == 0).float().mean() < 0.65
    assert torch.equal(drop.eval()(x), x) and torch.equal(DropPath(0.0).train()(x), x)
    assert drop_path_rates(0.1, 3) == pytest.approx([0.0, 0.05, 0.1]) and drop_path_rates(0.1, 1) == [0.0]
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        DropPath(1.0)
    with pytest.raises(Exception, match="drop_path_rate must lie in"):  # huggingface_hub's validation error
        VlpBlipVisionConfig(drop_path_rate=1.5)


def test_vision_tower_drop_path_changes_training_passes_only() -> None:
    settings = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=16,
                    patch_size=8)
    torch.manual_seed(0)
    plain = VlpBlipVisionModel(VlpBlipVisionConfig(**settings))
    dropping = VlpBlipVisionModel(VlpBlipVisionConfig(**settings, drop_path_rate=0.5))
    assert plain.state_dict().keys() == dropping.state_dict().keys()  # no parameters added
    dropping.load_state_dict(plain.state_dict())
    blocks = dropping.transformer.encoder.layers
    assert isinstance(blocks[0].drop_path, torch.nn.Identity) and blocks[2].drop_path.rate == pytest.approx(0.5)
    assert blocks[1].drop_path.rate == pytest.approx(0.25)
    pixel_values = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(dropping.eval()(pixel_values).last_hidden_state,
                                   plain.eval()(pixel_values).last_hidden_state)
        dropping.train()
        torch.manual_seed(1)
        first = dropping(pixel_values).last_hidden_state
        torch.manual_seed(2)
        second = dropping(pixel_values).last_hidden_state
    assert not torch.allclose(first, second)
    assert VlpBlipConfig.from_preset("large").vision_config.drop_path_rate == 0.1
    assert VlpBlipConfig.from_preset("base").vision_config.drop_path_rate == 0.0
