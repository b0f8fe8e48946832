"""ALBEF model: parity with the original code's recorded outputs (albef_pretrain fixture), contracts, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conversion.convert_albef import convert_albef_checkpoint
from hf_vlp.models.albef import VlpAlbefConfig, VlpAlbefForMaskedLM, VlpAlbefModel
from hf_vlp.modules.text import PostNormBlock
from hf_vlp.modules.transformer import PreNormBlock
from tests.helpers.fixtures import converted_state, fixture_tensors, model_from_state
from tests.helpers.tiny_models import tiny_albef_config, tiny_batch

FIXTURE = "albef_pretrain"
FEATURE_ATOL, LOGIT_ATOL = 1e-5, 1e-4


def converted() -> tuple[dict, dict[str, torch.Tensor]]:
    """The masked-LM head converted without a tokenizer: special-token ids as the original config leaves them."""
    return converted_state(convert_albef_checkpoint, FIXTURE, with_tokenizer=False, head="masked_lm")


def fixture_model(implementation: str = "sdpa") -> VlpAlbefForMaskedLM:
    return model_from_state(VlpAlbefForMaskedLM, converted(), implementation)


def tiny_config(**overrides) -> VlpAlbefConfig:
    return tiny_albef_config(**{"embed_dim": 8, **overrides})


def tiny_inputs(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every row but the first padded from column 4."""
    return tiny_batch(batch, seed, padded_rows=slice(1, None), padded_from=4)


