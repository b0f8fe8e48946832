"""Checks every momentum-contrastive head shares (ALBEF and BLIP pre-training and retrieval today): recorded-step
inputs and outputs, frozen EMA copies, feature queues, the temperature clamp, the callback's alpha, Trainer
overfitting and save/load round trips.

The checks take the model and what differs between architectures (its temperature, its batch) as arguments; the
architecture-specific assertions stay in the test that calls them. ``MomentumPretrainingTests`` runs the checks every
pre-training head shares as one test class: a new momentum architecture subclasses it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel, Trainer, TrainingArguments
from transformers.utils import ModelOutput

from hf_vlp.objectives.momentum import FeatureQueue, momentum_update
from hf_vlp.training.callbacks import MomentumCallback

from .fixtures import fixture_metadata, fixture_tensors

Batch = dict[str, torch.Tensor]


def ema_step(model: nn.Module) -> None:
    """What Trainer does after an optimizer step: the callback's EMA update (the originals' at forward start)."""
    MomentumCallback().on_optimizer_step(None, None, None, model=model)


def seed_as_recorded(fixture: str) -> None:
    """Seed torch as the original's recorded loss forward was seeded, so seeded draws replay its random stream."""
    torch.manual_seed(int(fixture_metadata(fixture)["loss_seed"]))


def recorded_momentum_outputs(out: ModelOutput, temp: torch.Tensor) -> Batch:
    """A momentum head's forward outputs under the names the recorded pre-training fixtures give them."""
    return {
        "image_feat": out.image_embeds,
        "text_feat": out.text_embeds,
        "image_feat_m": out.momentum_image_embeds,
        "text_feat_m": out.momentum_text_embeds,
        "sim_i2t_with_queue": out.logits_per_image,
        "sim_t2i_with_queue": out.logits_per_text,
        "sim_i2t": out.image_embeds @ out.text_embeds.T / temp,
        "itm_logits_pos": out.itm_logits[:4],
    }


def recorded_itm_step_inputs(fixture: str) -> Batch:
    """A recorded pre-training fixture's batch plus the original forward's hard-negative draws."""
    inputs, expected = fixture_tensors(fixture)
    return {
        "input_ids": inputs["input_ids"],
        "pixel_values": inputs["pixel_values"],
        "attention_mask": inputs["attention_mask"],
        "itm_negative_image_indices": expected["itm_neg_image_idx_for_text"],
        "itm_negative_text_indices": expected["itm_neg_text_idx_for_image"],
    }


def assert_seeded_forward_replays_the_recorded_negatives(
    model: nn.Module, fixture: str, **forward_kwargs: object
) -> ModelOutput:
    """After an EMA step, seeded as the recording was, the forward on the fixture's batch draws the original's hard
    negatives; returns the output for the architecture's own checks."""
    inputs, expected = fixture_tensors(fixture)
    ema_step(model)
    seed_as_recorded(fixture)
    with torch.no_grad():
        out = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], **forward_kwargs)
    assert torch.equal(out.itm_negative_image_indices, expected["itm_neg_image_idx_for_text"])
    assert torch.equal(out.itm_negative_text_indices, expected["itm_neg_text_idx_for_image"])
    return out


def assert_momentum_towers_are_frozen_copies(model: nn.Module) -> None:
    """Every EMA pair starts equal, the momentum side frozen and the online side trainable; two feature queues."""
    for online, momentum in model.momentum_pairs():
        for param, param_m in zip(online.parameters(), momentum.parameters(), strict=True):
            assert torch.equal(param, param_m) and not param_m.requires_grad and param.requires_grad
    assert [name for name, _ in model.feature_queues()] == ["image_queue", "text_queue"]


def assert_no_momentum_gradient(model: nn.Module) -> None:
    """After a backward: no ``momentum_*`` parameter got a gradient."""
    for name, param in model.named_parameters():
        if name.startswith("momentum_"):
            assert param.grad is None, name


def assert_momentum_frozen(model: nn.Module) -> None:
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("momentum_"))


