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
from hf_vlp.models.clip import modeling_clip
from hf_vlp.models.clip.modeling_clip import VlpClipTextModel
from tests.helpers.tiny_models import CLIP_EOT as EOT, CLIP_VOCAB, tiny_clip_config as tiny_config, tiny_clip_inputs as tiny_inputs


@pytest.fixture(params=["vit", "resnet"])
def architecture(request):
    return request.param


def test_forward_contract(architecture):
    config = tiny_config(architecture)
    model = VlpClipModel(config).eval()
    inputs = tiny_inputs(config)
    with torch.no_grad():
        out = model(**inputs)
        image_features = model.get_image_features(inputs["pixel_values"]).pooler_output
        text_features = model.get_text_features(inputs["input_ids"]).pooler_output
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
        torch.testing.assert_close(vision(inputs["pixel_values"]).image_embeds, model.get_image_features(inputs["pixel_values"]).pooler_output)
        torch.testing.assert_close(text(inputs["input_ids"]).text_embeds, model.get_text_features(inputs["input_ids"]).pooler_output)
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
        reference = model.get_text_features(ids).pooler_output
        torch.testing.assert_close(model.get_text_features(padded_with_eot).pooler_output, reference)
        torch.testing.assert_close(model.get_text_features(padded_with_large_id).pooler_output, reference)


def test_input_errors_say_what_to_do():
    config = tiny_config()
    model = VlpClipModel(config).eval()
    inputs = tiny_inputs(config)
    no_eot = inputs["input_ids"].clone()
    no_eot[no_eot == EOT] = 5
    with pytest.raises(ValueError, match="end-of-text"):
        model.get_text_features(no_eot).pooler_output
    with pytest.raises(ValueError, match="context length"):
        model.get_text_features(torch.full((1, 17), EOT)).pooler_output
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model.get_image_features(torch.randn(1, 3, 48, 48)).pooler_output
    with pytest.raises(ValueError, match="both input_ids and pixel_values"):
        model(input_ids=inputs["input_ids"])


def test_position_embedding_interpolation_for_other_image_sizes():
    model = VlpClipModel(tiny_config()).eval()
    with torch.no_grad():
        features = model.get_image_features(torch.randn(2, 3, 48, 48), interpolate_pos_encoding=True).pooler_output
        same = model.get_image_features(torch.randn(2, 3, 32, 32), interpolate_pos_encoding=True).pooler_output
    assert features.shape == same.shape == (2, 24)
    resnet = VlpClipModel(tiny_config("resnet")).eval()
    with torch.no_grad():
        assert resnet.get_image_features(torch.randn(1, 3, 96, 96)).pooler_output.shape == (1, 24)


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


# --------------------------------------------------------------------------------------------- output_attentions


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_asking_for_attentions_changes_no_logit(implementation):
    config = tiny_config(attn_implementation=implementation)
    torch.manual_seed(0)
    model = VlpClipModel(config).eval()
    assert model.config.text_config._attn_implementation == implementation
    inputs = tiny_inputs(config)
    with torch.no_grad():
        plain = model(**inputs)
        probed = model(**inputs, output_attentions=True)
        text_plain = model.text_model(inputs["input_ids"])
        text_probed = model.text_model(inputs["input_ids"], output_attentions=True)
    torch.testing.assert_close(probed.logits_per_image, plain.logits_per_image, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(text_probed.last_hidden_state, text_plain.last_hidden_state, atol=1e-6, rtol=1e-5)
    assert text_plain.attentions is None and len(text_probed.attentions) == config.text_config.num_hidden_layers
    for weights in text_probed.attentions:  # the text tower is causal: nothing above the diagonal
        assert weights.shape == (4, 2, 16, 16) and (weights.triu(1) == 0).all()


# --------------------------------------------------------------------------------------------- input embeddings


def test_text_model_with_projection_resizes_its_token_embeddings(tmp_path):
    config = tiny_config()
    torch.manual_seed(0)
    model = VlpClipTextModelWithProjection(config.text_config).eval()
    embeddings = model.get_input_embeddings()
    assert embeddings is model.text_model.transformer.token_embedding
    old_rows = embeddings.weight.detach().clone()
    resized = model.resize_token_embeddings(CLIP_VOCAB + 3)
    assert model.get_input_embeddings() is resized and resized.num_embeddings == CLIP_VOCAB + 3
    assert model.config.vocab_size == CLIP_VOCAB + 3
    torch.testing.assert_close(resized.weight[:CLIP_VOCAB], old_rows)
    input_ids = tiny_inputs(config)["input_ids"]
    input_ids[:, 1] = CLIP_VOCAB + 2  # a new token
    with torch.no_grad():
        embeds = model(input_ids).text_embeds
    assert embeds.shape == (4, 24) and torch.isfinite(embeds).all()
    model.save_pretrained(tmp_path)
    loaded = VlpClipTextModelWithProjection.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert loaded.get_input_embeddings().num_embeddings == CLIP_VOCAB + 3
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).text_embeds, embeds)
    dual = VlpClipModel(config)
    assert dual.get_input_embeddings() is dual.text_model.transformer.token_embedding


