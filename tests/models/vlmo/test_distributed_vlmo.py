"""VLMo pre-training on two gloo ranks (DDP, ``b`` = 3 pairs each) equals one process on the concatenated global
batch of ``2b`` pairs, loss and every gradient, when both see the same inputs (harness:
``tests/helpers/distributed_vlmo.py``).

Why the mean of the per-rank losses is the global loss (DDP averages the gradients, so it optimises that mean):

- ITC (both contrasts): a rank scores its ``b`` rows against the ``world * b`` gathered columns, in rank order, with
  targets offset by ``rank * b``; its loss is the mean cross-entropy over its rows in each direction. Averaged over
  ranks that is the mean over all ``world * b`` rows of the ``[world * b, world * b]`` global logits: the global ITC.
  The gather keeps the gradient (backward sums every rank's gradient for a rank's rows), so DDP's average is the
  global gradient too.
- ITM: a rank classifies ``3b`` fused pairs (its positives, its texts with their negative images, its images with
  their negative texts), the negatives given as GLOBAL indices and taken from the gathered batch, so they are the
  rows the global run builds for those pairs. The mean over ``3b`` rows, averaged over ranks, is the mean over the
  ``3 * world * b`` rows of the global run.
- MLM: a mean over the rank's labelled tokens; with the same number of them on every rank the average of the rank
  means is the mean over all labelled tokens.

Inputs are fixed up front (masking, negatives), equal per-rank batch sizes; the model has no dropout. A second test
lets the model draw its own negatives: they index the global batch and never the rank's own pair.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import distributed_vlmo as harness

ATOL = RTOL = 1e-5
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return harness.two_rank_runs(tmp_path_factory.mktemp("vlmo_gloo"))


def rank_rows_of(tensor: torch.Tensor, rank: int, blocks: int = 1) -> torch.Tensor:
    """Rank ``rank``'s rows of each of ``blocks`` consecutive global blocks (ITM: positives, negative images,
    negative texts), in the rank's order."""
    return torch.cat([harness.rank_rows({"rows": block}, rank)["rows"] for block in tensor.chunk(blocks)])


def test_the_given_negatives_cross_ranks() -> None:
    """Precondition of the equality below: some rows' negatives live on the other rank."""
    for step in harness.global_steps():
        for kind in ("image", "text"):
            negatives = step[f"itm_negative_{kind}_indices"]
            rank_of_row = torch.arange(harness.GLOBAL_BATCH) // harness.LOCAL_BATCH
            assert (negatives // harness.LOCAL_BATCH != rank_of_row).any()
        assert [(harness.rank_rows(step, rank)["mlm_labels"] != -100).sum().item()
                for rank in range(harness.WORLD_SIZE)] == [harness.LABELLED_PER_RANK] * harness.WORLD_SIZE


def test_the_mean_rank_loss_and_each_term_equal_the_global_batch_loss(runs) -> None:
    ranks, reference = runs["ranks"], runs["reference"]
    for step in range(harness.STEPS):
        for name in harness.LOSS_NAMES:
            mean = torch.stack([result["terms"][step][name] for result in ranks]).mean()
            torch.testing.assert_close(mean, reference["terms"][step][name], atol=ATOL, rtol=RTOL,
                                       msg=f"step {step} {name}")
        # the terms really differ per rank: the equality is of the mean, not of identical rank losses
        assert not torch.allclose(ranks[0]["terms"][step]["loss"], ranks[1]["terms"][step]["loss"])


def test_every_gradient_averaged_by_ddp_equals_the_global_batch_gradient(runs) -> None:
    ranks, reference = runs["ranks"], runs["reference"]
    trainable = reference["trainable"]
    for step in range(harness.STEPS):
        expected = reference["grads"][step]
        assert sorted(expected) == trainable, "every parameter gets a gradient"
        for rank, result in enumerate(ranks):
            assert sorted(result["grads"][step]) == trainable
            for name, grad in expected.items():
                torch.testing.assert_close(result["grads"][step][name], grad, atol=ATOL, rtol=RTOL,
                                           msg=f"step {step} rank {rank} {name}")


def test_each_rank_contrasts_its_rows_against_the_gathered_global_batch(runs) -> None:
    """The features every rank gathers (the columns of its ``[b, world * b]`` ITC logits) are the global run's, in rank
    order, and a rank's own features are its rows of them."""
    ranks, reference = runs["ranks"], runs["reference"]
    for step in range(harness.STEPS):
        expected = reference["embeds"][step]
        for rank, result in enumerate(ranks):
            for name in harness.EMBED_NAMES:
                torch.testing.assert_close(result["gathered_embeds"][step][name], expected[name], atol=ATOL,
                                           rtol=RTOL, msg=f"step {step} rank {rank} {name}")
                torch.testing.assert_close(result["embeds"][step][name], rank_rows_of(expected[name], rank),
                                           atol=ATOL, rtol=RTOL)


def test_each_rank_fuses_the_global_runs_itm_and_mlm_rows(runs) -> None:
    """Rank ``r``'s ITM logits are the global run's rows of its pairs in each of the three blocks: the negatives it
    fused are the global images and texts the global indices name."""
    ranks, reference = runs["ranks"], runs["reference"]
    for step in range(harness.STEPS):
        for rank, result in enumerate(ranks):
            torch.testing.assert_close(result["itm_logits"][step],
                                       rank_rows_of(reference["itm_logits"][step], rank, blocks=3),
                                       atol=ATOL, rtol=RTOL)
            torch.testing.assert_close(result["mlm_logits"][step], rank_rows_of(reference["mlm_logits"][step], rank),
                                       atol=ATOL, rtol=RTOL)


def test_drawn_negatives_index_the_global_batch_and_never_the_own_pair(runs) -> None:
    for rank, result in enumerate(runs["ranks"]):
        own = rank * harness.LOCAL_BATCH + torch.arange(harness.LOCAL_BATCH)
        other_rank = set(range(harness.GLOBAL_BATCH)) - set(range(own[0], own[-1] + 1))
        for kind, drawn in result["drawn"].items():
            assert drawn.shape == (harness.NEGATIVE_DRAWS, harness.LOCAL_BATCH)
            assert drawn.min() >= 0 and drawn.max() < harness.GLOBAL_BATCH, kind
            assert not (drawn == own).any(), f"rank {rank} drew an {kind} of its own pair"
            assert other_rank & set(drawn.flatten().tolist()), f"rank {rank} drew no {kind} of the other rank"
