"""Word-patch alignment (IPOT) against the recorded original ViLT outputs and hand-checkable cases."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from hf_vlp.objectives.wpa import word_patch_alignment_distance, wpa_loss

from tests.helpers.fixtures import fixture_tensors


def _recorded() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return fixture_tensors("vilt")


def test_distance_matches_original_raw_order() -> None:
    inputs, outputs = _recorded()
    distance = word_patch_alignment_distance(
        outputs["text_feats"], outputs["image_feats"], inputs["attention_mask"], outputs["image_masks"]
    )
    assert distance.dtype == torch.float32 and distance.shape == (2,)
    torch.testing.assert_close(distance, outputs["wpa_distance"], atol=1e-5, rtol=0)


def test_distance_matches_original_canonical_order() -> None:
    inputs, outputs = _recorded()
    distance = word_patch_alignment_distance(
        outputs["text_feats"], outputs["image_feats_canonical"], inputs["attention_mask"],
        outputs["image_masks_canonical"],
    )
    torch.testing.assert_close(distance, outputs["wpa_distance"], atol=1e-5, rtol=0)


def test_loss_matches_original_formula() -> None:
    inputs, outputs = _recorded()
    loss = wpa_loss(outputs["wpa_distance"], inputs["itm_labels"])
    torch.testing.assert_close(loss.reshape(1), outputs["itm_wpa_loss"], atol=1e-8, rtol=0)
    distance = torch.tensor([0.5, 2.0, 3.0, 0.25])
    labels = torch.tensor([1, 0, 1, 0])
    torch.testing.assert_close(wpa_loss(distance, labels, weight=0.2), torch.tensor(0.2 * (3.5 - 2.25) / 4))


def test_batch_rows_are_independent() -> None:
    inputs, outputs = _recorded()
    args = (outputs["text_feats"], outputs["image_feats"], inputs["attention_mask"], outputs["image_masks"])
    batched = word_patch_alignment_distance(*args)
    for row in range(2):
        single = word_patch_alignment_distance(*(tensor[row : row + 1] for tensor in args))
        torch.testing.assert_close(single[0], batched[row], atol=1e-6, rtol=0)


def test_single_valid_pair_gives_one_minus_cosine() -> None:
    # Text: [CLS], one word, [SEP], pad. Image: cls, one patch, pad. Only (word, patch) is valid.
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(1, 4, 8, generator=generator)
    image = torch.randn(1, 3, 8, generator=generator)
    distance = word_patch_alignment_distance(text, image, torch.tensor([[1, 1, 1, 0]]), torch.tensor([[1, 1, 0]]))
    expected = 1 - F.cosine_similarity(text[0, 1], image[0, 1], dim=0)
    torch.testing.assert_close(distance[0], expected, atol=1e-6, rtol=0)


def test_identical_tokens_have_zero_distance_and_plan_sums_to_one() -> None:
    # Two valid text tokens equal to two valid patches: the plan's mass (trace with C = 1) is one, the distance 0.
    states = torch.randn(1, 4, 6)
    text_mask = torch.ones(1, 4, dtype=torch.long)
    image = torch.cat([torch.randn(1, 1, 6), states[:, 1:3]], dim=1)
    distance = word_patch_alignment_distance(states, image, text_mask, torch.ones(1, 3, dtype=torch.long),
                                             iterations=200)
    assert distance.abs().item() < 5e-3
    # Orthogonal one-hot states: cost 1 everywhere valid, so the distance is the total transported mass.
    text = torch.eye(6)[None, :4]
    image = torch.eye(6)[None, [0, 4, 5]]
    mass = word_patch_alignment_distance(text, image, text_mask, torch.ones(1, 3, dtype=torch.long))
    torch.testing.assert_close(mass, torch.ones(1), atol=1e-5, rtol=0)


def test_gradient_flows_through_cost_only_and_skips_excluded_tokens() -> None:
    inputs, outputs = _recorded()
    text = outputs["text_feats"].clone().requires_grad_(True)
    image = outputs["image_feats"].clone().requires_grad_(True)
    text_mask, image_mask = inputs["attention_mask"], outputs["image_masks"]
    distance = word_patch_alignment_distance(text, image, text_mask, image_mask)
    distance.sum().backward()

    # Excluded: text [CLS], last real token, text padding; image cls and image padding.
    last = text_mask.sum(1) - 1
    for row in range(2):
        assert text.grad[row, 0].abs().max() == 0 and text.grad[row, last[row]].abs().max() == 0
        assert text.grad[row, last[row] + 1 :].abs().sum() == 0
        assert text.grad[row, 1 : last[row]].abs().sum(-1).min() > 0
        assert image.grad[row, 0].abs().max() == 0
        assert image.grad[row][image_mask[row] == 0].abs().sum() == 0

    # Independent per-sample IPOT on the valid sub-matrix (float64); with its plan held fixed the gradient of
    # sum(C * T^T) must be the module's gradient, i.e. nothing flows through the plan.
    text2 = outputs["text_feats"].double().requires_grad_(True)
    image2 = outputs["image_feats"].double().requires_grad_(True)
    total = 0
    for row in range(2):
        words = text2[row, 1 : last[row]]
        patches = image2[row][image_mask[row].bool()][1:]
        cost = 1 - F.normalize(words, dim=-1, eps=1e-5) @ F.normalize(patches, dim=-1, eps=1e-5).T
        plan = _reference_ipot(cost.detach())
        reference = (cost * plan.T).sum()
        torch.testing.assert_close(distance[row].double(), reference, atol=1e-5, rtol=0)
        total = total + reference
    total.backward()
    torch.testing.assert_close(text.grad, text2.grad.float(), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(image.grad, image2.grad.float(), atol=1e-6, rtol=1e-4)


def _reference_ipot(cost: torch.Tensor, beta: float = 0.5, iterations: int = 50) -> torch.Tensor:
    """Plain IPOT (k = 1) on an unpadded ``[n_text, n_image]`` cost; returns the plan ``[n_image, n_text]``."""
    n_text, n_image = cost.shape
    kernel = torch.exp(-cost.T / beta)
    plan = torch.ones_like(kernel)
    sigma = torch.full((n_text,), 1 / n_text, dtype=cost.dtype)
    for _ in range(iterations):
        q = kernel * plan
        delta = 1 / (n_image * (q @ sigma))
        sigma = 1 / (n_text * (q.T @ delta))
        plan = delta[:, None] * q * sigma[None, :]
    return plan


def test_bf16_inputs_compute_in_float32() -> None:
    inputs, outputs = _recorded()
    text = outputs["text_feats"].to(torch.bfloat16)
    image = outputs["image_feats"].to(torch.bfloat16)
    distance = word_patch_alignment_distance(text, image, inputs["attention_mask"], outputs["image_masks"])
    assert distance.dtype == torch.float32
    expected = word_patch_alignment_distance(text.float(), image.float(), inputs["attention_mask"],
                                             outputs["image_masks"])
    torch.testing.assert_close(distance, expected, atol=0, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_distance = word_patch_alignment_distance(text, image, inputs["attention_mask"],
                                                          outputs["image_masks"])
    assert autocast_distance.dtype == torch.float32
    torch.testing.assert_close(autocast_distance, expected, atol=0, rtol=0)


def test_empty_rows_give_zero_without_nan() -> None:
    # Text holding only [CLS] [SEP] has no valid word: distance 0 and a finite (zero) gradient.
    text = torch.randn(2, 4, 8, requires_grad=True)
    image = torch.randn(2, 3, 8)
    text_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    distance = word_patch_alignment_distance(text, image, text_mask, torch.ones(2, 3, dtype=torch.long))
    assert distance[0] == 0 and torch.isfinite(distance).all()
    distance.sum().backward()
    assert torch.isfinite(text.grad).all() and text.grad[0].abs().sum() == 0


def test_more_inner_steps_run() -> None:
    inputs, outputs = _recorded()
    distance = word_patch_alignment_distance(
        outputs["text_feats"], outputs["image_feats"], inputs["attention_mask"], outputs["image_masks"],
        inner_steps=3, iterations=20,
    )
    assert torch.isfinite(distance).all() and (distance > 0).all()