def test_vision_towers_return_the_module_that_embeds_the_pixels(architecture):
    config = tiny_config(architecture)
    for model in (VlpClipVisionModel(config.vision_config), VlpClipVisionModelWithProjection(config.vision_config)):
        embedding = model.get_input_embeddings()
        assert isinstance(embedding, torch.nn.Conv2d) and embedding.in_channels == 3
        seen = []
        handle = embedding.register_forward_hook(lambda module, args, output: seen.append(args[0]))
        pixel_values = tiny_inputs(config)["pixel_values"]
        with torch.no_grad():
            model(pixel_values)
        handle.remove()
        assert len(seen) == 1 and torch.equal(seen[0], pixel_values)  # the first layer the pixels go through


# --------------------------------------------------------------------------------------------- image classification


def _constant_classifier(num_labels: int, bias: list[float], **settings) -> VlpClipForImageClassification:
    """A classifier whose logits are ``bias`` for every image (zero weights)."""
    model = VlpClipForImageClassification(tiny_config(num_labels=num_labels, **settings)).eval()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(bias))
    return model


def test_image_classifier_loss_follows_the_problem_type():
    pixel_values = tiny_inputs(tiny_config())["pixel_values"]
    regression = _constant_classifier(1, [0.5])
    assert regression.config.problem_type is None
    loss = regression(pixel_values, labels=torch.tensor([1.0, 0.0, 2.0, 0.5])).loss
    assert math.isclose(loss.item(), (0.25 + 0.25 + 2.25 + 0.0) / 4, rel_tol=1e-6)  # MSE against 0.5
    assert regression.config.problem_type == "regression"

    single = _constant_classifier(4, [0.0, 0.0, 0.0, 0.0])
    loss = single(pixel_values, labels=torch.tensor([0, 3, 1, 2])).loss
    assert math.isclose(loss.item(), math.log(4), rel_tol=1e-6)  # uniform over 4 classes
    assert single.config.problem_type == "single_label_classification"

    multi = _constant_classifier(3, [2.0, 0.0, 0.0])
    loss = multi(pixel_values, labels=torch.tensor([[1.0, 0.0, 1.0]] * 4)).loss
    expected = (math.log1p(math.exp(-2.0)) + math.log(2) + math.log(2)) / 3  # BCE of sigmoid(2) vs 1, sigmoid(0) x2
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    assert multi.config.problem_type == "multi_label_classification"

    # an explicit problem type wins over the labels' dtype: integer multi-hot labels are multi-label targets
    explicit = _constant_classifier(3, [2.0, 0.0, 0.0], problem_type="multi_label_classification")
    loss = explicit(pixel_values, labels=torch.tensor([[1, 0, 1]] * 4)).loss
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)


