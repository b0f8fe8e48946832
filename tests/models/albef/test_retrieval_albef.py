"""ALBEF retrieval head: parity with the original's recorded fine-tuning step and gallery scoring (albef_retrieval
fixture), image-id positives and the id queue, Trainer overfitting, save/load round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from conversion.convert_albef import convert_albef_checkpoint
from hf_vlp.models.albef import (
    VlpAlbefConfig,
    VlpAlbefForImageTextRetrieval,
    VlpAlbefForPretraining,
    VlpAlbefModel,
    VlpAlbefRetrievalFeatures,
)
from hf_vlp.evaluation.retrieval import recall_at_k_from_scores
from tests.helpers import momentum_checks as checks
from tests.helpers.fixtures import converted_state, fixture_tensors, model_from_state
from tests.helpers.tiny_models import NO_DROPOUT, tiny_albef_config, tiny_captions

FIXTURE = "albef_retrieval"
FEATURE_ATOL, LOGIT_ATOL = 1e-5, 1e-4
ALPHA, K_TEST = 0.4, 2  # the fixture's alpha and k_test


def converted() -> tuple[dict, dict[str, torch.Tensor]]:
    return converted_state(convert_albef_checkpoint, FIXTURE, VlpAlbefForImageTextRetrieval)


def fixture_model() -> VlpAlbefForImageTextRetrieval:
    return model_from_state(VlpAlbefForImageTextRetrieval, converted())


def recorded_step_inputs() -> dict[str, torch.Tensor]:
    """The fixture's batch with its image ids plus the original forward's hard-negative draws."""
    inputs, _ = fixture_tensors(FIXTURE)
    return {**checks.recorded_itm_step_inputs(FIXTURE), "image_ids": inputs["idx"]}


def tiny_config(**overrides) -> VlpAlbefConfig:
    """Dropout-free; 8-dim features, queues of 16."""
    return tiny_albef_config(text=NO_DROPOUT, **{"embed_dim": 8, "queue_size": 16, **overrides})


def tiny_batch(batch: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """``batch`` captions of ``batch // 2`` images: captions 2i and 2i+1 describe image i (same pixels, same id)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids, attention_mask = tiny_captions(generator, batch)
    images = torch.randn(batch // 2, 3, 16, 16, generator=generator)
    image_ids = torch.arange(batch) // 2 + 10 * seed
    return {
        "input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": images[torch.arange(batch) // 2],
        "image_ids": image_ids,
    }


# --------------------------------------------------------------------------------------------------- parity


def test_parity_towers_features_similarities_and_positive_itm() -> None:
    model = fixture_model()
    inputs, expected = fixture_tensors(FIXTURE)
    albef = model
    with torch.no_grad():
        image_states = albef.encode_image(inputs["pixel_values"]).last_hidden_state
        text_states = albef.encode_text(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state
        fusion = albef.fuse(text_states, image_states, inputs["attention_mask"]).last_hidden_state
        out = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
    for name, value in {
        "image_embeds": image_states, "text_embeds": text_states, "fusion_hidden": fusion,
        "image_feat": out.image_embeds, "text_feat": out.text_embeds,
    }.items():
        torch.testing.assert_close(value, expected[name], atol=FEATURE_ATOL, rtol=0, msg=name)
    for name, value in {
        "sim_i2t": out.image_embeds @ out.text_embeds.T / albef.temp,
        "sim_t2i": out.text_embeds @ out.image_embeds.T / albef.temp,
        "itm_logits_pos": out.itm_logits,
    }.items():
        torch.testing.assert_close(value, expected[name], atol=LOGIT_ATOL, rtol=0, msg=name)
    # no image ids: no loss, no negatives, no queue update
    assert out.loss is None and out.itm_logits.shape == (4, 2) and out.itm_negative_image_indices is None
    assert int(model.image_queue.ptr) == 0


def test_parity_one_fine_tuning_step_losses_and_queues() -> None:
    """EMA update, then the forward with the recorded draws: losses and all three queues as recorded."""
    model = fixture_model()
    _, expected = fixture_tensors(FIXTURE)
    checks.ema_step(model)
    with torch.no_grad():
        out = model(**recorded_step_inputs(), alpha=ALPHA, update_queues=True)
    torch.testing.assert_close(out.loss_itc, expected["loss_ita"], atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(out.loss_itm, expected["loss_itm"], atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(out.loss, out.loss_itc + out.loss_itm)
    torch.testing.assert_close(model.image_queue.queue, expected["image_queue_after"], atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(model.text_queue.queue, expected["text_queue_after"], atol=FEATURE_ATOL, rtol=0)
    assert torch.equal(model.idx_queue.queue, expected["idx_queue_after"])
    ptr = int(expected["queue_ptr_after"])
    assert int(model.image_queue.ptr) == int(model.text_queue.ptr) == int(model.idx_queue.ptr) == ptr
    assert out.itm_logits.shape == (12, 2) and out.itm_labels.tolist() == [1] * 4 + [0] * 8


def test_queue_entries_with_the_same_image_id_are_positives() -> None:
    """The checkpoint's idx_queue holds ids 7 and 3 (slots 0 and 2): without them the ITC loss changes."""
    model = fixture_model()
    checks.ema_step(model)
    with torch.no_grad():
        with_queue_ids = model(**recorded_step_inputs(), alpha=0.0).loss_itc
        model.idx_queue.queue.fill_(-100)
        without = model(**recorded_step_inputs(), alpha=0.0).loss_itc
    assert not torch.allclose(with_queue_ids, without)


def test_seeded_forward_replays_the_originals_hard_negatives() -> None:
    inputs, expected = fixture_tensors(FIXTURE)
    out = checks.assert_seeded_forward_replays_the_recorded_negatives(
        fixture_model(), FIXTURE, image_ids=inputs["idx"], alpha=ALPHA
    )
    torch.testing.assert_close(out.loss_itm, expected["loss_itm"], atol=LOGIT_ATOL, rtol=0)


def test_parity_gallery_scores_itc_top_k_then_itm() -> None:
    model = fixture_model()
    inputs, expected = fixture_tensors(FIXTURE)
    scores = model.rank(inputs["gallery_pixel_values"], inputs["gallery_input_ids"], inputs["gallery_attention_mask"], k=K_TEST)
    torch.testing.assert_close(scores.similarities, expected["gallery_sims_matrix"], atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(scores.image_to_text, expected["gallery_score_matrix_i2t"], atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(scores.text_to_image, expected["gallery_score_matrix_t2i"], atol=LOGIT_ATOL, rtol=0)
    assert int((scores.image_to_text == -100).sum()) == 3 * (5 - K_TEST)
    # chunked encoding gives the same scores; k above the gallery size scores everything
    images = VlpAlbefRetrievalFeatures.cat([model.encode_images(inputs["gallery_pixel_values"][i : i + 2]) for i in (0, 2)])
    texts = VlpAlbefRetrievalFeatures.cat(
        [model.encode_texts(inputs["gallery_input_ids"][i : i + 3], inputs["gallery_attention_mask"][i : i + 3]) for i in (0, 3)]
    )
    chunked = model.score_matrices(images, texts, k=K_TEST)
    torch.testing.assert_close(chunked.image_to_text, scores.image_to_text, atol=1e-5, rtol=0)
    everything = model.score_matrices(images, texts, k=100)
    assert not (everything.image_to_text == -100).any() and not (everything.text_to_image == -100).any()
    with pytest.raises(ValueError, match="k .* must be >= 1"):
        model.score_matrices(images, texts, k=0)


def per_query_scores(
    model: VlpAlbefForImageTextRetrieval, images: VlpAlbefRetrievalFeatures, texts: VlpAlbefRetrievalFeatures, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original ``evaluation()`` loop: one fusion call per query over its top-k ITC candidates."""
    similarities = images.embeds @ texts.embeds.T
    image_to_text = torch.full_like(similarities, -100.0)
    text_to_image = torch.full_like(similarities.T, -100.0)
    albef = model
    for row in range(similarities.shape[0]):
        top = similarities[row].topk(min(k, similarities.shape[1])).indices
        image = images.hidden_states[row].expand(len(top), -1, -1)
        fused = albef.fuse(texts.hidden_states[top], image, texts.attention_mask[top]).last_hidden_state
        image_to_text[row, top] = albef.itm_head(fused[:, 0])[:, 1]
    for row in range(similarities.shape[1]):
        top = similarities[:, row].topk(min(k, similarities.shape[0])).indices
        text, mask = texts.hidden_states[row].expand(len(top), -1, -1), texts.attention_mask[row].expand(len(top), -1)
        fused = albef.fuse(text, images.hidden_states[top], mask).last_hidden_state
        text_to_image[row, top] = albef.itm_head(fused[:, 0])[:, 1]
    return image_to_text, text_to_image


@pytest.mark.parametrize("k", [3, 100])
def test_batched_itm_rerank_equals_one_fusion_call_per_query(k: int) -> None:
    torch.manual_seed(0)
    model = VlpAlbefForImageTextRetrieval(tiny_config()).eval()
    batch = tiny_batch(10, seed=1)  # 10 captions with two padding lengths, 5 distinct images
    with torch.no_grad():
        images = model.encode_images(batch["pixel_values"][::2])
        texts = model.encode_texts(batch["input_ids"], batch["attention_mask"])
        expected_i2t, expected_t2i = per_query_scores(model, images, texts, k)
    for batch_size in (1, 3, 64):  # one query per call, chunks with a ragged last one, everything at once
        scores = model.score_matrices(images, texts, k=k, batch_size=batch_size)
        torch.testing.assert_close(scores.image_to_text, expected_i2t, atol=1e-5, rtol=0)
        torch.testing.assert_close(scores.text_to_image, expected_t2i, atol=1e-5, rtol=0)
        assert int((scores.image_to_text != -100).sum()) == 5 * min(k, 10)
        assert int((scores.text_to_image != -100).sum()) == 10 * min(k, 5)
    with pytest.raises(ValueError, match="batch_size"):
        model.score_matrices(images, texts, k=k, batch_size=0)


def test_recall_at_k_from_scores_follows_itm_eval() -> None:
    image_to_text = torch.tensor([[0.9, 0.1, 0.5, -100.0], [0.2, 0.3, 0.8, 0.7]])
    text_to_image = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    result = recall_at_k_from_scores(image_to_text, text_to_image, [[0, 1], [2, 3]], [0, 0, 1, 1], ks=(1, 2))
    # image 0: caption 0 first; image 1: caption 2 first -> txt_r1 100. text 1 ranks image 0 first (correct)
    assert result["txt_r1"] == 100.0 and result["img_r1"] == 100.0
    result = recall_at_k_from_scores(image_to_text, text_to_image, [[1], [3]], [1, 1, 0, 0], ks=(1, 2))
    assert result["txt_r1"] == 0.0 and result["txt_r2"] == 50.0 and result["img_r1"] == 0.0 and result["img_r2"] == 100.0
    assert result["r_mean"] == pytest.approx((25.0 + 50.0) / 2)
    with pytest.raises(ValueError, match="transpose shape"):
        recall_at_k_from_scores(image_to_text, image_to_text, [[0], [1]], [0, 0, 1, 1])


# --------------------------------------------------------------------------------------------------- machinery


def test_same_image_captions_are_never_hard_negatives_and_queues_fill_with_ids() -> None:
    torch.manual_seed(0)
    model = VlpAlbefForImageTextRetrieval(tiny_config(queue_size=16)).train()
    assert [name for name, _ in model.feature_queues()] == ["image_queue", "text_queue", "idx_queue"]
    assert torch.equal(model.idx_queue.queue, torch.full((1, 16), -100))
    for seed in range(2):
        batch = tiny_batch(seed=seed)
        out = model(**batch)
        ids = batch["image_ids"]
        assert (ids[out.itm_negative_image_indices] != ids).all() and (ids[out.itm_negative_text_indices] != ids).all()
    assert model.idx_queue.queue[0].tolist() == (torch.arange(8) // 2).tolist() + (torch.arange(8) // 2 + 10).tolist()
    assert int(model.idx_queue.ptr) == 0
    out.loss.backward()
    checks.assert_no_momentum_gradient(model)
    assert model.temp.grad is not None and model.itm_head.weight.grad.abs().sum() > 0


def test_errors_say_what_to_do() -> None:
    model = VlpAlbefForImageTextRetrieval(tiny_config()).eval()
    batch = tiny_batch()
    with pytest.raises(ValueError, match="8 images and 3 texts"):
        model(batch["input_ids"][:3], batch["pixel_values"])
    with pytest.raises(ValueError, match="one id per pair"):
        model(**{**batch, "image_ids": batch["image_ids"][:3]})
    with pytest.raises(ValueError, match="must be >= 0"):
        model(**{**batch, "image_ids": -batch["image_ids"] - 1})
    with pytest.raises(ValueError, match="both itm_negative_image_indices and itm_negative_text_indices"):
        model(**batch, itm_negative_image_indices=torch.zeros(8, dtype=torch.long))
    without_ids = {key: value for key, value in batch.items() if key != "image_ids"}
    with pytest.raises(ValueError, match="update_queues needs image_ids"):
        model(**without_ids, update_queues=True)
    one_image = {**batch, "image_ids": torch.zeros(8, dtype=torch.long)}
    with pytest.raises(ValueError, match="no negative to sample"):
        model(**one_image)


# --------------------------------------------------------------------------------------------------- training


def test_trainer_overfits_eight_captions_with_the_momentum_callback(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = tiny_config(queue_size=8, momentum=0.9, itm_negative_eps=1e-4)
    checks.widen_initialisation(config)
    model = VlpAlbefForImageTextRetrieval(config)
    momentum_before = model.momentum_vision_proj.weight.detach().clone()
    losses = checks.train_with_momentum_callback(model, tmp_path, checks.FixedRows(tiny_batch(8, seed=3)), 40)
    checks.assert_loss_fell(losses, 40, 0.6)
    assert not torch.equal(model.momentum_vision_proj.weight, momentum_before)
    model.eval()
    batch = tiny_batch(8, seed=3)
    scores = model.rank(batch["pixel_values"][::2], batch["input_ids"], batch["attention_mask"], k=4)
    recall = recall_at_k_from_scores(
        scores.image_to_text, scores.text_to_image, [[2 * i, 2 * i + 1] for i in range(4)], [i // 2 for i in range(8)]
    )
    assert recall["txt_r1"] == 100.0 and recall["img_r1"] == 100.0, recall


# --------------------------------------------------------------------------------------------------- round trip


def test_save_load_round_trip_keeps_queues_and_frozen_momentum(tmp_path: Path) -> None:
    model = fixture_model()
    saved = checks.save_after_a_queue_update(model, tmp_path, recorded_step_inputs())
    queues_and_momentum = {"idx_queue.queue", "idx_queue.ptr", "image_queue.queue", "text_queue.ptr"}
    assert queues_and_momentum | {"momentum_text_proj.weight"} <= set(saved)
    loaded = checks.reload_same_state(VlpAlbefForImageTextRetrieval, tmp_path, model)
    assert loaded.idx_queue.queue.dtype == torch.long and int(loaded.idx_queue.ptr) == 4
    checks.assert_same_loss(loaded, model, recorded_step_inputs())
    base = AutoModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert isinstance(base, VlpAlbefModel) and torch.equal(base.itm_head.weight, model.itm_head.weight)


def test_fine_tuning_starts_from_a_pretraining_directory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pretraining = VlpAlbefForPretraining(tiny_config())
    pretraining.save_pretrained(tmp_path)
    model = VlpAlbefForImageTextRetrieval.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(model.idx_queue.queue, torch.full((1, 16), -100))
    assert torch.equal(model.image_queue.queue, pretraining.image_queue.queue)
    assert torch.equal(model.momentum_text_proj.weight, pretraining.momentum_text_proj.weight)
    assert not model.momentum_text_proj.weight.requires_grad


def test_loading_a_pretraining_directory_aligns_the_fresh_id_queue_with_the_feature_queues(tmp_path: Path) -> None:
    """The original keeps one pointer for features and ids: a retrieval head started from pre-training (whose
    queues are mid-way) must write ids into the same columns as the features, with every old slot unlabelled."""
    config, _ = converted()
    pretraining = VlpAlbefForPretraining(VlpAlbefConfig.from_dict(config))
    with torch.no_grad():
        for queue in (pretraining.image_queue, pretraining.text_queue):
            queue.ptr.fill_(2)
    pretraining.save_pretrained(tmp_path)
    model = VlpAlbefForImageTextRetrieval.from_pretrained(tmp_path, dtype=torch.float32)
    assert int(model.idx_queue.ptr) == int(model.image_queue.ptr) == 2
    assert bool((model.idx_queue.queue == -100).all())
    model.train()
    with torch.no_grad():
        model(**recorded_step_inputs())
    assert int(model.idx_queue.ptr) == int(model.image_queue.ptr) != 2
