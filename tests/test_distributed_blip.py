"""BLIP pre-training on two gloo ranks (DDP) against a single-process reference.

What the model computes per rank (``VlpBlipForPretraining.forward``): ITC compares the LOCAL online features with
[local momentum features ; queue] - the other rank's current rows reach a rank only through the queue one step later,
as in the original; ITM and LM are means over the local rows / local labelled tokens. So the distributed loss is the
mean of per-rank losses, and the reference computes exactly that on one process from the same global batch: each
rank's shard forwarded against the same queue, gradient of the mean of the per-rank losses. The queues, though,
receive the all-gathered momentum features of the whole global batch, so they equal those of a single-process
forward of the concatenated global batch, and are identical on both ranks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp


_TESTS_DIR = str(Path(__file__).resolve().parent)  # holds _blip_dist_helpers.py
if _TESTS_DIR not in sys.path:
    sys.path.append(_TESTS_DIR)
import _blip_dist_helpers as helpers  # noqa: E402


ATOL = RTOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out_dir = tmp_path_factory.mktemp("blip_gloo")
    mp.spawn(helpers.distributed_worker, args=(helpers.WORLD_SIZE, str(out_dir)), nprocs=helpers.WORLD_SIZE, join=True)
    ranks = [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(helpers.WORLD_SIZE)]
    return {"ranks": ranks, "reference": helpers.single_process_reference()}


@pytest.mark.slow
def test_each_rank_loss_equals_the_reference_loss_of_its_shard(runs) -> None:
    ranks, reference = runs["ranks"], runs["reference"]
    for step in range(helpers.STEPS):
        for rank, result in enumerate(ranks):
            (losses,) = result["losses"][step]
            for name in helpers.LOSS_NAMES:
                torch.testing.assert_close(
                    losses[name], reference["losses"][step][rank][name], atol=ATOL, rtol=RTOL,
                    msg=f"step {step} rank {rank} {name}",
                )


@pytest.mark.slow
def test_every_gradient_equals_the_gradient_of_the_mean_per_rank_loss(runs) -> None:
    ranks, reference = runs["ranks"], runs["reference"]
    trainable = reference["trainable"]
    assert not any(name.startswith("momentum_") for name in trainable)
    assert "temp" in trainable and "lm_head.dense.weight" in trainable
    assert "text_model.transformer.encoder.layers.0.causal_attn.qkv.weight" in trainable
    for step in range(helpers.STEPS):
        expected = reference["grads"][step]
        assert sorted(expected) == trainable, "every trainable parameter gets a gradient"
        for result in ranks:
            assert result["trainable"] == trainable
            grads = result["grads"][step]
            assert sorted(grads) == trainable
            for name, grad in expected.items():
                torch.testing.assert_close(grads[name], grad, atol=ATOL, rtol=RTOL, msg=f"step {step} {name}")
        for name in expected:
            assert torch.equal(ranks[0]["grads"][step][name], ranks[1]["grads"][step][name]), name


@pytest.mark.slow
def test_queues_agree_across_ranks_and_with_the_global_batch_run(runs) -> None:
    ranks, reference = runs["ranks"], runs["reference"]
    for key in helpers.QUEUE_KEYS:
        assert torch.equal(ranks[0]["initial_queues"][key], reference["initial_queues"][key]), key
        assert torch.equal(ranks[1]["initial_queues"][key], reference["initial_queues"][key]), key
    for step in range(helpers.STEPS):
        expected = reference["queues"][step]
        written = (step + 1) * helpers.GLOBAL_BATCH
        assert int(expected["image_queue.ptr"]) == int(expected["text_queue.ptr"]) == written % helpers.QUEUE_SIZE
        for key in helpers.QUEUE_KEYS:
            assert torch.equal(ranks[0]["queues"][step][key], ranks[1]["queues"][step][key]), f"step {step} {key}"
            torch.testing.assert_close(
                ranks[0]["queues"][step][key], expected[key], atol=ATOL, rtol=RTOL, msg=f"step {step} {key}"
            )
        # the newest columns hold this step's global batch: rank 0's rows, then rank 1's
        start = (written - helpers.GLOBAL_BATCH) % helpers.QUEUE_SIZE
        columns = slice(start, start + helpers.GLOBAL_BATCH)
        for modality in ("image", "text"):
            newest = ranks[0]["queues"][step][f"{modality}_queue.queue"][:, columns].T
            torch.testing.assert_close(
                newest, reference["global_momentum"][step][modality], atol=ATOL, rtol=RTOL, msg=f"{modality} {step}"
            )


@pytest.mark.slow
def test_weights_and_momentum_towers_after_training_match(runs) -> None:
    ranks, reference = runs["ranks"], runs["reference"]
    expected = reference["state"]
    initial = helpers.make_model().state_dict()
    assert not torch.allclose(expected["momentum_vision_proj.weight"], initial["momentum_vision_proj.weight"])
    assert not torch.allclose(expected["momentum_vision_proj.weight"], expected["vision_proj.weight"])
    for key, value in expected.items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
        if value.is_floating_point():
            torch.testing.assert_close(ranks[0]["state"][key], value, atol=ATOL, rtol=RTOL, msg=key)
        else:
            assert torch.equal(ranks[0]["state"][key], value), key


@pytest.mark.slow
def test_itc_is_per_rank_so_a_global_batch_loss_would_differ(runs) -> None:
    """The equality above is with the mean of per-rank losses, not with one global-batch forward: its ITC also has
    the other rank's current rows as negatives, which changes the loss measurably; its LM loss is a mean over all
    labelled tokens, not of per-rank means."""
    reference = runs["reference"]
    differences = []
    for step in range(helpers.STEPS):
        per_rank = torch.stack([losses["loss_itc"] for losses in reference["losses"][step]]).mean()
        differences.append(float((per_rank - reference["global_losses"][step]["loss_itc"]).abs()))
    # small at initialisation, where every feature is alike; clear once training has spread them
    assert min(differences) > 10 * ATOL and max(differences) > 1e-2, differences
