"""CoCa's joint training on two gloo ranks (DDP, ``b`` = 4 pairs each) equals one process on the concatenated global
batch of ``2b`` pairs: every loss term, every gradient and the weights after two SGD steps (harness:
``tests/helpers/distributed_coca.py``).

Why the mean of the per-rank losses is the global loss (DDP averages the gradients, so it optimises that mean):

- contrastive term: a rank scores its ``b`` rows against the ``world * b`` gathered columns, in rank order, with
  targets offset by ``rank * b``; its loss is the mean cross-entropy over its rows in each direction. Averaged over
  ranks that is the mean over all ``world * b`` rows of the ``[world * b, world * b]`` global logits. The gather keeps
  the gradient (backward sums every rank's gradient for a rank's rows), so DDP's average is the global gradient too.
- captioning term: each row's next-token cross-entropy depends on that row alone, and a rank's term is the mean over
  its caption tokens; with as many caption tokens on every rank (as here; open_clip's loss has the same per-rank
  mean) the average of the rank means is the mean over all caption tokens of the global batch.

Both terms keep the config's weights (1 and 2); the model has no dropout.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import distributed_coca as harness
from tests.helpers.gloo_ranks import ATOL, RTOL, assert_mean_rank_terms_equal_the_reference

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return harness.two_rank_runs(tmp_path_factory.mktemp("coca_gloo"))


def test_every_rank_holds_as_many_caption_tokens_in_rows_of_different_lengths() -> None:
    """Precondition of the equality below (see the module docstring)."""
    for step in harness.global_steps():
        counts = [harness.caption_tokens(harness.rank_rows(step, rank)) for rank in range(harness.WORLD_SIZE)]
        assert len(set(counts)) == 1, counts
        lengths = harness.rank_rows(step, 0)["attention_mask"].sum(dim=1)
        assert len(set(lengths.tolist())) > 1


def test_the_mean_rank_loss_and_each_term_equal_the_global_batch_loss(runs) -> None:
    ranks, reference = runs["ranks"], runs["reference"]
    assert_mean_rank_terms_equal_the_reference(ranks, reference, harness.LOSS_NAMES, harness.STEPS)
    for step in range(harness.STEPS):
        # the terms really differ per rank: the equality is of the mean, not of identical rank losses
        for name in ("contrastive_loss", "caption_loss"):
            assert not torch.allclose(ranks[0]["terms"][step][name], ranks[1]["terms"][step][name]), name


def test_each_rank_contrasts_its_rows_against_the_gathered_global_batch(runs) -> None:
    """A rank's contrastive term is not the loss of its own ``[b, b]`` similarities (the local logits the output
    carries) but that of its rows against every rank's texts and images: the global run's rows."""
    ranks, reference = runs["ranks"], runs["reference"]
    labels = torch.arange(harness.LOCAL_BATCH)
    for step in range(harness.STEPS):
        global_logits = reference["logits_per_image"][step]  # [2b, 2b]
        for rank, result in enumerate(ranks):
            local = result["logits_per_image"][step]
            assert local.shape == (harness.LOCAL_BATCH, harness.LOCAL_BATCH)
            rows = slice(rank * harness.LOCAL_BATCH, (rank + 1) * harness.LOCAL_BATCH)
            torch.testing.assert_close(local, global_logits[rows, rows], atol=ATOL, rtol=RTOL)
            local_only = (torch.nn.functional.cross_entropy(local, labels)
                          + torch.nn.functional.cross_entropy(local.T, labels)) / 2
            gathered = (torch.nn.functional.cross_entropy(global_logits[rows], labels + rows.start)
                        + torch.nn.functional.cross_entropy(global_logits[:, rows].T, labels + rows.start)) / 2
            term = result["terms"][step]["contrastive_loss"]
            torch.testing.assert_close(term, gathered, atol=ATOL, rtol=RTOL, msg=f"step {step} rank {rank}")
            assert not torch.allclose(term, local_only, atol=1e-3), "the rank contrasted its own batch only"


def test_every_gradient_averaged_by_ddp_and_the_trained_weights_equal_the_global_batch_run(runs) -> None:
    ranks, reference = runs["ranks"], runs["reference"]
    for step in range(harness.STEPS):
        expected = reference["grads"][step]
        assert len(expected) == len(dict(harness.make_model().named_parameters())), "every parameter gets a gradient"
        for rank, result in enumerate(ranks):
            assert sorted(result["grads"][step]) == sorted(expected)
            for name, grad in expected.items():
                torch.testing.assert_close(result["grads"][step][name], grad, atol=ATOL, rtol=RTOL,
                                           msg=f"step {step} rank {rank} {name}")
    initial = harness.make_model().state_dict()
    for name, weight in reference["weights"].items():
        for rank, result in enumerate(ranks):
            torch.testing.assert_close(result["weights"][name], weight, atol=ATOL, rtol=RTOL, msg=f"rank {rank} {name}")
    assert not torch.allclose(reference["weights"]["logit_scale"], initial["logit_scale"])
