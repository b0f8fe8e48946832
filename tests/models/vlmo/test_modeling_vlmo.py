"""VLMo against the original (vlmo fixture: microsoft/unilm's VLMo with random weights): every recorded tensor of the
three modes and the heads, plus the model's own behaviour (modes, routing, lengths, interpolation, errors)."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError

from hf_vlp.models.vlmo import (
    VlpVlmoConfig,
    VlpVlmoForMaskedLM,
    VlpVlmoForQuestionAnswering,
    VlpVlmoForVisualReasoning,
    VlpVlmoModel,
)
from hf_vlp.models.vlmo.modeling_vlmo_pretraining import VlpVlmoForImageTextRetrieval, VlpVlmoForPretraining
from hf_vlp.objectives.losses import soft_target_bce_loss
from tests.helpers.fixtures import fixture_tensors
from tests.helpers.vlmo import fixture_vlmo, tiny_vlmo_batch, tiny_vlmo_config

FEATURES_ATOL = 1e-5
LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module")
def recorded() -> tuple[dict, dict]:
    return fixture_tensors("vlmo")


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = FEATURES_ATOL) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-5)


def test_dual_encoder_matches_original(recorded: tuple[dict, dict]) -> None:
    inputs, outputs = recorded
    model = fixture_vlmo(VlpVlmoModel)
    with torch.no_grad():
        image = model.encode_image(inputs["pixel_values"])
        text = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        result = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                       attention_mask=inputs["attention_mask"])
        image_features = model.get_image_features(inputs["pixel_values"]).pooler_output
    close(image.last_hidden_state, outputs["image_feats"])
    close(text.last_hidden_state, outputs["text_feats"])
    close(result.image_embeds, outputs["image_embeds_itc"])
    close(result.text_embeds, outputs["text_embeds_itc"])
    close(torch.nn.functional.normalize(image_features, dim=-1), outputs["image_embeds_itc"])
    close(result.logits_per_image, outputs["itc_logits_per_image"], LOGITS_ATOL)
    close(result.logits_per_text, outputs["itc_logits_per_text"], LOGITS_ATOL)
    close(model.logit_scale.exp(), outputs["itc_logit_scale_exp"])
    close(result.image_embeds @ result.text_embeds.T, outputs["retrieval_scores"])


def test_fusion_matches_original(recorded: tuple[dict, dict]) -> None:
    inputs, outputs = recorded
    model = fixture_vlmo(VlpVlmoModel)
    with torch.no_grad():
        fused = model.get_multimodal_features(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
    length = inputs["input_ids"].shape[1]
    close(fused.last_hidden_state[:, :length], outputs["fused_text_feats"])
    close(fused.last_hidden_state[:, length:], outputs["fused_image_feats"])
    close(fused.last_hidden_state[:, 0], outputs["fused_cls_hidden"])
    close(fused.pooler_output, outputs["fused_pooled"])


def test_pretraining_matches_original(recorded: tuple[dict, dict]) -> None:
    inputs, outputs = recorded
    model = fixture_vlmo(VlpVlmoForPretraining)
    with torch.no_grad():
        result = model(
            inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"],
            mlm_input_ids=inputs["mlm_input_ids"], mlm_labels=inputs["mlm_labels"],
            generator=torch.Generator().manual_seed(0),
        )
        fused = model.vlmo.encode_fused(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"])
    close(result.vl_image_embeds, outputs["image_embeds_itc_vl"])
    close(result.vl_text_embeds, outputs["text_embeds_itc_vl"])
    close(result.vl_logits_per_image, outputs["itc_vl_logits_per_image"], LOGITS_ATOL)
    close(model.logit_vl_scale.exp(), outputs["itc_vl_logit_scale_exp"])
    close(result.loss_itc, outputs["itc_loss"], LOGITS_ATOL)
    close(result.mlm_logits, outputs["mlm_logits"], LOGITS_ATOL)
    close(model.config.mlm_weight * result.loss_mlm, outputs["mlm_loss"], LOGITS_ATOL)
    close(result.itm_logits[:3], outputs["itm_logits"], LOGITS_ATOL)
    close(model.itm_head(fused.pooler_output), outputs["itm_logits"], LOGITS_ATOL)
    # every negative is another example's, and the ITM rows are labelled 1 / 0 / 0
    batch = inputs["input_ids"].shape[0]
    own = torch.arange(batch)
    assert not bool((result.itm_negative_image_indices == own).any())
    assert not bool((result.itm_negative_text_indices == own).any())
    assert result.itm_labels.tolist() == [1] * batch + [0] * (2 * batch)
    expected = result.loss_itc + result.loss_itm + 0.25 * result.loss_mlm
    close(result.loss, expected)


def test_masked_lm_matches_original(recorded: tuple[dict, dict]) -> None:
    inputs, outputs = recorded
    model = fixture_vlmo(VlpVlmoForMaskedLM)
    with torch.no_grad():
        result = model(inputs["mlm_input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                       labels=inputs["mlm_labels"])
    close(result.logits, outputs["mlm_logits"], LOGITS_ATOL)
    close(0.25 * result.loss, outputs["mlm_loss"], LOGITS_ATOL)


def test_question_answering_matches_original(recorded: tuple[dict, dict]) -> None:
    inputs, outputs = recorded
    model = fixture_vlmo(VlpVlmoForQuestionAnswering)
    with torch.no_grad():
        result = model(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                       labels=inputs["vqa_targets"])
    close(result.logits, outputs["vqa_logits"], LOGITS_ATOL)
    close(result.loss, outputs["vqa_loss"], LOGITS_ATOL)
    close(soft_target_bce_loss(result.logits, inputs["vqa_targets"]), outputs["vqa_loss"], LOGITS_ATOL)


def test_visual_reasoning_matches_original(recorded: tuple[dict, dict]) -> None:
    inputs, outputs = recorded
    model = fixture_vlmo(VlpVlmoForVisualReasoning)
    with torch.no_grad():
        result = model(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                       pixel_values_2=inputs["pixel_values_2"], labels=inputs["nlvr2_labels"])
    close(result.logits, outputs["nlvr2_logits"], LOGITS_ATOL)
    close(result.loss, outputs["nlvr2_loss"], LOGITS_ATOL)


def test_retrieval_scores_match_original(recorded: tuple[dict, dict]) -> None:
    inputs, outputs = recorded
    model = fixture_vlmo(VlpVlmoForImageTextRetrieval).eval()
    scores = model.rank(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
    close(scores.similarities, outputs["retrieval_scores"])
    # re-ranking adds each candidate's fused ITM match logit to its cosine
    reranked = model.rank(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], k=3)
    with torch.no_grad():
        pairs = model.vlmo.encode_fused(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"])
        match = model.itm_head(pairs.pooler_output)[:, 1]
    close(reranked.image_to_text.diagonal(), outputs["retrieval_scores"].diagonal() + match, LOGITS_ATOL)


# ---------------------------------------------------------------------------------------------------- behaviour


def test_padding_does_not_change_real_tokens() -> None:
    """The split between text and image follows the given text length, so padding to max_text_length or not gives
    the same states for the real tokens (the original always pads)."""
    model = VlpVlmoModel(tiny_vlmo_config()).eval()
    batch = tiny_vlmo_batch(batch=2)
    length = int(batch["attention_mask"].sum(1).max())
    with torch.no_grad():
        full = model.encode_fused(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
        cut = model.encode_fused(batch["input_ids"][:, :length], batch["attention_mask"][:, :length],
                                 batch["pixel_values"])
        text_full = model.encode_text(batch["input_ids"], batch["attention_mask"])
        text_cut = model.encode_text(batch["input_ids"][:, :length], batch["attention_mask"][:, :length])
    close(cut.pooler_output, full.pooler_output)
    close(cut.last_hidden_state[:, length:], full.last_hidden_state[:, batch["input_ids"].shape[1]:])
    close(text_cut.last_hidden_state[:, 0], text_full.last_hidden_state[:, 0])


def test_modes_route_tokens_to_their_experts() -> None:
    """Image-only passes never read the L-FFN or VL-FFN, text-only ones never the V-FFN or VL-FFN, and the fusion's
    lower blocks send each token to its modality's expert."""
    config = tiny_vlmo_config()
    model = VlpVlmoModel(config).eval()
    batch = tiny_vlmo_batch(batch=2)
    with torch.no_grad():
        image = model.encode_image(batch["pixel_values"]).last_hidden_state
        text = model.encode_text(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        fused = model.encode_fused(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).pooler_output
        for layer in model.encoder.layers:
            for name, parameter in layer.mlp["text"].named_parameters():
                parameter.add_(1.0)
        image_after = model.encode_image(batch["pixel_values"]).last_hidden_state
        text_after = model.encode_text(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        fused_after = model.encode_fused(
            batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
        ).pooler_output
    assert torch.equal(image, image_after)
    assert not torch.allclose(text, text_after)
    assert not torch.allclose(fused, fused_after)
    assert [layer.has_vl_expert for layer in model.encoder.layers] == [
        index >= config.vl_ffn_start_layer for index in range(config.num_hidden_layers)
    ]


def test_other_image_size_interpolates_positions() -> None:
    """A larger image than the config's (VQA at 480 px after 224 px pre-training) runs with the relative-position
    table's patch rows interpolated; the table itself stays as learned."""
    for preset in ("relative", "absolute"):
        config = tiny_vlmo_config(position_embedding_type=preset)
        model = VlpVlmoForQuestionAnswering(config).eval()
        batch = tiny_vlmo_batch(batch=2, image_size=2 * config.image_size)
        with torch.no_grad():
            logits = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).logits
        assert logits.shape == (2, config.num_labels) and torch.isfinite(logits).all()


def test_presets() -> None:
    base_plus = VlpVlmoConfig.from_preset("base_plus")
    assert (base_plus.hidden_size, base_plus.num_attention_heads) == (544, 16)
    assert base_plus.hidden_size // base_plus.num_attention_heads == 34
    assert base_plus.layer_scale_init_value is None and not base_plus.uses_relative_positions
    large = VlpVlmoConfig.from_preset("large")
    assert (large.hidden_size, large.num_hidden_layers, large.vl_ffn_start_layer) == (1024, 24, 21)
    base = VlpVlmoConfig()
    assert (base.vl_ffn_start_layer, base.max_text_length, base.relative_position_text_length) == (10, 40, 196)
    with pytest.raises(ValueError, match="Unknown VLMo preset"):
        VlpVlmoConfig.from_preset("huge")


def test_base_plus_has_no_layer_scale_or_relative_table() -> None:
    model = VlpVlmoModel(tiny_vlmo_config(position_embedding_type="absolute", layer_scale_init_value=None))
    names = set(model.state_dict())
    assert "relative_position_bias.table" not in names
    assert "image_embeddings.position_embedding" in names and "text_embeddings.position_embeddings.weight" in names
    assert not any("layer_scale" in name for name in names)


def test_errors_name_the_problem() -> None:
    config = tiny_vlmo_config()
    model = VlpVlmoModel(config).eval()
    batch = tiny_vlmo_batch(batch=2)
    too_long = torch.ones(2, config.max_text_length + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="max_text_length"):
        model.encode_text(too_long)
    with pytest.raises(ValueError, match="input_ids and pixel_values"):
        model(input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="pairs"):
        model.encode_fused(batch["input_ids"], batch["attention_mask"], batch["pixel_values"][:1])
    with pytest.raises(StrictDataclassClassValidationError, match="vl_ffn_start_layer"):
        tiny_vlmo_config(vl_ffn_start_layer=9)
    with pytest.raises(StrictDataclassClassValidationError, match="relative_position_text_length"):
        tiny_vlmo_config(relative_position_text_length=4)
    reasoning = VlpVlmoForVisualReasoning(config)
    with pytest.raises(ValueError, match="pixel_values_2"):
        reasoning(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])


def test_second_image_row_starts_as_image_row(tmp_path) -> None:
    """A pre-trained checkpoint (two modality rows) loads into the NLVR2 head, whose second-image row starts as a copy
    of the image row, as the original initialises its third row."""
    VlpVlmoForPretraining(tiny_vlmo_config()).save_pretrained(tmp_path)
    reasoning = VlpVlmoForVisualReasoning.from_pretrained(tmp_path)
    torch.testing.assert_close(
        reasoning.second_image_modality_embedding.detach(), reasoning.vlmo.modality_embeddings.weight[1].detach()
    )
