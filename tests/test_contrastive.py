"""hf_vlp.objectives.contrastive on inputs small enough to check by hand: projections/normalisation, logits against
[momentum batch ; queue], distilled ITC, diagonal targets, queue updates, hard negatives and ITM triplets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hf_vlp.objectives.contrastive import (
    MomentumContrastiveStep,
    clamp_temperature_,
    diagonal_targets,
    distilled_itc,
    enqueue_momentum_features,
    itm_triplets,
    momentum_contrastive_step,
    sample_itm_negatives,
)
from hf_vlp.objectives.momentum import FeatureQueue


def queue_with(columns: list[list[float]]) -> FeatureQueue:
    """A 2-d queue holding ``columns`` (each a 2-vector), pointer at 0."""
    queue = FeatureQueue(2, len(columns))
    queue.queue.copy_(torch.tensor(columns).T)
    return queue


def hand_step(temp: float = 0.5) -> MomentumContrastiveStep:
    """Online image features (3,4)->(.6,.8) and (0,2)->(0,1); texts (1,0) and (0,5)->(0,1); momentum towers give
    (1,0),(0,1) for both modalities; each queue holds one column (-1, 0)."""
    image_cls = torch.tensor([[3.0, 4.0], [0.0, 2.0]], requires_grad=True)
    text_cls = torch.tensor([[1.0, 0.0], [0.0, 5.0]], requires_grad=True)
    momentum = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    identity = nn.Identity()
    return momentum_contrastive_step(
        image_cls, text_cls, momentum, momentum,
        vision_proj=identity, text_proj=identity, momentum_vision_proj=identity, momentum_text_proj=identity,
        image_queue=queue_with([[-1.0, 0.0]]), text_queue=queue_with([[-1.0, 0.0]]), temp=temp,
    )


def test_step_normalises_projects_and_scores_against_batch_then_queue() -> None:
    step = hand_step(temp=0.5)
    torch.testing.assert_close(step.image_embeds, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    torch.testing.assert_close(step.text_embeds, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(step.momentum_image_embeds, torch.eye(2))
    # columns: momentum batch (1,0), (0,1), then the queue column (-1,0)
    torch.testing.assert_close(step.text_columns, torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]))
    # image (.6,.8) . columns / 0.5 = (1.2, 1.6, -1.2); image (0,1) -> (0, 2, 0)
    torch.testing.assert_close(step.logits_per_image, torch.tensor([[1.2, 1.6, -1.2], [0.0, 2.0, 0.0]]))
    torch.testing.assert_close(step.logits_per_text, torch.tensor([[2.0, 0.0, -2.0], [0.0, 2.0, 0.0]]))
    assert step.batch_size == 2
    assert step.logits_per_image.requires_grad and not step.momentum_image_embeds.requires_grad
    assert not step.image_columns.requires_grad


def test_step_projects_through_the_given_modules() -> None:
    scale = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        scale.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # swaps the coordinates
    features = torch.tensor([[1.0, 0.0]])
    step = momentum_contrastive_step(
        features, features, features, features,
        vision_proj=scale, text_proj=nn.Identity(), momentum_vision_proj=nn.Identity(), momentum_text_proj=scale,
        image_queue=queue_with([[0.0, 1.0]]), text_queue=queue_with([[0.0, 1.0]]), temp=1.0,
    )
    torch.testing.assert_close(step.image_embeds, torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(step.momentum_text_embeds, torch.tensor([[0.0, 1.0]]))
    # image (0,1) against [momentum text (0,1) ; queue (0,1)]
    torch.testing.assert_close(step.logits_per_image, torch.tensor([[1.0, 1.0]]))
    scale.weight.grad = None
    step.logits_per_image.sum().backward()
    assert scale.weight.grad is not None  # the online projection learns; the momentum one is under no_grad


def test_step_rejects_mismatched_rows() -> None:
    identity = nn.Identity()
    with pytest.raises(ValueError, match="one \\[CLS\\] state"):
        momentum_contrastive_step(
            torch.ones(2, 2), torch.ones(3, 2), torch.ones(2, 2), torch.ones(2, 2),
            vision_proj=identity, text_proj=identity, momentum_vision_proj=identity, momentum_text_proj=identity,
            image_queue=queue_with([[1.0, 0.0]]), text_queue=queue_with([[1.0, 0.0]]), temp=1.0,
        )


def test_diagonal_targets_mark_each_pairs_own_column_only() -> None:
    targets = diagonal_targets(hand_step())
    assert torch.equal(targets, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))


def test_distilled_itc_at_alpha_zero_is_cross_entropy_on_the_hard_targets() -> None:
    step = hand_step(temp=0.5)
    loss = distilled_itc(step, diagonal_targets(step), alpha=0.0, temp=0.5)
    # i2t rows (1.2, 1.6, -1.2) target 0 and (0, 2, 0) target 1; t2i rows (2, 0, -2) target 0, (0, 2, 0) target 1
    i2t = -(1.2 - math.log(math.exp(1.2) + math.exp(1.6) + math.exp(-1.2))) - (2 - math.log(2 + math.exp(2)))
    t2i = -(2 - math.log(math.exp(2) + 1 + math.exp(-2))) - (2 - math.log(2 + math.exp(2)))
    assert loss.item() == pytest.approx((i2t / 2 + t2i / 2) / 2, rel=1e-6)


def test_distilled_itc_mixes_in_the_momentum_softmax() -> None:
    step = hand_step(temp=0.5)
    alpha = 0.4
    hard = diagonal_targets(step)
    loss = distilled_itc(step, hard, alpha=alpha, temp=0.5)
    # momentum features are the unit vectors: momentum i2t/t2i scores are rows of (2, 0, -2) and (0, 2, 0)
    momentum_scores = torch.tensor([[2.0, 0.0, -2.0], [0.0, 2.0, 0.0]])
    targets = alpha * momentum_scores.softmax(dim=1) + (1 - alpha) * hard

    def soft_ce(logits: torch.Tensor) -> torch.Tensor:
        return -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()

    expected = (soft_ce(step.logits_per_image) + soft_ce(step.logits_per_text)) / 2
    torch.testing.assert_close(loss, expected)
    loss.backward()  # the gradient reaches the online features only


def test_enqueue_writes_the_momentum_features_and_ids_at_the_pointer() -> None:
    step = hand_step()
    image_queue, text_queue = FeatureQueue(2, 4), FeatureQueue(2, 4)
    id_queue = FeatureQueue(1, 4, dtype=torch.long, fill_value=-100)
    enqueue_momentum_features(step, image_queue, text_queue, torch.tensor([7, 9]), id_queue)
    torch.testing.assert_close(image_queue.queue[:, :2], torch.eye(2))
    torch.testing.assert_close(text_queue.queue[:, :2], torch.eye(2))
    assert id_queue.queue.tolist() == [[7, 9, -100, -100]]
    assert int(image_queue.ptr) == int(text_queue.ptr) == int(id_queue.ptr) == 2
    with pytest.raises(ValueError, match="both ids and id_queue"):
        enqueue_momentum_features(step, image_queue, text_queue, torch.tensor([1, 2]))


def test_negatives_come_from_the_in_batch_columns_outside_the_positive_mask() -> None:
    step = hand_step()
    diagonal = torch.eye(2, dtype=torch.bool)
    negative_images, negative_texts = sample_itm_negatives(step, diagonal, torch.Generator().manual_seed(0))
    # two pairs: each row's only negative is the other pair (never the queue column)
    assert negative_images.tolist() == [1, 0] and negative_texts.tolist() == [1, 0]
    with pytest.raises(ValueError, match="no negative"):
        sample_itm_negatives(step, torch.ones(2, 2, dtype=torch.bool))


def test_itm_triplets_order_rows_as_positives_then_both_negative_blocks() -> None:
    texts = torch.tensor([[10], [11], [12]])
    masks = torch.tensor([[1, 0], [1, 1], [0, 1]])
    images = torch.tensor([[20], [21], [22]])
    negative_images, negative_texts = torch.tensor([2, 0, 1]), torch.tensor([1, 2, 0])
    triplets = itm_triplets((texts, masks), (images,), negative_images, negative_texts)
    (text_rows, mask_rows), (image_rows,) = triplets.text, triplets.image
    assert text_rows.flatten().tolist() == [10, 11, 12, 10, 11, 12, 11, 12, 10]
    assert image_rows.flatten().tolist() == [20, 21, 22, 22, 20, 21, 20, 21, 22]
    assert torch.equal(mask_rows[6:], masks[negative_texts])
    assert triplets.labels.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0] and triplets.labels.dtype == torch.long


def test_itm_triplets_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="one row per pair"):
        itm_triplets((torch.zeros(3, 1),), (torch.zeros(2, 1),), torch.tensor([1, 0]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="two \\[B\\] vectors"):
        itm_triplets((torch.zeros(2, 1),), (torch.zeros(2, 1),), torch.tensor([1, 0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="at least one"):
        itm_triplets((), (torch.zeros(2, 1),), torch.tensor([1, 0]), torch.tensor([1, 0]))


def test_clamp_temperature_in_place() -> None:
    temp = nn.Parameter(torch.tensor(0.9))
    clamp_temperature_(temp, 0.001, 0.5)
    assert temp.item() == pytest.approx(0.5) and temp.requires_grad
    with pytest.raises(ValueError, match="temperature range"):
        clamp_temperature_(temp, 0.0, 0.5)
