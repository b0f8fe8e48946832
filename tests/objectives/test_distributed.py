"""Two gloo processes on CPU reproduce the single-process run on the concatenated global batch."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from hf_vlp.objectives.distributed import all_gather_no_grad, all_gather_with_grad, get_rank, get_world_size, is_distributed

from tests.helpers import toy_models as helpers


def test_single_process_helpers_are_no_ops() -> None:
    assert not is_distributed()
    assert get_rank() == 0
    assert get_world_size() == 1
    tensor = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(tensor) is tensor
    gathered = all_gather_no_grad(tensor)
    assert gathered.data_ptr() == tensor.data_ptr() and not gathered.requires_grad


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out_dir = tmp_path_factory.mktemp("gloo")
    mp.spawn(helpers.distributed_worker, args=(2, str(out_dir)), nprocs=2, join=True)
    ranks = [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    return {"ranks": ranks, "reference": helpers.single_process_reference()}


@pytest.mark.slow
def test_loss_and_every_gradient_match_single_process(two_rank_results) -> None:
    ranks, reference = two_rank_results["ranks"], two_rank_results["reference"]
    for step in range(helpers.STEPS):
        mean_local_loss = (ranks[0]["losses"][step] + ranks[1]["losses"][step]) / 2
        torch.testing.assert_close(mean_local_loss, reference["losses"][step], atol=1e-6, rtol=0)
        expected = reference["grads"][step]
        assert set(expected) == {"image_proj.weight", "image_proj.bias", "text_proj.weight", "text_proj.bias",
                                 "logit_scale"}
        for rank in ranks:
            assert set(rank["grads"][step]) == set(expected)
            for name, grad in expected.items():
                torch.testing.assert_close(rank["grads"][step][name], grad, atol=1e-6, rtol=0, msg=name)


@pytest.mark.slow
def test_functional_collectives_fallback_gives_the_same_gradients(two_rank_results) -> None:
    ranks, reference = two_rank_results["ranks"], two_rank_results["reference"]
    for rank in ranks:
        for name, grad in reference["grads"][0].items():
            torch.testing.assert_close(rank["fallback_grads"][name], grad, atol=1e-6, rtol=0, msg=name)


@pytest.mark.slow
def test_queues_and_momentum_towers_identical_on_ranks_and_to_single_process(two_rank_results) -> None:
    ranks, reference = two_rank_results["ranks"], two_rank_results["reference"]
    state0, state1, expected = ranks[0]["state"], ranks[1]["state"], reference["state"]
    # Three steps of 8 into a queue of 16 wrap around once: ptr = 24 % 16.
    assert int(expected["image_queue.ptr"]) == 8
    assert torch.equal(expected["id_queue.queue"][0, :8], torch.arange(16, 24))
    for key in expected:
        assert torch.equal(state0[key], state1[key]), key
        if expected[key].is_floating_point():
            torch.testing.assert_close(state0[key], expected[key], atol=1e-6, rtol=0, msg=key)
        else:
            assert torch.equal(state0[key], expected[key]), key
