import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForZeroShotImageClassification

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp import (
    VlpClipConfig,
    VlpClipForImageClassification,
    VlpClipModel,
    VlpClipTextModelWithProjection,
    VlpClipVisionModel,
    VlpClipVisionModelWithProjection,
)
from tests.helpers.tiny_models import CLIP_EOT as EOT, tiny_clip_config as tiny_config, tiny_clip_inputs as tiny_inputs


@pytest.fixture(params=["vit", "resnet"])
def architecture(request):
    return request.param


def test_forward_contract(architecture):
    config = tiny_config(architecture)
    model = VlpClipModel(config).eval()
    inputs = tiny_inputs(config)
    with torch.no_grad():
        out = model(**inputs)
        image_features = model.get_image_features(inputs["pixel_values"])
        text_features = model.get_text_features(inputs["input_ids"])
    assert out.loss is None  # loss only when asked
    assert out.logits_per_image.shape == (4, 4)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())
    torch.testing.assert_close(out.image_embeds, torch.nn.functional.normalize(image_features, dim=-1))
    torch.testing.assert_close(out.text_embeds, torch.nn.functional.normalize(text_features, dim=-1))
    assert not torch.allclose(image_features.norm(dim=-1), torch.ones(4))  # features are returned un-normalised
    expected = model.logit_scale.exp() * out.image_embeds @ out.text_embeds.t()
    torch.testing.assert_close(out.logits_per_image, expected)
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)


def test_loss_only_when_asked_and_matches_symmetric_cross_entropy():
    config = tiny_config()
    model = VlpClipModel(config).train()
    assert model(**tiny_inputs(config)).loss is None
    out = model(**tiny_inputs(config), return_loss=True)
    labels = torch.arange(4)
    expected = (
        torch.nn.functional.cross_entropy(out.logits_per_image, labels)
        + torch.nn.functional.cross_entropy(out.logits_per_text, labels)
    ) / 2
    torch.testing.assert_close(out.loss, expected)
    tuple_out = model.eval()(**tiny_inputs(config), return_loss=True, return_dict=False)
    assert isinstance(tuple_out, tuple) and tuple_out[0].ndim == 0


def test_sdpa_and_eager_agree(architecture):
    config = tiny_config(architecture)
    torch.manual_seed(0)
    sdpa = VlpClipModel(config).eval()
    eager = VlpClipModel(tiny_config(architecture)).eval()
    eager.load_state_dict(sdpa.state_dict())
    eager.set_attn_implementation("eager")
    assert eager.config.text_config._attn_implementation == "eager"
    assert sdpa.config.text_config._attn_implementation == "sdpa"
    inputs = tiny_inputs(config)
    with torch.no_grad():
        a, b = sdpa(**inputs, return_loss=True), eager(**inputs, return_loss=True)
    torch.testing.assert_close(a.logits_per_image, b.logits_per_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_same_loss_and_gradients():
    config = tiny_config()
    torch.manual_seed(0)
    plain = VlpClipModel(config).train()
    checkpointed = VlpClipModel(tiny_config()).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.gradient_checkpointing_enable()
    layers = list(checkpointed.text_model.transformer.encoder.layers) + list(checkpointed.vision_model.transformer.encoder.layers)
    assert all(layer.gradient_checkpointing for layer in layers)
    inputs = tiny_inputs(config)
    losses = []
    for model in (plain, checkpointed):
        loss = model(**inputs, return_loss=True).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name, atol=1e-6, rtol=1e-5)


def test_save_load_round_trip_and_auto_classes(tmp_path, architecture):
    config = tiny_config(architecture)
    model = VlpClipModel(config).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "hf_vlp_clip"
    inputs = tiny_inputs(config)
    for loader in (AutoModel, AutoModelForZeroShotImageClassification, VlpClipModel):
        loaded = loader.from_pretrained(tmp_path, dtype=torch.float32).eval()
        assert type(loaded) is VlpClipModel
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs).logits_per_image, model(**inputs).logits_per_image)


