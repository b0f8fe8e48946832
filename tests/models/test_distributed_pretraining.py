"""Momentum pre-training (ALBEF, BLIP) on two gloo ranks (DDP) against a single-process reference.

What each model computes per rank (``VlpAlbefForPretraining.forward``, ``VlpBlipForPretraining.forward``): ITC
compares the LOCAL online features with [local momentum features ; queue] - the other rank's current rows reach a
rank only through the queue one step later, as in the originals; ITM and MLM/LM are means over the local rows /
local labelled tokens. So the distributed loss is the mean of per-rank losses, and the reference computes exactly
that on one process from the same global batch: each rank's shard forwarded against the same queue, gradient of the
mean of the per-rank losses. The queues, though, receive the all-gathered momentum features of the whole global
batch, so they equal those of a single-process forward of the concatenated global batch, and are identical on both
ranks.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers import distributed_pretraining as harness

# parameters each architecture must train, and the online projection its momentum copy must move away from
TRAINED = {
    "albef": ("temp", "mlm_head.dense.weight"),
    "blip": ("temp", "lm_head.dense.weight", "text_model.transformer.encoder.layers.0.causal_attn.qkv.weight"),
}
ONLINE_VISION_PROJ = {"albef": "vision_proj.weight", "blip": "vision_proj.weight"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=sorted(harness.RUNS))
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def runs(arch: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return harness.two_rank_runs(arch, tmp_path_factory.mktemp(f"{arch}_gloo"))


def test_each_rank_loss_equals_the_reference_loss_of_its_shard(runs, arch: str) -> None:
    harness.assert_rank_losses_equal_the_reference(runs, arch)


def test_every_gradient_equals_the_gradient_of_the_mean_per_rank_loss(runs, arch: str) -> None:
    trainable = runs["reference"]["trainable"]
    assert not any(name.startswith("momentum_") for name in trainable)
    assert all(name in trainable for name in TRAINED[arch])
    harness.assert_gradients_equal_the_reference(runs)


def test_queues_agree_across_ranks_and_with_the_global_batch_run(runs) -> None:
    harness.assert_queues_equal_the_global_batch_run(runs)


def test_global_batch_momentum_features_are_the_concatenated_shard_features(runs) -> None:
    reference = runs["reference"]
    for step in range(harness.STEPS):
        for modality in ("image", "text"):
            torch.testing.assert_close(
                reference["global_momentum"][step][modality], reference["shard_momentum"][step][modality],
                atol=harness.ATOL, rtol=harness.RTOL,
            )


def test_weights_and_momentum_towers_after_training_match(runs, arch: str) -> None:
    expected = runs["reference"]["state"]
    initial = harness.RUNS[arch].make_model().state_dict()
    assert not torch.allclose(expected["momentum_vision_proj.weight"], initial["momentum_vision_proj.weight"])
    assert not torch.allclose(expected["momentum_vision_proj.weight"], expected[ONLINE_VISION_PROJ[arch]])
    harness.assert_final_states_equal_the_reference(runs)


def test_itc_is_per_rank_so_a_global_batch_loss_would_differ(runs, arch: str) -> None:
    """The equality above is with the mean of per-rank losses, not with one global-batch forward: its ITC also has
    the other rank's current rows as negatives, which changes the loss measurably (BLIP's LM loss is moreover a mean
    over all labelled tokens, not of per-rank means)."""
    differences = harness.per_rank_itc_gaps(runs)
    if arch == "albef":
        assert all(difference > 1e-3 for difference in differences), differences
    else:
        # small at initialisation, where every feature is alike; clear once training has spread them
        assert min(differences) > 10 * harness.ATOL and max(differences) > 1e-2, differences
