"""Initialising the shared towers from tiny random transformers ViT/DeiT/BERT models reproduces their outputs."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    DeiTConfig,
    DeiTModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from hf_vlp.modules.heads import MaskedLMHead
from hf_vlp.models.blip.modeling_blip_text import MedTextTransformer
from hf_vlp.modules.text import BertStyleTextTransformer
from hf_vlp.modules.transformer import BlockOptions
from hf_vlp.modules.vision import VisionTransformer, interpolate_grid_embeddings
from hf_vlp.utils.tower_init import (
    LoadReport,
    TowerInitError,
    load_text_tower_from_transformers,
    load_vision_tower_from_transformers,
)

WIDTH, HEADS, FFN, LAYERS = 32, 4, 64, 3
IMAGE, PATCH = 32, 8
VOCAB, POSITIONS = 60, 24


def vit_config(config_class=ViTConfig) -> ViTConfig:
    return config_class(
        hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN,
        image_size=IMAGE, patch_size=PATCH, layer_norm_eps=1e-6, num_labels=3,
    )


def bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=POSITIONS,
    )


def build_vision_tower(
    *, image_size: int = IMAGE, width: int = WIDTH, layers: int = LAYERS, heads: int = HEADS, eps: float = 1e-6
) -> VisionTransformer:
    options = BlockOptions(
        hidden_size=width, num_heads=heads, intermediate_size=2 * width, activation="gelu", layer_norm_eps=eps
    )
    return VisionTransformer(
        options, num_layers=layers, image_size=image_size, patch_size=PATCH, patch_bias=True, norm_pre=False,
        final_norm="all",
    ).eval()


def build_text_tower(
    *, fusion_layer: int = LAYERS, vocab: int = VOCAB, layers: int = LAYERS, heads: int = HEADS, type_vocab: int = 2
) -> BertStyleTextTransformer:
    options = BlockOptions(
        hidden_size=WIDTH, num_heads=heads, intermediate_size=FFN, activation="gelu", layer_norm_eps=1e-12
    )
    return BertStyleTextTransformer(
        options, num_layers=layers, fusion_layer=fusion_layer, vocab_size=vocab, max_position_embeddings=POSITIONS,
        type_vocab_size=type_vocab, kv_size=WIDTH,
    ).eval()


def randomised(model, seed: int):
    """Every parameter random (LayerNorms and biases too), so a swapped or skipped tensor changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2 + (parameter == 1).float())
    return model.eval()


def saved(model, tmp_path, name: str):
    directory = tmp_path / name
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def vit() -> ViTModel:
    return randomised(ViTModel(vit_config(), add_pooling_layer=True), 0)


@pytest.fixture(scope="module")
def bert_mlm() -> BertForMaskedLM:
    return randomised(BertForMaskedLM(bert_config()), 1)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def text_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    return ids, mask


# --------------------------------------------------------------------------------------------------- vision


