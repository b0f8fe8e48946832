"""FeatureQueue, EMA pairs and the momentum-model mixin."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hf_vlp.objectives.momentum import FeatureQueue, MomentumModel, copy_params, momentum_update

from tests.helpers import toy_models as helpers


def test_float_queue_starts_as_unit_columns_in_persistent_buffers() -> None:
    queue = FeatureQueue(5, 12)
    assert queue.queue.shape == (5, 12) and queue.queue.dtype == torch.float32
    torch.testing.assert_close(queue.queue.norm(dim=0), torch.ones(12))
    assert queue.ptr.dtype == torch.long and queue.ptr.shape == () and int(queue.ptr) == 0
    assert set(queue.state_dict()) == {"queue", "ptr"}


def test_enqueue_writes_columns_at_ptr_and_wraps() -> None:
    queue = FeatureQueue(2, 6)
    batches = [torch.full((2, 2), float(i)) + torch.tensor([[0.0, 0.5], [0.0, 0.5]]) for i in range(4)]
    for batch in batches:
        queue.enqueue(batch)
    # Four batches of 2 into 6 columns: the fourth overwrote columns 0-1, ptr is 8 % 6.
    assert int(queue.ptr) == 2
    expected = torch.cat([batches[3].T, batches[1].T, batches[2].T], dim=1)
    assert torch.equal(queue.queue, expected)
    columns = queue.with_batch(torch.zeros(2, 2))
    assert columns.shape == (2, 8) and torch.equal(columns[:, 2:], expected)


def test_enqueue_rejects_a_batch_that_does_not_divide_the_queue() -> None:
    queue = FeatureQueue(2, 6)
    with pytest.raises(ValueError, match=r"queue size 6 is not a multiple of the global batch 4.*drop_last"):
        queue.enqueue(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"shape \[batch, 2\]"):
        queue.enqueue(torch.zeros(3, 5))


def test_id_queue_holds_long_ids_and_accepts_flat_batches() -> None:
    queue = FeatureQueue(1, 4, dtype=torch.long, fill_value=-100)
    assert torch.equal(queue.queue, torch.full((1, 4), -100))
    queue.enqueue(torch.tensor([7, 8]))
    assert torch.equal(queue.with_batch(torch.tensor([1, 2])), torch.tensor([[1, 2, 7, 8, -100, -100]]))
    with pytest.raises(ValueError, match="fill_value"):
        FeatureQueue(1, 4, dtype=torch.long)


def test_reset_buffers_spares_tensors_loaded_by_transformers() -> None:
    queue = FeatureQueue(3, 4)
    queue.enqueue(torch.ones(2, 3))
    loaded = queue.queue.clone()
    queue.queue._is_hf_initialized = True
    queue.reset_buffers()
    assert torch.equal(queue.queue, loaded) and int(queue.ptr) == 0


def test_queues_survive_save_and_from_pretrained(tmp_path: Path) -> None:
    model = helpers.make_toy_momentum_model()
    with torch.no_grad():
        model.image_queue.enqueue(torch.ones(2, model.config.embed_dim))
        model.id_queue.enqueue(torch.tensor([3, 4]))
    model.save_pretrained(tmp_path)
    reloaded = helpers.ToyMomentumModel.from_pretrained(tmp_path, dtype=torch.float32)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    assert int(reloaded.image_queue.ptr) == 2


def test_queues_missing_from_a_checkpoint_are_initialised_not_garbage(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model = helpers.make_toy_momentum_model()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "queue" not in k}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    reloaded = helpers.ToyMomentumModel.from_pretrained(tmp_path, dtype=torch.float32)
    torch.testing.assert_close(reloaded.image_queue.queue.norm(dim=0), torch.ones(model.config.queue_size))
    assert torch.equal(reloaded.id_queue.queue, torch.full((1, model.config.queue_size), -100))
    assert int(reloaded.image_queue.ptr) == 0


def _pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8)), nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))


def test_copy_params_copies_and_freezes() -> None:
    online, momentum = _pair()
    copy_params([(online, momentum)])
    for p, p_m in zip(online.parameters(), momentum.parameters()):
        assert torch.equal(p, p_m) and not p_m.requires_grad and p.requires_grad
    with pytest.raises(ValueError, match="architectural copy"):
        copy_params([(online, nn.Linear(4, 8))])
    with pytest.raises(ValueError, match="same config"):
        copy_params([(nn.Linear(4, 8), nn.Linear(8, 4))])


def test_momentum_update_matches_the_original_formula_within_one_ulp() -> None:
    online, momentum = _pair()
    second_online, second_momentum = nn.Linear(3, 3), nn.Linear(3, 3)
    pairs = [(online, momentum), (second_online, second_momentum)]
    with torch.no_grad():
        for module in (online, momentum, second_online, second_momentum):
            for param in module.parameters():
                param.normal_()
    before = [p_m.detach().clone() for _, m in pairs for p_m in m.parameters()]
    momentum_update(pairs, 0.995)
    online_values = [p.detach() for o, _ in pairs for p in o.parameters()]
    after = [p_m.detach() for _, m in pairs for p_m in m.parameters()]
    for p, p_m_before, p_m in zip(online_values, before, after):
        literal = p_m_before * 0.995 + p * (1.0 - 0.995)
        ulp = torch.maximum(p.abs(), p_m_before.abs()) * 2.0**-23
        assert ((p_m - literal).abs() <= ulp).all()
        assert not torch.equal(p_m, p_m_before)


def test_momentum_update_limits_and_identity() -> None:
    online, momentum = _pair()
    frozen = [p.detach().clone() for p in momentum.parameters()]
    momentum_update([(online, momentum)], 1.0)
    assert all(torch.equal(a, b) for a, b in zip(momentum.parameters(), frozen))
    momentum_update([(online, momentum)], 0.0)
    assert all(torch.equal(a, b) for a, b in zip(momentum.parameters(), online.parameters()))
    momentum_update([(online, momentum)], 0.5)  # p_m == p stays exactly p
    assert all(torch.equal(a, b) for a, b in zip(momentum.parameters(), online.parameters()))
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        momentum_update([(online, momentum)], 1.5)


def test_mixin_reads_config_and_tracks_alpha() -> None:
    model = helpers.make_toy_momentum_model(momentum=0.8, alpha=0.3)
    assert isinstance(model, MomentumModel)
    assert model.momentum == 0.8
    assert model.distill_alpha == pytest.approx(0.3)
    model.distill_alpha = 0.1
    assert model.distill_alpha == pytest.approx(0.1)
    assert [name for name, _ in model.feature_queues()] == ["image_queue", "text_queue", "id_queue"]
    for online, momentum in model.momentum_pairs():
        for p, p_m in zip(online.parameters(), momentum.parameters()):
            assert torch.equal(p, p_m) and not p_m.requires_grad