def assert_training_forwards_enqueue_and_wrap(model: nn.Module, batch_of_step: Callable[[int], Batch]) -> None:
    """Three training forwards of 8 rows through queues of 16: the pointer wraps, the newest columns hold the
    momentum features; a forward with ``update_queues=False`` leaves the queues alone."""
    queues = []
    for step in range(3):
        out = model(**batch_of_step(step), return_loss=True)
        queues.append((out.momentum_image_embeds.detach(), out.momentum_text_embeds.detach()))
        assert int(model.image_queue.ptr) == int(model.text_queue.ptr) == (8 * (step + 1)) % 16
    torch.testing.assert_close(model.image_queue.queue[:, :8], queues[2][0].T)  # step 2 overwrote columns 0-7
    torch.testing.assert_close(model.text_queue.queue[:, 8:], queues[1][1].T)
    before = model.image_queue.queue.clone()
    model(**batch_of_step(0), update_queues=False)
    assert torch.equal(model.image_queue.queue, before)


def assert_temperature_clamped_in_forward(model: nn.Module, temp: torch.Tensor, batch: Batch) -> None:
    """The forward clamps the learnable temperature into [0.001, 0.5] in place, as the originals do."""
    for value, clamped in ((0.9, 0.5), (1e-5, 0.001), (0.0625, 0.0625)):
        with torch.no_grad():
            temp.fill_(value)
            out = model(**batch)
        assert temp.item() == pytest.approx(clamped)
        torch.testing.assert_close(out.logits_per_image, out.image_embeds @ torch.cat(
            [out.momentum_text_embeds.T, model.text_queue.queue], dim=1) / clamped)


def assert_alpha_defaults_to_the_callbacks_value(model: nn.Module, fixed_inputs: dict[str, object]) -> None:
    """Without ``alpha`` the forward uses ``distill_alpha`` (0.4 until ``MomentumCallback`` ramps it)."""
    assert model.distill_alpha == 0.4
    model.distill_alpha = 0.0
    at_zero = model(**fixed_inputs).loss_itc
    torch.testing.assert_close(at_zero, model(**fixed_inputs, alpha=0.0).loss_itc)
    assert not torch.allclose(at_zero, model(**fixed_inputs, alpha=0.4).loss_itc)


def assert_fresh_queues_are_normalised_noise(model: nn.Module) -> None:
    """A fresh model's queues (8-dim features, 16 slots) are distinct unit-norm noise at pointer 0."""
    assert isinstance(model.image_queue, FeatureQueue) and model.image_queue.queue.shape == (8, 16)
    torch.testing.assert_close(model.image_queue.queue.norm(dim=0), torch.ones(16))
    assert not torch.equal(model.image_queue.queue, model.text_queue.queue) and int(model.text_queue.ptr) == 0


def assert_same_state(loaded: nn.Module, model: nn.Module) -> None:
    """Every tensor of ``loaded`` equals ``model``'s of the same name exactly."""
    reference = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, reference[key]), key


def save_after_a_queue_update(model: nn.Module, directory: Path, inputs: dict[str, object], ema: bool = True) -> Batch:
    """(An EMA step, then) a forward that enqueues ``inputs`` (4 rows: ptr 0 -> 4), then ``save_pretrained``; returns
    the saved tensors."""
    if ema:
        ema_step(model)
    with torch.no_grad():
        model(**inputs, update_queues=True)
    model.save_pretrained(directory)
    return load_file(directory / "model.safetensors")


def reload_same_state(model_class: type[PreTrainedModel], directory: Path, model: nn.Module) -> PreTrainedModel:
    """``model_class`` loaded from ``directory`` in eval mode, checked to hold ``model``'s every tensor exactly and
    to keep the momentum towers frozen."""
    loaded = model_class.from_pretrained(directory, dtype=torch.float32).eval()
    assert_same_state(loaded, model)
    assert_momentum_frozen(loaded)
    return loaded


def assert_same_loss(loaded: nn.Module, model: nn.Module, inputs: dict[str, object]) -> None:
    """The two models' losses on ``inputs`` are bit-identical."""
    with torch.no_grad():
        expected = model(**inputs).loss
        actual = loaded(**inputs).loss
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------- Trainer runs