def test_image_classifier_returns_the_tower_states_and_attentions():
    config = tiny_config(num_labels=3)
    model = VlpClipForImageClassification(config).eval()
    pixel_values = tiny_inputs(config)["pixel_values"]
    with torch.no_grad():
        plain = model(pixel_values)
        out = model(pixel_values, output_hidden_states=True, output_attentions=True)
        tower = model.vision_model(pixel_values, output_hidden_states=True, output_attentions=True)
    assert plain.hidden_states is None and plain.attentions is None
    layers = config.vision_config.num_hidden_layers
    assert len(out.hidden_states) == layers + 1 and len(out.attentions) == layers
    for ours, theirs in zip(out.hidden_states + out.attentions, tower.hidden_states + tower.attentions):
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(out.logits, plain.logits, atol=1e-6, rtol=1e-5)
    model.config.output_hidden_states = True
    with torch.no_grad():
        from_config = model(pixel_values)
    assert len(from_config.hidden_states) == layers + 1 and from_config.attentions is None


# --------------------------------------------------------------------------------------------- initialisation


class WeightlessLinear(torch.nn.Linear):
    """A linear layer whose weight was deleted (``mode="deleted"``) or set to ``None`` (as some quantized or
    parametrized layers hold it elsewhere)."""

    def __init__(self, in_features: int, out_features: int, mode: str = "deleted", bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if mode == "deleted":
            del self.weight
        else:
            self.weight = None


@pytest.mark.parametrize("mode", ["deleted", "none"])
def test_initialisation_skips_linear_layers_without_a_weight(mode, monkeypatch):
    # CLIP's own scheme (projections): the model builds around a weight-less projection
    monkeypatch.setattr(
        modeling_clip, "build_tower_projection",
        lambda config: WeightlessLinear(config.hidden_size, config.projection_dim, mode),
    )
    model = VlpClipModel(tiny_config())
    assert getattr(model.text_projection, "weight", None) is None
    # every scheme, re-run over every module: CLIP's text-layer scheme and transformers' base scheme (vision layers)
    layer = model.text_model.transformer.encoder.layers[0]
    layer.attn.qkv = WeightlessLinear(32, 96, mode, bias=True)
    model.vision_model.transformer.encoder.layers[0].mlp.fc1 = WeightlessLinear(32, 64, mode, bias=True)
    no_bias = torch.nn.Linear(32, 32)
    del no_bias.bias
    model.vision_model.transformer.encoder.layers[1].attn.out_proj = no_bias
    quantized = torch.nn.Linear(32, 32)  # an int8 weight (as a quantized layer holds it) cannot be drawn from a normal
    quantized.weight = torch.nn.Parameter(torch.full((32, 32), 7, dtype=torch.int8), requires_grad=False)
    model.vision_model.transformer.encoder.layers[1].attn.qkv = quantized
    with torch.no_grad():
        layer.attn.qkv.bias.fill_(1.0)
        no_bias.weight.fill_(5.0)
        quantized.bias.fill_(1.0)
    for module in model.modules():
        model._init_weights(module)
    assert (layer.attn.qkv.bias == 0).all()  # the tensors a weight-less layer has are still initialised
    assert no_bias.weight.abs().max() < 1  # normal(0, 0.02)
    assert (quantized.weight == 7).all() and (quantized.bias == 0).all()
    assert getattr(layer.attn.qkv, "weight", None) is None


# --------------------------------------------------------------------------------------------- export / compile


def _tower_cases():
    config = tiny_config()
    inputs = tiny_inputs(config)
    return [
        (VlpClipTextModel(config.text_config).eval(), inputs["input_ids"]),
        (VlpClipVisionModel(config.vision_config).eval(), inputs["pixel_values"]),
    ]


def test_towers_export_and_match_eager():
    for model, inputs in _tower_cases():
        program = torch.export.export(model, (inputs,))
        with torch.no_grad():
            expected, exported = model(inputs), program.module()(inputs)
        torch.testing.assert_close(exported.last_hidden_state, expected.last_hidden_state)
        torch.testing.assert_close(exported.pooler_output, expected.pooler_output)


def test_towers_compile_in_one_graph_and_match_eager():
    for model, inputs in _tower_cases():
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        with torch.no_grad():
            expected, got = model(inputs), compiled(inputs)
        torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state)
        torch.testing.assert_close(got.pooler_output, expected.pooler_output)
    no_eot = _tower_cases()[0][1].clone()
    no_eot[no_eot == EOT] = 5
    with pytest.raises(ValueError, match="end-of-text"):  # eager mode still checks
        _tower_cases()[0][0](no_eot)