@pytest.mark.parametrize("from_directory", [True, False], ids=["directory", "instance"])
def test_vision_tower_reproduces_vit(vit, pixels, tmp_path, from_directory):
    tower = build_vision_tower()
    report = load_vision_tower_from_transformers(tower, saved(vit, tmp_path, "vit") if from_directory else vit)
    with torch.no_grad():
        ours = tower(pixels).last_hidden_state
        theirs = vit(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert report.not_initialised == [] and report.interpolated == {}
    assert set(report.copied) == set(tower.state_dict())
    # saved files use the serialized names, instances transformers 5's in-memory names
    parts = ("query", "key", "value") if from_directory else ("q", "k", "v")
    template = (
        "encoder.layer.0.attention.attention.{}.weight"
        if from_directory else "layers.0.attention.{}_proj.weight"
    )
    assert report.copied["encoder.layers.0.attn.qkv.weight"] == [template.format(part) for part in parts]
    assert set(report.dropped) == {"pooler.dense.weight", "pooler.dense.bias"}


def test_vision_tower_from_classifier_drops_the_head(vit, pixels, tmp_path):
    classifier = randomised(ViTForImageClassification(vit_config()), 4)
    tower = build_vision_tower()
    report = load_vision_tower_from_transformers(tower, saved(classifier, tmp_path, "vit_cls"))
    with torch.no_grad():
        expected = classifier.vit(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(tower(pixels).last_hidden_state, expected, atol=1e-5, rtol=0)
    assert set(report.dropped) == {"classifier.weight", "classifier.bias"}
    assert "ImageNet classification head" in report.summary()


def test_position_interpolation_for_a_larger_image(vit, tmp_path):
    source = saved(vit, tmp_path, "vit")
    same = build_vision_tower()
    same_report = load_vision_tower_from_transformers(same, source)
    assert same_report.interpolated == {}
    torch.testing.assert_close(same.position_embedding, vit.embeddings.position_embeddings[0], atol=0, rtol=0)

    larger = build_vision_tower(image_size=48)  # 4x4 -> 6x6 patch grid
    report = load_vision_tower_from_transformers(larger, source)
    assert list(report.interpolated) == ["position_embedding"]
    assert "4x4 -> 6x6" in report.interpolated["position_embedding"]
    assert "position_embedding" not in report.copied
    expected = interpolate_grid_embeddings(vit.embeddings.position_embeddings[0].detach(), 1, 4, (6, 6))
    torch.testing.assert_close(larger.position_embedding.detach(), expected, atol=0, rtol=0)
    assert larger.position_embedding.shape == (37, WIDTH)
    # the class-token position is kept as is
    torch.testing.assert_close(larger.position_embedding[0], vit.embeddings.position_embeddings[0, 0], atol=0, rtol=0)
    torch.testing.assert_close(larger.encoder.layers[1].attn.qkv.weight, same.encoder.layers[1].attn.qkv.weight)


def test_deit_distillation_token_is_dropped(tmp_path):
    deit = randomised(DeiTModel(vit_config(DeiTConfig), add_pooling_layer=False), 5)
    tower = build_vision_tower()
    report = load_vision_tower_from_transformers(tower, saved(deit, tmp_path, "deit"))
    positions = deit.embeddings.position_embeddings[0].detach()
    without_distillation = torch.cat([positions[:1], positions[2:]])
    torch.testing.assert_close(tower.position_embedding.detach(), without_distillation, atol=0, rtol=0)
    class_token = deit.embeddings.cls_token.detach().reshape(-1)
    torch.testing.assert_close(tower.class_embedding.detach(), class_token, atol=0, rtol=0)
    assert "embeddings.distillation_token" in report.dropped
    assert "embeddings.position_embeddings[1]" in report.dropped
    assert report.not_initialised == []
    # the blocks are the same function: running DeiT's encoder on our tokens gives our tokens
    pixels = torch.randn(1, 3, IMAGE, IMAGE)
    with torch.no_grad():
        tokens = tower.embed(pixels)
        hidden = tokens
        for layer in deit.layers:
            hidden = layer(hidden)
        torch.testing.assert_close(tower(pixels).last_hidden_state, deit.layernorm(hidden), atol=1e-5, rtol=0)


def test_vision_architecture_mismatch_names_both_values(vit):
    with pytest.raises(TowerInitError, match=r"hidden_size: tower has 48, source has 32"):
        load_vision_tower_from_transformers(build_vision_tower(width=48), vit)
    with pytest.raises(TowerInitError, match=r"num_hidden_layers: tower has 2, source has 3"):
        load_vision_tower_from_transformers(build_vision_tower(layers=2), vit)
    with pytest.raises(TowerInitError, match=r"num_attention_heads: tower has 8, source has 4"):
        load_vision_tower_from_transformers(build_vision_tower(heads=8), vit)


def test_vision_loader_rejects_other_models(bert_mlm, tmp_path):
    with pytest.raises(TowerInitError, match=r"'bert' model"):
        load_vision_tower_from_transformers(build_vision_tower(), bert_mlm)
    with pytest.raises(TowerInitError, match="neither a local model directory"):
        load_vision_tower_from_transformers(build_vision_tower(), tmp_path / "missing")


def test_eps_difference_is_noted(vit):
    report = load_vision_tower_from_transformers(build_vision_tower(eps=1e-12), vit)
    assert any("eps differs" in note for note in report.notes)


# --------------------------------------------------------------------------------------------------- text


@pytest.mark.parametrize("from_directory", [True, False], ids=["directory", "instance"])
def test_text_tower_reproduces_bert(text_batch, tmp_path, from_directory):
    bert = randomised(BertModel(bert_config()), 6)
    tower = build_text_tower()
    report = load_text_tower_from_transformers(tower, saved(bert, tmp_path, "bert") if from_directory else bert)
    ids, mask = text_batch
    with torch.no_grad():
        ours = tower(ids, attention_mask=mask, mode="text").last_hidden_state
        theirs = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert report.not_initialised == []
    assert set(report.copied) == set(tower.state_dict())
    assert report.copied["encoder.layers.2.norm1.weight"] == ["encoder.layer.2.attention.output.LayerNorm.weight"]
    assert set(report.dropped) == {"pooler.dense.weight", "pooler.dense.bias"}


def test_fusion_layers_get_bert_weights_and_fresh_cross_attention(bert_mlm, text_batch, tmp_path):
    tower = build_text_tower(fusion_layer=1)
    fresh_cross = tower.encoder.layers[2].cross_attn.q.weight.detach().clone()
    report = load_text_tower_from_transformers(tower, saved(bert_mlm, tmp_path, "bert_mlm"))
    bert = bert_mlm.bert
    for index in (1, 2):  # fusion layers: BERT layer of the same index
        ours, theirs = tower.encoder.layers[index], bert.encoder.layer[index]
        query, key, value = ours.attn.qkv.weight.chunk(3)
        torch.testing.assert_close(key, theirs.attention.self.key.weight, atol=0, rtol=0)
        torch.testing.assert_close(ours.mlp.fc2.bias, theirs.output.dense.bias, atol=0, rtol=0)
        torch.testing.assert_close(ours.norm2.weight, theirs.output.LayerNorm.weight, atol=0, rtol=0)
    torch.testing.assert_close(tower.encoder.layers[2].cross_attn.q.weight, fresh_cross, atol=0, rtol=0)
    cross_keys = {
        f"encoder.layers.{i}.{name}"
        for i in (1, 2)
        for name in ("cross_attn.q.weight", "cross_attn.q.bias", "cross_attn.kv.weight", "cross_attn.kv.bias",
                     "cross_attn.out_proj.weight", "cross_attn.out_proj.bias", "norm_cross.weight", "norm_cross.bias")
    }
    assert set(report.not_initialised) == cross_keys
    assert "encoder.layers.{1-2}.cross_attn.q.weight" in report.summary()
    head_keys = ("bias", "transform.dense.weight", "transform.dense.bias", "transform.LayerNorm.weight")
    assert set(report.dropped) == {f"cls.predictions.{name}" for name in (*head_keys, "transform.LayerNorm.bias")}
    ids, mask = text_batch
    with torch.no_grad():
        ours = tower(ids, attention_mask=mask, mode="text").last_hidden_state
        theirs = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("from_directory", [True, False], ids=["directory", "instance"])
def test_mlm_head_reproduces_bert_logits(bert_mlm, text_batch, tmp_path, from_directory):
    tower = build_text_tower()
    head = MaskedLMHead(WIDTH, VOCAB, activation="gelu", layer_norm_eps=1e-12).eval()
    source = saved(bert_mlm, tmp_path, "bert_mlm") if from_directory else bert_mlm
    report = load_text_tower_from_transformers(tower, source, mlm_head=head)
    ids, mask = text_batch
    with torch.no_grad():
        ours = head(tower(ids, attention_mask=mask, mode="text").last_hidden_state)
        theirs = bert_mlm(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert report.not_initialised == []
    assert "mlm_head.decoder.bias" in report.copied and "mlm_head.norm.weight" in report.copied
    expected_origin = "tied decoder" if from_directory else "cls.predictions.decoder.weight"
    assert expected_origin in report.copied["mlm_head.decoder.weight"][0]


def test_larger_vocabulary_keeps_its_extra_rows(bert_mlm):
    tower = build_text_tower(vocab=VOCAB + 2)  # BLIP adds [DEC] and [ENC]
    head = MaskedLMHead(WIDTH, VOCAB + 2)
    extra_rows = tower.embeddings.word_embeddings.weight[VOCAB:].detach().clone()
    report = load_text_tower_from_transformers(tower, bert_mlm, mlm_head=head)
    vocabulary_keys = {"embeddings.word_embeddings.weight", "mlm_head.decoder.weight", "mlm_head.decoder.bias"}
    assert set(report.resized) == vocabulary_keys
    assert f"first {VOCAB} of {VOCAB + 2} rows" in report.resized["embeddings.word_embeddings.weight"]
    weights = tower.embeddings.word_embeddings.weight.detach()
    torch.testing.assert_close(weights[:VOCAB], bert_mlm.bert.embeddings.word_embeddings.weight, atol=0, rtol=0)
    torch.testing.assert_close(weights[VOCAB:], extra_rows, atol=0, rtol=0)


def test_tower_without_token_types_drops_them(bert_mlm):
    report = load_text_tower_from_transformers(build_text_tower(type_vocab=0), bert_mlm)
    assert report.dropped["bert.embeddings.token_type_embeddings.weight"] == "the tower has no token-type embeddings"


def test_text_architecture_mismatch_names_both_values(bert_mlm):
    with pytest.raises(TowerInitError, match=r"num_hidden_layers: tower has 4, source has 3"):
        load_text_tower_from_transformers(build_text_tower(layers=4, fusion_layer=4), bert_mlm)
    with pytest.raises(TowerInitError, match=r"num_attention_heads: tower has 2, source has 4"):
        load_text_tower_from_transformers(build_text_tower(heads=2), bert_mlm)
    with pytest.raises(TowerInitError, match=rf"tower has {VOCAB - 1} tokens, .* has {VOCAB}"):
        load_text_tower_from_transformers(build_text_tower(vocab=VOCAB - 1), bert_mlm)


def test_report_summary_lists_each_section():
    report = LoadReport(
        "src",
        copied={"a": ["x"]},
        interpolated={"position_embedding": "4x4 -> 6x6"},
        dropped={"pooler.dense.weight": "pooler", "pooler.dense.bias": "pooler"},
        not_initialised=[f"encoder.layers.{i}.cross_attn.q.weight" for i in (3, 4, 5)],
    )
    summary = report.summary()
    assert summary.splitlines()[0] == (
        "Initialised from src: 1 tensors copied, 1 interpolated, 0 resized, 2 source tensors dropped, "
        "3 left as initialised."
    )
    assert "interpolated position_embedding: 4x4 -> 6x6" in summary
    assert "dropped pooler.dense.weight, pooler.dense.bias: pooler" in summary
    assert "left as initialised: encoder.layers.{3-5}.cross_attn.q.weight" in summary


# --------------------------------------------------------------------------------------------------- MED (BLIP)


def build_med_tower(roles: tuple[str, ...]) -> MedTextTransformer:
    options = BlockOptions(hidden_size=WIDTH, num_heads=HEADS, intermediate_size=FFN, activation="gelu", layer_norm_eps=1e-12)
    return MedTextTransformer(
        options, num_layers=LAYERS, vocab_size=VOCAB + 2, max_position_embeddings=POSITIONS, kv_size=WIDTH, roles=roles
    ).eval()


@pytest.mark.parametrize("roles", [("encoder", "decoder"), ("decoder",)], ids=["encoder+decoder", "decoder-only"])
def test_med_self_attentions_all_start_from_bert(bert_mlm, text_batch, roles):
    """BLIP loads bert-base into its encoder and its decoder: every self-attention the MED holds gets BERT's, as a
    separate tensor; FFN and embeddings are the shared ones; cross-attention stays fresh."""
    tower = build_med_tower(roles)
    report = load_text_tower_from_transformers(tower, bert_mlm, mlm_head=MaskedLMHead(WIDTH, VOCAB + 2))
    for index, theirs in enumerate(bert_mlm.bert.encoder.layer):
        ours = tower.encoder.layers[index]
        qkv = torch.cat([theirs.attention.self.query.weight, theirs.attention.self.key.weight,
                         theirs.attention.self.value.weight])
        torch.testing.assert_close(ours.causal_attn.qkv.weight, qkv, atol=0, rtol=0)
        torch.testing.assert_close(ours.norm_causal.weight, theirs.attention.output.LayerNorm.weight, atol=0, rtol=0)
        torch.testing.assert_close(ours.mlp.fc1.weight, theirs.intermediate.dense.weight, atol=0, rtol=0)
        if "encoder" in roles:
            torch.testing.assert_close(ours.attn.qkv.weight, qkv, atol=0, rtol=0)
            assert ours.attn.qkv.weight.data_ptr() != ours.causal_attn.qkv.weight.data_ptr()
    assert "encoder.layers.0.causal_attn.qkv.weight" in report.copied
    assert ("encoder.layers.0.attn.qkv.weight" in report.copied) == ("encoder" in roles)
    assert all("cross_attn" in key or "norm_cross" in key for key in report.not_initialised)
    assert len(report.not_initialised) == 8 * LAYERS
    if "encoder" in roles:  # the bidirectional self-attention reproduces BERT's first layer (no token types: add row 0)
        ids, mask = text_batch
        with torch.no_grad():
            tower.embeddings.word_embeddings.weight[:VOCAB] += bert_mlm.bert.embeddings.token_type_embeddings.weight[0]
            ours = tower(ids, mask, mode="text").last_hidden_state
            theirs = bert_mlm.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        keep = mask.bool()
        torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-5, rtol=0)