def test_missing_parameters_are_initialised_not_garbage(tmp_path):
    model = VlpClipModel(tiny_config())
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["logit_scale"], weights["vision_model.transformer.class_embedding"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = VlpClipModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert math.isclose(loaded.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    class_embedding = loaded.vision_model.transformer.class_embedding
    assert torch.isfinite(class_embedding).all() and 0.05 < class_embedding.std().item() < 0.5  # width**-0.5 = 0.18


def test_towers_load_alone_from_a_clip_checkpoint(tmp_path):
    config = tiny_config()
    model = VlpClipModel(config).eval()
    model.save_pretrained(tmp_path)
    inputs = tiny_inputs(config)
    vision = VlpClipVisionModelWithProjection.from_pretrained(tmp_path, dtype=torch.float32).eval()
    text = VlpClipTextModelWithProjection.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(vision(inputs["pixel_values"]).embeds, model.get_image_features(inputs["pixel_values"]))
        torch.testing.assert_close(text(inputs["input_ids"]).embeds, model.get_text_features(inputs["input_ids"]))
    assert type(AutoModel.from_config(config.vision_config)) is VlpClipVisionModel


def test_end_of_text_pooling_is_by_id_whatever_the_padding():
    config = tiny_config()
    model = VlpClipModel(config).eval()
    ids = tiny_inputs(config)["input_ids"]
    padded_with_eot = ids.clone()
    padded_with_large_id = ids.clone()
    for row in range(ids.shape[0]):
        end = int((ids[row] == EOT).nonzero()[0])
        padded_with_eot[row, end + 1 :] = EOT
        padded_with_large_id[row, end + 1 :] = EOT - 1  # argmax pooling would pick a pad here if EOT were not the max
    with torch.no_grad():
        reference = model.get_text_features(ids)
        torch.testing.assert_close(model.get_text_features(padded_with_eot), reference)
        torch.testing.assert_close(model.get_text_features(padded_with_large_id), reference)


def test_input_errors_say_what_to_do():
    config = tiny_config()
    model = VlpClipModel(config).eval()
    inputs = tiny_inputs(config)
    no_eot = inputs["input_ids"].clone()
    no_eot[no_eot == EOT] = 5
    with pytest.raises(ValueError, match="end-of-text"):
        model.get_text_features(no_eot)
    with pytest.raises(ValueError, match="context length"):
        model.get_text_features(torch.full((1, 17), EOT))
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model.get_image_features(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="both input_ids and pixel_values"):
        model(input_ids=inputs["input_ids"])


def test_position_embedding_interpolation_for_other_image_sizes():
    model = VlpClipModel(tiny_config()).eval()
    with torch.no_grad():
        features = model.get_image_features(torch.randn(2, 3, 48, 48), interpolate_pos_encoding=True)
        same = model.get_image_features(torch.randn(2, 3, 32, 32), interpolate_pos_encoding=True)
    assert features.shape == same.shape == (2, 24)
    resnet = VlpClipModel(tiny_config("resnet")).eval()
    with torch.no_grad():
        assert resnet.get_image_features(torch.randn(1, 3, 96, 96)).shape == (1, 24)


def test_overfits_eight_pairs():
    torch.manual_seed(0)
    config = tiny_config()
    model = VlpClipModel(config).train()
    inputs = tiny_inputs(config, batch=8, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(**inputs, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    assert loss.item() < 0.05
    assert (logits.argmax(dim=1) == torch.arange(8)).all() and (logits.argmax(dim=0) == torch.arange(8)).all()


def test_image_classification_head_overfits_and_loads_from_clip(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(num_labels=4)
    VlpClipModel(config).save_pretrained(tmp_path)
    model = AutoModelForImageClassification.from_pretrained(tmp_path, dtype=torch.float32)
    assert type(model) is VlpClipForImageClassification
    pixel_values = tiny_inputs(config, batch=8)["pixel_values"]
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(80):
        out = model(pixel_values=pixel_values, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert out.loss.item() < 0.1
    assert (model.eval()(pixel_values=pixel_values).logits.argmax(-1) == labels).all()
    ignored = model(pixel_values=pixel_values, labels=torch.full((8,), -100).index_fill(0, torch.tensor([0]), 0))
    assert torch.isfinite(ignored.loss)


def test_linear_probe_freezes_the_tower():
    config = tiny_config(num_labels=3)
    config.freeze_vision_tower = True
    model = VlpClipForImageClassification(config)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}


@pytest.mark.parametrize(
    "preset, millions",
    [("RN50", 102.0), ("RN101", 119.7), ("ViT-B/32", 151.3), ("ViT-B/16", 149.6), ("ViT-L/14", 427.6), ("ViT-L/14@336px", 427.9)],
)
def test_presets_match_released_parameter_counts(preset, millions):
    config = VlpClipConfig.from_preset(preset)
    with torch.device("meta"):
        model = VlpClipModel(config)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - millions) < 0.15, count


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="ViT-B/16"):
        VlpClipConfig.from_preset("ViT-H/14")