# --------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_parity_with_every_recorded_forward_output(implementation: str) -> None:
    model = fixture_model(implementation)
    albef = VlpAlbefModel(model.config).eval()  # the same towers: every key but the MLM head's
    albef.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("mlm_head.")}, strict=True)
    albef.set_attn_implementation(implementation)
    inputs, expected = fixture_tensors(FIXTURE)
    pixel_values, input_ids, mask = inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        image_embeds = albef.encode_image(pixel_values).last_hidden_state
        text_embeds = albef.encode_text(input_ids, mask).last_hidden_state
        fusion = albef.fuse(text_embeds, image_embeds, mask).last_hidden_state
        full = albef.text_model(input_ids, mask, encoder_hidden_states=image_embeds, mode="full").last_hidden_state
        output = albef(input_ids=input_ids, pixel_values=pixel_values, attention_mask=mask, output_itm=True)
        image_feat = torch.nn.functional.normalize(albef.get_image_features(pixel_values).pooler_output, dim=-1)
        text_feat = torch.nn.functional.normalize(albef.get_text_features(input_ids, mask).pooler_output, dim=-1)
        mlm_logits = model(inputs["mlm_input_ids"], pixel_values, mask).logits
        mlm_from_states = model(inputs["mlm_input_ids"], attention_mask=mask, image_hidden_states=image_embeds).logits
    actual = {
        "image_embeds": image_embeds,
        "text_embeds": text_embeds,
        "fusion_hidden": fusion,
        "multimodal_hidden_full_pass": full,
        "image_feat": image_feat,
        "text_feat": text_feat,
        "sim_i2t": output.logits_per_image,
        "sim_t2i": output.logits_per_text,
        "itm_logits_pos": output.itm_logits,
        "mlm_logits": mlm_logits,
    }
    for name, value in actual.items():
        atol = LOGIT_ATOL if name.startswith(("sim", "itm", "mlm")) else FEATURE_ATOL
        torch.testing.assert_close(value, expected[name], atol=atol, rtol=0, msg=name)
    # the forward's own outputs carry the same tensors
    torch.testing.assert_close(output.image_embeds, expected["image_feat"], atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(output.text_embeds, expected["text_feat"], atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(output.multimodal_output.last_hidden_state, expected["fusion_hidden"], atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(output.vision_model_output.last_hidden_state, expected["image_embeds"], atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(mlm_from_states, mlm_logits, atol=1e-6, rtol=0)
    assert albef.temp.item() == 0.0625  # the checkpoint's value, not the config's initial 0.07


def test_itm_loss_from_the_recorded_hard_negatives() -> None:
    """The original's ``loss_itm`` needs only online towers once its multinomial draws are replayed."""
    albef = fixture_model()
    inputs, expected = fixture_tensors(FIXTURE)
    mask = inputs["attention_mask"]
    neg_image = expected["itm_neg_image_idx_for_text"]  # for text b, its negative image
    neg_text = expected["itm_neg_text_idx_for_image"]  # for image b, its negative text
    with torch.no_grad():
        image_embeds = albef.encode_image(inputs["pixel_values"]).last_hidden_state
        text_embeds = albef.encode_text(inputs["input_ids"], mask).last_hidden_state
        texts = torch.cat([text_embeds, text_embeds, text_embeds[neg_text]])
        masks = torch.cat([mask, mask, mask[neg_text]])
        images = torch.cat([image_embeds, image_embeds[neg_image], image_embeds])
        logits = albef.itm_head(albef.fuse(texts, images, masks).last_hidden_state[:, 0])
    batch = mask.shape[0]
    labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long()
    torch.testing.assert_close(logits[:batch], expected["itm_logits_pos"], atol=LOGIT_ATOL, rtol=0)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(loss, expected["loss_itm"], atol=1e-5, rtol=0)


def test_fixture_config_is_read_from_the_original() -> None:
    config = VlpAlbefConfig.from_dict(converted()[0])
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.patch_size) == (48, 2, 4, 8)
    assert (vision.image_size, vision.layer_norm_eps, vision.intermediate_size) == (32, 1e-6, 192)
    assert (text.hidden_size, text.num_hidden_layers, text.fusion_layer, text.num_attention_heads) == (32, 4, 2, 4)
    assert (text.encoder_width, text.layer_norm_eps, text.vocab_size, text.type_vocab_size) == (48, 1e-12, 64, 2)
    assert (config.embed_dim, config.temp, config.queue_size, config.momentum, config.alpha) == (16, 0.07, 8, 0.995, 0.4)


# --------------------------------------------------------------------------------------------------- contracts


def test_defaults_are_the_papers_base_model() -> None:
    config = VlpAlbefConfig()
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (768, 12, 16, 256)
    assert vision.layer_norm_eps == 1e-6 and text.layer_norm_eps == 1e-12
    assert (text.num_hidden_layers, text.fusion_layer, text.vocab_size, text.encoder_width) == (12, 6, 30522, 768)
    assert (config.embed_dim, config.temp, config.temp_min, config.temp_max) == (256, 0.07, 0.001, 0.5)
    assert (config.queue_size, config.momentum, config.alpha) == (65536, 0.995, 0.4)
    with torch.device("meta"):
        model = VlpAlbefForMaskedLM(config)
    unique = sum(p.numel() for p in model.parameters()) / 1e6  # parameters() counts tied tensors once
    # the original's 419.9M = online towers + momentum copies (+ itm_head and temp, online only)
    assert abs(unique - (419.9 + 0.0015) / 2) < 0.1, unique


def test_forward_contract_and_feature_normalisation() -> None:
    torch.manual_seed(0)
    model = VlpAlbefModel(tiny_config()).eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        out = model(**inputs)
        image_features = model.get_image_features(inputs["pixel_values"]).pooler_output
        text_features = model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output
    assert out.itm_logits is None and out.multimodal_output is None  # fusion only when asked
    assert image_features.shape == text_features.shape == (3, 8)
    torch.testing.assert_close(out.image_embeds, torch.nn.functional.normalize(image_features, dim=-1))
    torch.testing.assert_close(out.text_embeds, torch.nn.functional.normalize(text_features, dim=-1))
    torch.testing.assert_close(out.logits_per_image, out.image_embeds @ out.text_embeds.t() / 0.07)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())
    assert isinstance(model(**inputs, return_dict=False), tuple)


def test_itm_scores_pair_b_with_image_b() -> None:
    torch.manual_seed(0)
    model = VlpAlbefModel(tiny_config()).eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        out = model(**inputs, output_itm=True)
        swapped = {**inputs, "pixel_values": inputs["pixel_values"].flip(0)}
        other = model(**swapped, output_itm=True)
    assert out.itm_logits.shape == (3, 2)
    torch.testing.assert_close(out.itm_logits[1], other.itm_logits[1])  # the middle pair is unchanged by the flip
    assert not torch.allclose(out.itm_logits[0], other.itm_logits[0])


def test_mlm_loss_is_cross_entropy_over_labelled_tokens() -> None:
    torch.manual_seed(0)
    model = VlpAlbefForMaskedLM(tiny_config()).eval()
    inputs = tiny_inputs()
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 2] = inputs["input_ids"][:, 2]
    out = model(**inputs, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, 2], labels[:, 2])
    torch.testing.assert_close(out.loss, expected)
    assert model(**inputs).loss is None


