"""Losses on hand-checkable batches and against open_clip."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

import hf_vlp.objectives.losses as hf_vlp_losses
from hf_vlp.objectives.losses import (
    contrastive_loss,
    distillation_targets,
    id_match_targets,
    sample_hard_negatives,
    soft_target_contrastive,
    soft_target_cross_entropy,
)


def test_contrastive_loss_on_a_2x2_batch_by_hand() -> None:
    image = torch.eye(2)
    text = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    # Both logit matrices are s * [[.6, .8], [.8, .6]]: each row's positive trails its negative by 0.2 s.
    for scale in (1.0, 10.0):
        expected = math.log(1 + math.exp(0.2 * scale))
        assert contrastive_loss(image, text, torch.tensor(scale)).item() == pytest.approx(expected, abs=1e-6)
    assert contrastive_loss(image, image, 2.0).item() == pytest.approx(math.log(1 + math.exp(-2.0)), abs=1e-6)


def test_contrastive_loss_is_the_explicit_symmetric_formula_and_trains_the_scale() -> None:
    generator = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(5, 3, generator=generator), dim=-1)
    text = F.normalize(torch.randn(5, 3, generator=generator), dim=-1)
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    loss = contrastive_loss(image, text, log_scale.exp())
    logits = log_scale.exp().detach() * image @ text.T
    labels = torch.arange(5)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert log_scale.grad is not None and log_scale.grad.abs().item() > 0


def test_contrastive_loss_equals_open_clip_cliploss() -> None:
    open_clip_loss = pytest.importorskip("open_clip.loss")
    generator = torch.Generator().manual_seed(3)
    image = F.normalize(torch.randn(16, 8, generator=generator), dim=-1)
    text = F.normalize(torch.randn(16, 8, generator=generator), dim=-1)
    scale = torch.tensor(14.3)
    expected = open_clip_loss.ClipLoss()(image, text, scale)
    torch.testing.assert_close(contrastive_loss(image, text, scale), expected, atol=0, rtol=0)
    torch.testing.assert_close(contrastive_loss(image, text, scale, gather=False), expected, atol=0, rtol=0)


def test_contrastive_loss_rejects_unpaired_shapes() -> None:
    with pytest.raises(ValueError, match=r"same shape \[batch, dim\].*\(2, 3\) and \(3, 3\)"):
        contrastive_loss(torch.randn(2, 3), torch.randn(3, 3), 1.0)


def test_contrastive_loss_logs_negatives_and_logits_bytes_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hf_vlp_losses, "_logged_contrastive_shapes", set())
    image = F.normalize(torch.randn(7, 4), dim=-1)
    with caplog.at_level(logging.INFO, logger="hf_vlp.objectives.losses"):
        contrastive_loss(image, image, 1.0)
        contrastive_loss(image, image, 1.0)
    messages = [r.getMessage() for r in caplog.records if r.name == "hf_vlp.objectives.losses"]
    assert len(messages) == 1
    # 2 matrices of 7 x 7 float32 logits.
    assert "global batch of 7 (6 negatives per row)" in messages[0] and f"{2 * 7 * 7 * 4} bytes" in messages[0]


def test_soft_target_contrastive_by_hand() -> None:
    hard = torch.eye(2)
    targets = distillation_targets(torch.zeros(2, 2), 0.5, hard)
    torch.testing.assert_close(targets, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    sim = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # softmax rows [1/4, 3/4] and [1/2, 1/2]
    row0 = -(0.75 * math.log(0.25) + 0.25 * math.log(0.75))
    row1 = math.log(2.0)
    assert soft_target_cross_entropy(sim, targets).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    both = soft_target_contrastive(sim, torch.zeros(2, 2), targets, targets)
    assert both.item() == pytest.approx(((row0 + row1) / 2 + math.log(2.0)) / 2, abs=1e-6)


def test_soft_targets_reduce_to_cross_entropy_and_alpha_interpolates() -> None:
    generator = torch.Generator().manual_seed(1)
    sim = torch.randn(4, 6, generator=generator)
    sim_m = torch.randn(4, 6, generator=generator)
    hard = F.one_hot(torch.tensor([0, 1, 2, 3]), 6).float()
    torch.testing.assert_close(soft_target_cross_entropy(sim, hard), F.cross_entropy(sim, torch.arange(4)))
    torch.testing.assert_close(distillation_targets(sim_m, 0.0, hard), hard)
    torch.testing.assert_close(distillation_targets(sim_m, 1.0, hard), sim_m.softmax(dim=1))
    targets = distillation_targets(sim_m, 0.4, hard)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))
    assert not distillation_targets(sim_m.requires_grad_(), 0.4, hard).requires_grad
    with pytest.raises(ValueError, match="same shape"):
        distillation_targets(sim_m, 0.4, hard[:, :5])
    with pytest.raises(ValueError, match="logits' shape"):
        soft_target_cross_entropy(sim, hard[:3])


def test_id_match_targets_spread_over_every_same_id_column() -> None:
    targets = id_match_targets(torch.tensor([1, 2]), torch.tensor([1, 2, 1, -100]))
    torch.testing.assert_close(targets, torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="appears in no column"):
        id_match_targets(torch.tensor([5]), torch.tensor([1, 2]))


def test_hard_negatives_of_a_2x2_batch_are_the_other_item() -> None:
    sim = torch.tensor([[5.0, -5.0], [3.0, 1.0]])
    negative_image, negative_text = sample_hard_negatives(sim, sim.T.contiguous(), torch.eye(2, dtype=torch.bool))
    assert negative_image.tolist() == [1, 0] and negative_text.tolist() == [1, 0]


def test_hard_negatives_never_positive_follow_softmax_and_are_seeded() -> None:
    generator = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 0, 1, 2, 3, 3])  # rows 0/1 and 4/5 are the same image
    sim_i2t = torch.randn(6, 6, generator=generator)
    sim_t2i = torch.randn(6, 6, generator=generator)
    positives = ids[:, None] == ids[None, :]
    repeats = 2000  # every row drawn 2000 times in one call
    negative_image, negative_text = sample_hard_negatives(
        sim_i2t.repeat(repeats, 1), sim_t2i.repeat(repeats, 1), positives.repeat(repeats, 1),
        torch.Generator().manual_seed(42),
    )
    rows = torch.arange(6).repeat(repeats)
    assert not positives[rows, negative_image].any() and not positives[rows, negative_text].any()
    for sim, draws in ((sim_t2i, negative_image), (sim_i2t, negative_text)):
        expected = sim.softmax(dim=1).masked_fill(positives, 0)
        expected = expected / expected.sum(dim=1, keepdim=True)
        frequencies = F.one_hot(draws.view(repeats, 6), 6).float().mean(dim=0)
        torch.testing.assert_close(frequencies, expected, atol=0.04, rtol=0)

    first = sample_hard_negatives(sim_i2t, sim_t2i, positives, torch.Generator().manual_seed(9))
    second = sample_hard_negatives(sim_i2t, sim_t2i, positives, torch.Generator().manual_seed(9))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_hard_negatives_reproduce_the_originals_per_row_loop() -> None:
    generator = torch.Generator().manual_seed(5)
    sim_i2t, sim_t2i = torch.randn(8, 8, generator=generator), torch.randn(8, 8, generator=generator)
    weights_i2t = sim_i2t.softmax(dim=1).fill_diagonal_(0)
    weights_t2i = sim_t2i.softmax(dim=1).fill_diagonal_(0)
    torch.manual_seed(11)
    loop_image = [torch.multinomial(weights_t2i[b], 1).item() for b in range(8)]
    loop_text = [torch.multinomial(weights_i2t[b], 1).item() for b in range(8)]
    torch.manual_seed(11)
    negative_image, negative_text = sample_hard_negatives(sim_i2t, sim_t2i, torch.eye(8, dtype=torch.bool))
    assert negative_image.tolist() == loop_image and negative_text.tolist() == loop_text


def test_hard_negatives_eps_adds_to_the_weights_before_masking() -> None:
    # Row 0's softmax puts ~all mass on column 1; eps=1 makes column 2 as likely as column 1.
    sim = torch.tensor([[0.0, 50.0, -50.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.eye(3, dtype=torch.bool)
    sims, masks = sim[:1].repeat(200, 1), mask[:1].repeat(200, 1)
    generator = torch.Generator().manual_seed(0)
    plain = sample_hard_negatives(sims, sims, masks, generator)[0]
    smoothed = sample_hard_negatives(sims, sims, masks, generator, eps=1.0)[0]
    assert set(plain.tolist()) == {1}
    assert set(smoothed.tolist()) == {1, 2}


def test_hard_negatives_explain_rows_without_negatives() -> None:
    sim = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="no negative to sample"):
        sample_hard_negatives(sim, sim, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        sample_hard_negatives(sim, sim, torch.eye(2))
    with pytest.raises(ValueError, match="same shape"):
        sample_hard_negatives(sim, torch.zeros(2, 3), torch.eye(2, dtype=torch.bool))
