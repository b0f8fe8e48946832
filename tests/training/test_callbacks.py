"""The callbacks under the stock transformers.Trainer on a tiny ALBEF-like toy model (CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_vlp.training.callbacks import LogitScaleClampCallback, MomentumCallback, distill_alpha_at

from tests.helpers import toy_models as helpers


def make_trainer(model: nn.Module, output_dir: Path, callbacks: list[TrainerCallback], **overrides) -> Trainer:
    settings = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=3,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
        save_strategy="no",
        logging_steps=1,
        seed=11,
        data_seed=12,
        dataloader_num_workers=0,
        dataloader_drop_last=True,
        disable_tqdm=True,
    )
    settings.update(overrides)
    return Trainer(
        model=model, args=TrainingArguments(**settings), train_dataset=helpers.ToyPairs(), callbacks=callbacks
    )


class Recorder(TrainerCallback):
    """Snapshots online and momentum parameters after every optimizer step (runs after MomentumCallback)."""

    def __init__(self) -> None:
        self.snapshots: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        online = [p.detach().clone() for o, _ in model.momentum_pairs() for p in o.parameters()]
        momentum = [p.detach().clone() for _, m in model.momentum_pairs() for p in m.parameters()]
        self.snapshots.append((online, momentum))


def test_logit_scale_clamp_applies_to_every_logit_scale_parameter() -> None:
    model = nn.Module()
    model.logit_scale = nn.Parameter(torch.tensor(9.0))
    model.tower = nn.Module()
    model.tower.logit_scale = nn.Parameter(torch.tensor(-2.0))
    model.other = nn.Parameter(torch.tensor(9.0))
    wrapped = nn.DataParallel(model)  # wrappers (DDP, DataParallel) are unwrapped by the callback
    LogitScaleClampCallback().on_optimizer_step(None, None, None, model=wrapped)
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    assert model.tower.logit_scale.item() == 0.0
    assert model.other.item() == 9.0
    with pytest.raises(ValueError, match="min_value"):
        LogitScaleClampCallback(max_value=0.0, min_value=1.0)


def test_logit_scale_clamp_under_trainer(tmp_path: Path) -> None:
    model = helpers.make_toy_momentum_model()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    # lr 0: only the callback can move the parameter.
    make_trainer(model, tmp_path, [LogitScaleClampCallback()], max_steps=1, learning_rate=0.0).train()
    assert model.logit_scale.item() == pytest.approx(math.log(100))

    bare = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="no parameter named 'logit_scale'.*Linear"):
        LogitScaleClampCallback().on_train_begin(None, None, None, model=bare)


def test_ema_runs_once_per_optimizer_step_with_gradient_accumulation(tmp_path: Path) -> None:
    model = helpers.make_toy_momentum_model()
    initial = [p.detach().clone() for _, m in model.momentum_pairs() for p in m.parameters()]
    recorder = Recorder()
    make_trainer(model, tmp_path, [MomentumCallback(), recorder], gradient_accumulation_steps=2).train()

    assert len(model.alpha_trace) == 6  # 3 optimizer steps x 2 micro-batches
    assert len(recorder.snapshots) == 3
    expected = initial
    m = model.config.momentum
    for online, momentum in recorder.snapshots:
        expected = [m * e + (1 - m) * p for e, p in zip(expected, online)]
        for got, want in zip(momentum, expected):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # Online weights did move, so the check above is not trivially satisfied.
    assert not torch.allclose(recorder.snapshots[0][0][0], recorder.snapshots[-1][0][0])
    # Every micro-batch enqueued 2 columns: 12 % 8.
    assert int(model.image_queue.ptr) == int(model.id_queue.ptr) == 4


def test_queue_size_must_divide_the_global_batch(tmp_path: Path) -> None:
    model = helpers.make_toy_momentum_model(queue_size=6)
    trainer = make_trainer(model, tmp_path, [MomentumCallback()], per_device_train_batch_size=4)
    with pytest.raises(ValueError, match=r"'image_queue' has size 6.*global batch.*4 \(per_device_train_batch_size=4"):
        trainer.train()


def test_momentum_callback_rejects_a_model_without_momentum_pairs() -> None:
    with pytest.raises(ValueError, match="momentum_pairs"):
        MomentumCallback().on_optimizer_step(None, None, None, model=nn.Linear(2, 2))


def test_distill_alpha_at_is_the_linear_ramp() -> None:
    assert [distill_alpha_at(s, 0.4, 4) for s in range(6)] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.4])
    assert distill_alpha_at(0, 0.4, 0) == 0.4


@pytest.mark.parametrize(
    ("callback_kwargs", "accumulation", "expected"),
    [
        # 8 examples, batch 2: 4 optimizer steps per epoch; alpha ramps over them, one value per forward.
        ({}, 1, [0.0, 0.1, 0.2, 0.3, 0.4, 0.4]),
        # 2 optimizer steps per epoch; both micro-batches of a step see the same alpha.
        ({}, 2, [0.0, 0.0, 0.2, 0.2, 0.4, 0.4]),
        ({"alpha_warmup_steps": 3}, 1, [0.0, 0.4 / 3, 0.8 / 3, 0.4, 0.4, 0.4]),
        ({"alpha_warmup_epochs": 2.0, "alpha": 0.8}, 1, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]),
    ],
)
def test_alpha_ramp_follows_global_step(tmp_path: Path, callback_kwargs, accumulation, expected) -> None:
    model = helpers.make_toy_momentum_model(alpha=0.4)
    steps = 6 // accumulation
    make_trainer(
        model, tmp_path, [MomentumCallback(**callback_kwargs)], max_steps=steps,
        gradient_accumulation_steps=accumulation,
    ).train()
    assert model.alpha_trace == pytest.approx(expected)


def _first_logged_loss(trainer: Trainer) -> float:
    trainer.train()
    return next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)


def test_gradient_accumulation_logs_the_same_loss(tmp_path: Path) -> None:
    # lr 0 keeps the weights fixed, so two steps of GA=1 see the same two micro-batches as one step of GA=2.
    common = dict(learning_rate=0.0)
    plain = _first_logged_loss(make_trainer(
        helpers.make_toy_momentum_model(), tmp_path / "a", [], max_steps=2, logging_steps=2, **common
    ))
    accumulated = _first_logged_loss(make_trainer(
        helpers.make_toy_momentum_model(), tmp_path / "b", [], max_steps=1, gradient_accumulation_steps=2, **common
    ))
    assert accumulated == pytest.approx(plain, abs=1e-6)

    # Why the toy sets accepts_loss_kwargs=False: with the default (forward has **kwargs and the batch has
    # `labels`) Trainer stops dividing by the accumulation steps, and the mean loss is counted twice.
    trapped_model = helpers.make_toy_momentum_model()
    trapped_model.accepts_loss_kwargs = True
    trapped = _first_logged_loss(make_trainer(
        trapped_model, tmp_path / "c", [], max_steps=1, gradient_accumulation_steps=2, **common
    ))
    assert trapped == pytest.approx(2 * plain, abs=1e-5)


def test_resume_from_checkpoint_is_bit_exact(tmp_path: Path) -> None:
    def callbacks() -> list[TrainerCallback]:
        return [MomentumCallback(), LogitScaleClampCallback()]

    # 8 examples, batch 2, GA 2: 2 steps per epoch, so checkpoint-3 sits in the middle of epoch 1.
    common = dict(
        max_steps=5, gradient_accumulation_steps=2, optim="adamw_torch", learning_rate=0.05,
        lr_scheduler_type="linear", save_strategy="steps", save_steps=3,
    )
    full_model = helpers.make_toy_momentum_model()
    make_trainer(full_model, tmp_path / "full", callbacks(), **common).train()
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert (checkpoint / "model.safetensors").is_file()

    resumed_model = helpers.make_toy_momentum_model()
    make_trainer(resumed_model, tmp_path / "resumed", callbacks(), **common).train(
        resume_from_checkpoint=str(checkpoint)
    )
    assert resumed_model.alpha_trace == full_model.alpha_trace[-len(resumed_model.alpha_trace):]
    full_state, resumed_state = full_model.state_dict(), resumed_model.state_dict()
    assert set(full_state) == set(resumed_state)
    assert {"image_queue.queue", "image_queue.ptr", "id_queue.queue", "image_proj_m.weight"} <= set(full_state)
    for key, value in full_state.items():
        assert torch.equal(resumed_state[key], value), key