def test_gradient_checkpointing_covers_both_towers() -> None:
    config = tiny_config()
    torch.manual_seed(0)
    plain = VlpAlbefModel(config).train()
    checkpointed = VlpAlbefModel(tiny_config()).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.activation_checkpointing_enable()
    layers = [m for m in checkpointed.modules() if isinstance(m, (PreNormBlock, PostNormBlock))]
    assert len(layers) == 5 and all(layer.gradient_checkpointing for layer in layers)
    inputs = tiny_inputs()
    grads = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # same dropout masks
        out = model(**inputs, output_itm=True)
        (out.logits_per_image.logsumexp(-1).mean() + out.itm_logits.sum()).backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], msg=name, atol=1e-6, rtol=1e-5)


def test_save_load_round_trip_ties_and_base_model_loading(tmp_path: Path) -> None:
    model = fixture_model()
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert "mlm_head.decoder.weight" not in saved  # tied: stored once, as the word embeddings
    inputs, expected = fixture_tensors(FIXTURE)
    loaded = VlpAlbefForMaskedLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert loaded.mlm_head.decoder.weight is loaded.text_model.get_input_embeddings().weight
    base = VlpAlbefModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = loaded(inputs["mlm_input_ids"], inputs["pixel_values"], inputs["attention_mask"]).logits
        output = base(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], output_itm=True)
    torch.testing.assert_close(logits, expected["mlm_logits"], atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(output.itm_logits, expected["itm_logits_pos"], atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(output.logits_per_image, expected["sim_i2t"], atol=LOGIT_ATOL, rtol=0)


def test_missing_temp_is_initialised_from_the_config(tmp_path: Path) -> None:
    VlpAlbefModel(tiny_config(temp=0.05)).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["temp"], weights["vision_model.transformer.class_embedding"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = VlpAlbefModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert loaded.temp.item() == pytest.approx(0.05)
    class_embedding = loaded.vision_model.transformer.class_embedding
    assert torch.isfinite(class_embedding).all() and 0.005 < class_embedding.std().item() < 0.05


def test_input_and_config_errors_say_what_to_do() -> None:
    model = VlpAlbefForMaskedLM(tiny_config()).eval()
    base = VlpAlbefModel(tiny_config()).eval()
    inputs = tiny_inputs()
    with pytest.raises(ValueError, match="both input_ids and pixel_values"):
        base(input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match="2 images and 3 texts"):
        base(inputs["input_ids"], inputs["pixel_values"][:2], output_itm=True)
    with pytest.raises(ValueError, match="exactly one of pixel_values or image_hidden_states"):
        model(inputs["input_ids"])
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        base.get_image_features(torch.randn(1, 3, 24, 24)).pooler_output
    with pytest.raises(Exception, match="temp"):
        tiny_config(temp=0.9)
    with pytest.raises(Exception, match="fusion_layer"):
        VlpAlbefConfig(text_config=dict(num_hidden_layers=4, fusion_layer=6))


def test_towers_run_alone_and_return_requested_states() -> None:
    torch.manual_seed(0)
    model = VlpAlbefModel(tiny_config()).eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        vision = model.vision_model(inputs["pixel_values"], output_hidden_states=True)
        text = model.text_model(inputs["input_ids"], inputs["attention_mask"], mode="text", output_attentions=True)
        full = model.text_model(
            inputs["input_ids"], inputs["attention_mask"], encoder_hidden_states=vision.last_hidden_state,
            return_dict=False,
        )
        out = model(**inputs, output_itm=True, output_hidden_states=True)
    assert vision.last_hidden_state.shape == (3, 5, 24) and len(vision.hidden_states) == 3
    assert len(text.attentions) == 1 and text.attentions[0].shape == (3, 2, 7, 7)  # only the unimodal layer ran
    assert isinstance(full, tuple)
    torch.testing.assert_close(full[0], out.multimodal_output.last_hidden_state, atol=1e-6, rtol=0)
    assert len(out.multimodal_output.hidden_states) == 3  # input + the two fusion layers