class FixedRows(torch.utils.data.Dataset):
    """The rows of one batch as a dataset of examples."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(next(iter(self.batch.values())))

    def __getitem__(self, index: int) -> Batch:
        return {key: value[index] for key, value in self.batch.items()}


def stack_examples(examples: list[Batch]) -> Batch:
    return {key: torch.stack([example[key] for example in examples]) for key in examples[0]}


def collate_with_loss(examples: list[Batch]) -> dict[str, object]:
    """Stacked examples asking the model for its loss."""
    return {**stack_examples(examples), "return_loss": True}


def widen_initialisation(config: PreTrainedConfig, initializer_range: float = 0.2) -> None:
    """Wider init than BERT's 0.02, on the config and both towers: at tiny sizes the [CLS] states are otherwise
    near-identical across examples."""
    for settings in (config, config.vision_config, config.text_config):
        settings.initializer_range = initializer_range


def train_with_momentum_callback(
    model: nn.Module, output_dir: Path, dataset: torch.utils.data.Dataset, max_steps: int,
    data_collator: Callable | None = None,
) -> list[float]:
    """``max_steps`` constant-LR (5e-3) steps of 8 examples on the stock Trainer with ``MomentumCallback`` (alpha
    warm-up 10 steps); returns the logged training losses, one per step."""
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=5e-3,
        warmup_steps=0, logging_steps=1, report_to=[], save_strategy="no", dataloader_drop_last=True, use_cpu=True,
        lr_scheduler_type="constant", seed=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=data_collator,
                      callbacks=[MomentumCallback(alpha_warmup_steps=10)])
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def assert_trainer_overfits_with_the_momentum_callback(
    model: nn.Module, output_dir: Path, dataset: torch.utils.data.Dataset, max_steps: int, ratio: float,
    data_collator: Callable | None = None,
) -> None:
    """A pre-training head on ``train_with_momentum_callback``: the loss falls (``assert_loss_fell``), alpha is
    ramped to 0.4 after 10 steps, the EMA moved the (still frozen) momentum projection and ``max_steps`` batches of 8
    went through a queue of 8 (pointer back at 0)."""
    momentum_before = model.momentum_vision_proj.weight.detach().clone()
    losses = train_with_momentum_callback(model, output_dir, dataset, max_steps, data_collator)
    assert_loss_fell(losses, max_steps, ratio)
    assert model.distill_alpha == pytest.approx(0.4)  # ramped to alpha_max after 10 steps
    assert not torch.equal(model.momentum_vision_proj.weight, momentum_before)  # EMA ran
    assert not model.momentum_vision_proj.weight.requires_grad
    assert int(model.image_queue.ptr) == 0


def train_with_adam(
    model: nn.Module, step_loss: Callable[[int], torch.Tensor], steps: int, lr: float, ema_momentum: float | None = None
) -> list[float]:
    """``steps`` Adam steps on ``step_loss(step)``, each followed by the EMA of a model with momentum pairs (at
    ``ema_momentum``, default the model's own), as ``MomentumCallback`` does; leaves the model in eval mode and
    returns the training losses."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        loss = step_loss(step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if hasattr(model, "momentum_pairs"):
            momentum_update(model.momentum_pairs(), model.momentum if ema_momentum is None else ema_momentum)
        losses.append(loss.item())
    model.eval()
    return losses


def assert_loss_fell(losses: list[float], steps: int, ratio: float) -> None:
    """One loss per step, and the mean of the last five is below ``ratio`` times the mean of the first five."""
    assert len(losses) == steps
    assert sum(losses[-5:]) / 5 < ratio * sum(losses[:5]) / 5, losses


# --------------------------------------------------------------------------------------------------- shared tests


class MomentumPretrainingTests:
    """The pre-training tests every momentum-contrastive head shares, written once: a test module subclasses this as
    ``Test<Arch>Pretraining`` (pytest collects the subclass, not this base) and sets the attributes below.

    ``extra_loss_inputs`` adds the architecture's own fixed draws (ALBEF's MLM masking) to a loss forward.
    """

    model_class: type[PreTrainedModel]
    tiny_config: Callable[..., PreTrainedConfig]  # tiny config (8-dim features, queues of 16) taking overrides
    tiny_batch: Callable[..., Batch]  # (batch=8, seed=0) -> input_ids, attention_mask, pixel_values
    fixture_model: Callable[[], PreTrainedModel]  # the converted recorded original, in eval mode
    recorded_step_inputs: Callable[[], Batch]  # the fixture's batch with the original's recorded draws
    overfit_steps: int  # Trainer steps of the overfitting run, and the ratio its final loss must fall below
    overfit_ratio: float
    overfit_overrides: dict[str, object] = {}  # tiny_config overrides of the overfitting run
    # the architecture's own input errors, checked on (eval model, tiny batch) after the shared ones
    check_own_errors: Callable[[nn.Module, Batch], None]
    # the architecture's own round-trip checks on (model, reloaded model, saved tensors, directory)
    check_round_trip: Callable[[nn.Module, nn.Module, Batch, Path], None]

    def extra_loss_inputs(self, model: nn.Module, batch: Batch) -> Batch:
        return {}

    def test_temp_is_clamped_in_forward_as_the_original_does(self) -> None:
        model = self.fixture_model()
        assert_temperature_clamped_in_forward(model, model.temp, self.recorded_step_inputs())

    def test_training_forwards_enqueue_momentum_features_and_wrap_the_pointer(self) -> None:
        torch.manual_seed(0)
        model = self.model_class(self.tiny_config(queue_size=16)).train()
        assert_training_forwards_enqueue_and_wrap(model, lambda step: self.tiny_batch(seed=step))

    def test_alpha_defaults_to_the_callbacks_value(self) -> None:
        torch.manual_seed(0)
        model = self.model_class(self.tiny_config()).eval()
        batch = self.tiny_batch()
        draws = {"itm_negative_image_indices": torch.roll(torch.arange(8), 1),
                 "itm_negative_text_indices": torch.roll(torch.arange(8), 2)}
        fixed = {**batch, **draws, **self.extra_loss_inputs(model, batch), "return_loss": True}
        assert_alpha_defaults_to_the_callbacks_value(model, fixed)

    def test_trainer_overfits_eight_pairs_with_the_momentum_callback(self, tmp_path: Path) -> None:
        torch.manual_seed(0)
        config = self.tiny_config(queue_size=8, momentum=0.9, **self.overfit_overrides)
        widen_initialisation(config)
        pairs = FixedRows(self.tiny_batch(8, seed=3))
        assert_trainer_overfits_with_the_momentum_callback(
            self.model_class(config), tmp_path, pairs, self.overfit_steps, self.overfit_ratio, collate_with_loss
        )

    def test_errors_say_what_to_do(self) -> None:
        model = self.model_class(self.tiny_config()).eval()
        batch = self.tiny_batch()
        with pytest.raises(ValueError, match="8 images and 3 texts"):
            model(batch["input_ids"][:3], batch["pixel_values"])
        with pytest.raises(ValueError, match="both itm_negative_image_indices and itm_negative_text_indices"):
            model(**batch, itm_negative_image_indices=torch.zeros(8, dtype=torch.long))
        self.check_own_errors(model, batch)
        with pytest.raises(ValueError, match="not a multiple of the global batch"):
            self.model_class(self.tiny_config(queue_size=12)).train()(**batch, return_loss=True)

    def test_save_load_round_trip_keeps_queues_momentum_towers_and_ties(self, tmp_path: Path) -> None:
        """After an EMA step and a queue update (ptr 0 -> 4) the saved head reloads exactly, queues included."""
        model = self.fixture_model()
        saved = save_after_a_queue_update(model, tmp_path, self.recorded_step_inputs())
        assert {"image_queue.queue", "image_queue.ptr", "text_queue.queue", "text_queue.ptr"} <= set(saved)
        loaded = reload_same_state(self.model_class, tmp_path, model)
        assert int(loaded.image_queue.ptr) == int(loaded.text_queue.ptr) == 4
        assert_same_loss(loaded, model, {**self.recorded_step_inputs(), "return_loss": True})
        self.check_round_trip(model, loaded, saved, tmp_path)

    def test_fresh_queues_are_normalised_noise_and_queue_modules_are_feature_queues(self) -> None:
        torch.manual_seed(0)
        assert_fresh_queues_are_normalised_noise(self.model_class(self.tiny_config()))
