"""BLIP retrieval head: parity of its ITC/ITM with the original's recorded pre-training step (the same computations),
image-id positives and online hard negatives, gallery scoring (ITC top-k then ITM + cosine), Trainer overfitting,
save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conversion.convert_blip import convert_blip_checkpoint
from hf_vlp.objectives.losses import sample_hard_negatives
from hf_vlp.models.blip import VlpBlipConfig, VlpBlipModel
from hf_vlp.models.blip.modeling_blip_pretraining import (
    VlpBlipForImageTextRetrieval,
    VlpBlipRetrievalFeatures,
    rerank_top_k,
)
from tests.helpers import momentum_checks as checks
from tests.helpers.fixtures import converted_state, fixture_tensors, model_from_state
from tests.helpers.tiny_models import tiny_blip_batch as tiny_batch, tiny_blip_config

FIXTURE = "blip_pretrain"
FEATURE_ATOL, LOGIT_ATOL = 1e-5, 1e-4
ALPHA = 0.4


def fixture_model() -> VlpBlipForImageTextRetrieval:
    converted = converted_state(convert_blip_checkpoint, FIXTURE, head="retrieval")
    return model_from_state(VlpBlipForImageTextRetrieval, converted)


def fixture_encoders() -> VlpBlipModel:
    return model_from_state(VlpBlipModel, converted_state(convert_blip_checkpoint, FIXTURE, head="model"))


def fixture_batch() -> dict[str, torch.Tensor]:
    inputs, _ = fixture_tensors(FIXTURE)
    return {name: inputs[name] for name in ("input_ids", "pixel_values", "attention_mask")}


def tiny_config(**overrides) -> VlpBlipConfig:
    """8-dim features, queues of 16."""
    return tiny_blip_config(**{"queue_size": 16, **overrides})


# --------------------------------------------------------------------------------------------------- parity


def test_parity_features_similarities_and_positive_itm() -> None:
    model = fixture_model()
    _, expected = fixture_tensors(FIXTURE)
    with torch.no_grad():
        out = model(**fixture_batch())
    actual = {
        "image_feat": out.image_embeds, "text_feat": out.text_embeds, "image_feat_m": out.momentum_image_embeds,
        "text_feat_m": out.momentum_text_embeds, "sim_i2t_with_queue": out.logits_per_image,
        "sim_t2i_with_queue": out.logits_per_text, "itm_logits_pos": out.itm_logits,
    }
    for name, value in actual.items():
        atol = LOGIT_ATOL if name.startswith(("sim", "itm")) else FEATURE_ATOL
        torch.testing.assert_close(value, expected[name], atol=atol, rtol=0, msg=name)
    assert out.loss is None and out.itm_labels is None and out.itm_negative_image_indices is None


def test_parity_losses_with_distinct_ids_equal_the_pretraining_itc_and_itm() -> None:
    """With every image id distinct and an empty id queue the positives are the diagonal: retrieval's ITC and ITM are
    then the pre-training computations, recorded in the fixture (after the EMA step, with its negatives)."""
    model = fixture_model()
    _, expected = fixture_tensors(FIXTURE)
    checks.ema_step(model)
    with torch.no_grad():
        out = model(
            **fixture_batch(), image_ids=torch.tensor([10, 11, 12, 13]), alpha=ALPHA, update_queues=True,
            itm_negative_image_indices=expected["itm_neg_image_idx_for_text"],
            itm_negative_text_indices=expected["itm_neg_text_idx_for_image"],
        )
    torch.testing.assert_close(out.loss_itc, expected["loss_ita"], atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(out.loss_itm, expected["loss_itm"], atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(out.loss, out.loss_itc + out.loss_itm)
    torch.testing.assert_close(model.image_queue.queue, expected["image_queue_after"], atol=FEATURE_ATOL, rtol=0)
    assert model.idx_queue.queue[0, :4].tolist() == [10, 11, 12, 13] and int(model.idx_queue.ptr) == 4


# --------------------------------------------------------------------------------------------------- training


def test_queue_entries_and_captions_with_the_same_image_id_are_positives() -> None:
    model = fixture_model()
    batch = fixture_batch()
    with torch.no_grad():
        model.idx_queue.queue[0, :2] = torch.tensor([7, 5])
        ids = torch.tensor([5, 5, 6, 7])
        out = model(**batch, image_ids=ids, alpha=0.0)
    # by hand: targets uniform over every column (batch, then queue) showing the row's id
    columns = torch.cat([ids, model.idx_queue.queue[0]])
    targets = (ids[:, None] == columns[None, :]).float()
    targets = targets / targets.sum(1, keepdim=True)
    expected = -(
        (torch.log_softmax(out.logits_per_image, 1) * targets).sum(1).mean()
        + (torch.log_softmax(out.logits_per_text, 1) * targets).sum(1).mean()
    ) / 2
    torch.testing.assert_close(out.loss_itc, expected)
    # the released code's diagonal targets (its id targets are overwritten) are one switch away
    model.itc_positives = "diagonal"
    with torch.no_grad():
        diagonal = model(**batch, image_ids=ids, alpha=0.0).loss_itc
    eye = torch.eye(4, 12)
    by_hand = -((torch.log_softmax(out.logits_per_image, 1) * eye).sum(1).mean()
                + (torch.log_softmax(out.logits_per_text, 1) * eye).sum(1).mean()) / 2
    torch.testing.assert_close(diagonal, by_hand)
    assert not torch.allclose(diagonal, out.loss_itc)
    model.itc_positives = "captions"
    with pytest.raises(ValueError, match="itc_positives must be 'image_id' or 'diagonal'"):
        model(**batch, image_ids=ids)


def test_hard_negatives_come_from_online_similarities_and_never_share_the_image_id() -> None:
    model = fixture_model()
    batch = fixture_batch()
    ids = torch.tensor([3, 3, 4, 5])
    with torch.no_grad():
        out = model(**batch, image_ids=ids, generator=torch.Generator().manual_seed(0))
        online = out.image_embeds @ out.text_embeds.T / model.temp
    same = ids[:, None] == ids[None, :]
    replay = sample_hard_negatives(online, online.T, same, torch.Generator().manual_seed(0), eps=0.0)
    assert torch.equal(out.itm_negative_image_indices, replay[0])
    assert torch.equal(out.itm_negative_text_indices, replay[1])
    for _ in range(20):
        out = model(**batch, image_ids=ids)
        for row, negative in enumerate(out.itm_negative_image_indices.tolist()):
            assert ids[negative] != ids[row]
        for row, negative in enumerate(out.itm_negative_text_indices.tolist()):
            assert ids[negative] != ids[row]
    assert out.itm_logits.shape == (12, 2) and out.itm_labels.tolist() == [1] * 4 + [0] * 8


def test_errors_say_what_to_do() -> None:
    model = VlpBlipForImageTextRetrieval(tiny_config()).eval()
    batch = tiny_batch()
    with pytest.raises(ValueError, match="8 images and 3 texts"):
        model(batch["input_ids"][:3], batch["pixel_values"])
    with pytest.raises(ValueError, match="one id per pair"):
        model(**batch, image_ids=torch.arange(3))
    with pytest.raises(ValueError, match="image_ids must be >= 0"):
        model(**batch, image_ids=torch.arange(8) - 1)
    with pytest.raises(ValueError, match="update_queues needs image_ids"):
        model(**batch, update_queues=True)
    with pytest.raises(ValueError, match="both itm_negative_image_indices and itm_negative_text_indices"):
        model(**batch, image_ids=torch.arange(8), itm_negative_text_indices=torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="no negative to sample"):
        model(**batch, image_ids=torch.zeros(8, dtype=torch.long))  # every caption of one image
    images = model.encode_images(batch["pixel_values"])
    with pytest.raises(ValueError, match="texts need their input_ids"):
        model.score_matrices(images, VlpBlipRetrievalFeatures(images.embeds))
    with pytest.raises(ValueError, match="k .* must be >= 1"):
        model.rank(batch["pixel_values"], batch["input_ids"], k=0)
    with pytest.raises(ValueError, match="some chunks have hidden_states and others not"):
        VlpBlipRetrievalFeatures.cat([images, VlpBlipRetrievalFeatures(images.embeds)])


class CaptionedImages(torch.utils.data.Dataset):
    """Four images with two captions each; the image id says which captions belong together."""

    def __init__(self) -> None:
        batch = tiny_batch(8, seed=3)
        images = batch["pixel_values"][:4]
        self.items = [
            {"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i],
             "pixel_values": images[i // 2], "image_ids": torch.tensor(i // 2)}
            for i in range(8)
        ]

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


def test_trainer_overfits_eight_captions_with_the_momentum_callback(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = tiny_config(queue_size=8, momentum=0.9)
    checks.widen_initialisation(config)
    model = VlpBlipForImageTextRetrieval(config)
    model.itm_negative_eps = 1e-4  # the fast-falling temp makes the in-batch softmax underflow at this size
    losses = checks.train_with_momentum_callback(model, tmp_path, CaptionedImages(), 60, checks.stack_examples)
    checks.assert_loss_fell(losses, 60, 0.5)
    assert sorted(model.idx_queue.queue[0].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    # the fine-tuned model retrieves each image's captions first
    data = checks.stack_examples([CaptionedImages()[i] for i in range(8)])
    scores = model.eval().rank(data["pixel_values"][::2], data["input_ids"], data["attention_mask"], k=4)
    assert (scores.image_to_text.argmax(dim=1) // 2 == torch.arange(4)).all()
    assert (scores.text_to_image.argmax(dim=1) == torch.arange(8) // 2).all()


# --------------------------------------------------------------------------------------------------- inference


def test_gallery_scores_are_the_itm_logit_plus_the_cosine_of_each_querys_top_k() -> None:
    model = fixture_model()
    encoders = fixture_encoders()  # an independent path: VlpBlipModel's own ITM and features
    batch = fixture_batch()
    scores = model.rank(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], k=2)
    with torch.no_grad():
        image_features = torch.nn.functional.normalize(encoders.get_image_features(batch["pixel_values"]).pooler_output, dim=-1)
        text_features = encoders.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output
        cosine = image_features @ torch.nn.functional.normalize(text_features, dim=-1).T
        image_states = encoders.encode_image(batch["pixel_values"]).last_hidden_state
        ids, mask = batch["input_ids"], batch["attention_mask"]
        every_pair = torch.stack([  # [image, text]
            encoders.get_itm_logits(ids, attention_mask=mask, image_hidden_states=states.expand(4, -1, -1))[:, 1]
            for states in image_states
        ])
    torch.testing.assert_close(scores.similarities, cosine, atol=FEATURE_ATOL, rtol=0)
    expected_i2t = torch.full((4, 4), -100.0)
    expected_t2i = torch.full((4, 4), -100.0)
    for i, top in enumerate(cosine.topk(2, dim=1).indices):
        expected_i2t[i, top] = every_pair[i, top] + cosine[i, top]
    for t, top in enumerate(cosine.T.topk(2, dim=1).indices):
        expected_t2i[t, top] = every_pair[top, t] + cosine[top, t]
    torch.testing.assert_close(scores.image_to_text, expected_i2t, atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(scores.text_to_image, expected_t2i, atol=LOGIT_ATOL, rtol=0)
    # chunked encoding and any re-rank batch size give the same matrices; k is capped at the gallery size
    images = VlpBlipRetrievalFeatures.cat([model.encode_images(batch["pixel_values"][:2]),
                                           model.encode_images(batch["pixel_values"][2:])])
    texts = model.encode_texts(batch["input_ids"], batch["attention_mask"])
    again = model.score_matrices(images, texts, k=2, batch_size=1)
    torch.testing.assert_close(again.image_to_text, scores.image_to_text, atol=1e-5, rtol=0)
    everything = model.score_matrices(images, texts, k=100)
    assert (everything.image_to_text > -100).all() and (everything.text_to_image > -100).all()


def test_rerank_top_k_is_shared_by_models_that_score_the_itm_logit_alone() -> None:
    similarities = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]])

    def match(image_indices: torch.Tensor, text_indices: torch.Tensor) -> torch.Tensor:
        return (10 * image_indices + text_indices).float()

    scores = rerank_top_k(similarities, match, k=2, add_similarity=False, batch_size=1)
    assert scores.image_to_text.tolist() == [[0.0, -100.0, 2.0], [-100.0, 11.0, 12.0]]
    assert scores.text_to_image.tolist() == [[0.0, 10.0], [1.0, 11.0], [2.0, 12.0]]
    with pytest.raises(ValueError, match="batch_size"):
        rerank_top_k(similarities, match, k=2, add_similarity=False, batch_size=0)


# --------------------------------------------------------------------------------------------------- round trip


def test_save_load_round_trip_keeps_queues_and_frozen_momentum(tmp_path: Path) -> None:
    model = fixture_model()
    inputs = {**fixture_batch(), "image_ids": torch.tensor([1, 2, 3, 4])}
    saved = checks.save_after_a_queue_update(model, tmp_path, inputs, ema=False)
    assert {"idx_queue.queue", "idx_queue.ptr", "image_queue.ptr"} <= set(saved)
    loaded = checks.reload_same_state(VlpBlipForImageTextRetrieval, tmp_path, model)
    assert loaded.idx_queue.queue[0, :4].tolist() == [1, 2, 3, 4] and int(loaded.idx_queue.ptr) == 4
    base = VlpBlipModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(base.vision_proj.weight, model.vision_proj.weight)
