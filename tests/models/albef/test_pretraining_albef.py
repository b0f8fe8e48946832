"""ALBEF pretraining head: parity with the original's recorded pretraining step (albef_pretrain fixture), momentum and
queue machinery, Trainer overfitting, save/load round trip."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModel, Trainer, TrainingArguments

from conversion.convert_albef import convert_albef_checkpoint
from hf_vlp.models.albef import VlpAlbefConfig, VlpAlbefForMaskedLM, VlpAlbefForPretraining, VlpAlbefModel
from hf_vlp.objectives.momentum import FeatureQueue
from hf_vlp.training.callbacks import MomentumCallback

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "originals" / "albef_pretrain"
FEATURE_ATOL, LOGIT_ATOL = 1e-5, 1e-4
ALPHA = 0.4  # the fixture's alpha


@functools.cache
def converted_state() -> tuple[VlpAlbefConfig, dict[str, torch.Tensor]]:
    result = convert_albef_checkpoint(
        FIXTURE / "checkpoint.pth", original_config=FIXTURE / "original_config.json", tokenizer=FIXTURE / "vocab.txt"
    )
    assert isinstance(result.model, VlpAlbefForPretraining)
    return result.model.config, {key: value.clone() for key, value in result.model.state_dict().items()}


def fixture_model() -> VlpAlbefForPretraining:
    config, state = converted_state()
    model = VlpAlbefForPretraining(VlpAlbefConfig.from_dict(config.to_dict())).eval()
    model.load_state_dict(state, strict=True)
    return model


@functools.cache
def fixture_tensors() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return load_file(FIXTURE / "inputs.safetensors"), load_file(FIXTURE / "outputs.safetensors")


def recorded_step_inputs() -> dict[str, torch.Tensor]:
    """The fixture's batch plus the original forward's random draws (hard negatives, MLM masking)."""
    inputs, expected = fixture_tensors()
    return {
        "input_ids": inputs["input_ids"],
        "pixel_values": inputs["pixel_values"],
        "attention_mask": inputs["attention_mask"],
        "itm_negative_image_indices": expected["itm_neg_image_idx_for_text"],
        "itm_negative_text_indices": expected["itm_neg_text_idx_for_image"],
        "mlm_input_ids": expected["mlm_masked_input_ids_seeded"],
        "mlm_labels": expected["mlm_labels_seeded"],
    }


def ema_step(model: VlpAlbefForPretraining) -> None:
    """What Trainer does after an optimizer step: the callback's EMA update (the original's at forward start)."""
    MomentumCallback().on_optimizer_step(None, None, None, model=model)


def tiny_config(**overrides) -> VlpAlbefConfig:
    vision = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=8)
    text = dict(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        max_position_embeddings=12, fusion_layer=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        cls_token_id=2, mask_token_id=4,
    )
    settings = {"embed_dim": 8, "queue_size": 16, **overrides}
    return VlpAlbefConfig(vision_config=vision, text_config=text, **settings)


def tiny_batch(batch: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 40, (batch, 7), generator=generator)
    input_ids[:, 0] = 2
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1::2, 5:] = 0
    input_ids[attention_mask == 0] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": torch.randn(batch, 3, 16, 16, generator=generator)}


# --------------------------------------------------------------------------------------------------- parity


def test_parity_momentum_features_and_similarities_against_the_queue() -> None:
    """Before any update: momentum features, [batch ; queue] similarities; eval forwards leave the queues alone."""
    model = fixture_model()
    _, expected = fixture_tensors()
    queue_before = model.image_queue.queue.clone()
    with torch.no_grad():
        out = model(**recorded_step_inputs())
    actual = {
        "image_feat": out.image_embeds,
        "text_feat": out.text_embeds,
        "image_feat_m": out.momentum_image_embeds,
        "text_feat_m": out.momentum_text_embeds,
        "sim_i2t_with_queue": out.logits_per_image,
        "sim_t2i_with_queue": out.logits_per_text,
        "sim_i2t": out.image_embeds @ out.text_embeds.T / model.albef.temp,
        "itm_logits_pos": out.itm_logits[:4],
    }
    for name, value in actual.items():
        atol = LOGIT_ATOL if name.startswith(("sim", "itm")) else FEATURE_ATOL
        torch.testing.assert_close(value, expected[name], atol=atol, rtol=0, msg=name)
    assert out.loss is None and out.loss_itc is None and out.loss_itm is None and out.loss_mlm is None
    assert torch.equal(model.image_queue.queue, queue_before) and int(model.image_queue.ptr) == 0


def test_parity_one_pretraining_step_losses_queues_and_momentum_weights() -> None:
    """EMA update, then the forward with the recorded draws: losses, queues/ptr and EMA'd weights as recorded."""
    model = fixture_model()
    _, expected = fixture_tensors()
    online_words = model.albef.text_model.get_input_embeddings().weight.detach().clone()
    momentum_words = model.momentum_text_model.get_input_embeddings().weight.detach().clone()
    ema_step(model)
    with torch.no_grad():
        out = model(**recorded_step_inputs(), return_loss=True, alpha=ALPHA, update_queues=True)
    for name, value in {
        "loss_ita": out.loss_itc, "loss_itm": out.loss_itm, "loss_mlm": out.loss_mlm, "loss_total": out.loss,
    }.items():
        torch.testing.assert_close(value, expected[name], atol=LOGIT_ATOL, rtol=0, msg=name)
    torch.testing.assert_close(out.loss, out.loss_itc + out.loss_itm + out.loss_mlm)
    torch.testing.assert_close(model.image_queue.queue, expected["image_queue_after"], atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(model.text_queue.queue, expected["text_queue_after"], atol=FEATURE_ATOL, rtol=0)
    assert int(model.image_queue.ptr) == int(model.text_queue.ptr) == int(expected["queue_ptr_after"])
    torch.testing.assert_close(model.momentum_vision_proj.weight, expected["vision_proj_m.weight_after"], atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(model.momentum_text_proj.bias, expected["text_proj_m.bias_after"], atol=FEATURE_ATOL, rtol=0)
    # the MLM decoder is tied to the word embeddings: one EMA step, not two
    torch.testing.assert_close(
        model.momentum_text_model.get_input_embeddings().weight, 0.995 * momentum_words + 0.005 * online_words,
        atol=1e-6, rtol=0,
    )
    assert model.momentum_mlm_head.decoder.weight is model.momentum_text_model.get_input_embeddings().weight
    assert out.itm_logits.shape == (12, 2) and out.itm_labels.tolist() == [1] * 4 + [0] * 8


def test_seeded_forward_replays_the_originals_random_draws() -> None:
    """With the original's seed our sampling and masking consume the random stream as the original did."""
    model = fixture_model()
    inputs, expected = fixture_tensors()
    ema_step(model)
    with safe_open(str(FIXTURE / "outputs.safetensors"), framework="pt") as handle:
        torch.manual_seed(int(handle.metadata()["loss_seed"]))
    with torch.no_grad():
        out = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], return_loss=True, alpha=ALPHA)
    assert torch.equal(out.itm_negative_image_indices, expected["itm_neg_image_idx_for_text"])
    assert torch.equal(out.itm_negative_text_indices, expected["itm_neg_text_idx_for_image"])
    assert torch.equal(out.mlm_input_ids, expected["mlm_masked_input_ids_seeded"])
    assert torch.equal(out.mlm_labels, expected["mlm_labels_seeded"])
    torch.testing.assert_close(out.loss, expected["loss_total"], atol=LOGIT_ATOL, rtol=0)


def test_temp_is_clamped_in_forward_as_the_original_does() -> None:
    model = fixture_model()
    batch = recorded_step_inputs()
    for value, clamped in ((0.9, 0.5), (1e-5, 0.001), (0.0625, 0.0625)):
        with torch.no_grad():
            model.albef.temp.fill_(value)
            out = model(**batch)
        assert model.albef.temp.item() == pytest.approx(clamped)
        torch.testing.assert_close(out.logits_per_image, out.image_embeds @ torch.cat(
            [out.momentum_text_embeds.T, model.text_queue.queue], dim=1) / clamped)


# --------------------------------------------------------------------------------------------------- machinery


def test_momentum_towers_are_frozen_copies_and_only_online_weights_get_gradients() -> None:
    torch.manual_seed(0)
    model = VlpAlbefForPretraining(tiny_config()).train()
    assert model.accepts_loss_kwargs is False
    pairs = model.momentum_pairs()
    for online, momentum in pairs:
        for param, param_m in zip(online.parameters(), momentum.parameters()):
            assert torch.equal(param, param_m) and not param_m.requires_grad and param.requires_grad
    names = {name for name, _ in model.named_parameters()}
    assert {n for n in names if n.startswith("momentum_")} and all(
        n.startswith(("albef.", "mlm_head.", "momentum_")) for n in names
    )
    assert [name for name, _ in model.feature_queues()] == ["image_queue", "text_queue"]
    out = model(**tiny_batch(), return_loss=True)
    out.loss.backward()
    for name, param in model.named_parameters():
        if name.startswith("momentum_"):
            assert param.grad is None, name
    assert model.albef.vision_model.transformer.patch_embed.weight.grad.abs().sum() > 0
    assert model.albef.temp.grad is not None and model.mlm_head.dense.weight.grad.abs().sum() > 0


def test_training_forwards_enqueue_momentum_features_and_wrap_the_pointer() -> None:
    torch.manual_seed(0)
    model = VlpAlbefForPretraining(tiny_config(queue_size=16)).train()
    queues = []
    for step in range(3):
        out = model(**tiny_batch(seed=step), return_loss=True)
        queues.append((out.momentum_image_embeds.detach(), out.momentum_text_embeds.detach()))
        assert int(model.image_queue.ptr) == int(model.text_queue.ptr) == (8 * (step + 1)) % 16
    torch.testing.assert_close(model.image_queue.queue[:, :8], queues[2][0].T)  # step 2 overwrote columns 0-7
    torch.testing.assert_close(model.text_queue.queue[:, 8:], queues[1][1].T)
    before = model.image_queue.queue.clone()
    model(**tiny_batch(), update_queues=False)
    assert torch.equal(model.image_queue.queue, before)


def test_losses_only_when_asked_and_the_output_contract() -> None:
    torch.manual_seed(0)
    model = VlpAlbefForPretraining(tiny_config()).eval()
    batch = tiny_batch()
    out = model(**batch)
    assert out.loss is None and out.loss_itc is None and out.loss_mlm is None
    assert out.logits_per_image.shape == (8, 8 + 16) and out.mlm_logits.shape == (8, 7, 40)
    labelled = out.mlm_labels != -100
    assert bool(labelled.any()) and not labelled[:, 0].any() and not labelled[batch["attention_mask"] == 0].any()
    assert torch.equal(out.mlm_input_ids[~labelled], batch["input_ids"][~labelled])
    assert (out.itm_negative_image_indices != torch.arange(8)).all()  # the diagonal is never a negative
    assert (out.itm_negative_text_indices != torch.arange(8)).all()
    assert isinstance(model(**batch, return_loss=True, return_dict=False), tuple)
    nothing_masked = torch.full_like(batch["input_ids"], -100)
    out = model(**batch, return_loss=True, mlm_input_ids=batch["input_ids"], mlm_labels=nothing_masked)
    assert out.loss_mlm.item() == 0.0 and torch.isfinite(out.loss)


def test_alpha_defaults_to_the_callbacks_value() -> None:
    torch.manual_seed(0)
    model = VlpAlbefForPretraining(tiny_config()).eval()
    batch = tiny_batch()
    draws = {"itm_negative_image_indices": torch.roll(torch.arange(8), 1), "itm_negative_text_indices": torch.roll(torch.arange(8), 2)}
    masked = model.mask_tokens(batch["input_ids"], torch.Generator().manual_seed(0))
    fixed = {**batch, **draws, "mlm_input_ids": masked[0], "mlm_labels": masked[1], "return_loss": True}
    assert model.distill_alpha == 0.4
    model.distill_alpha = 0.0
    at_zero = model(**fixed).loss_itc
    torch.testing.assert_close(at_zero, model(**fixed, alpha=0.0).loss_itc)
    assert not torch.allclose(at_zero, model(**fixed, alpha=0.4).loss_itc)


def test_errors_say_what_to_do() -> None:
    model = VlpAlbefForPretraining(tiny_config()).eval()
    batch = tiny_batch()
    with pytest.raises(ValueError, match="8 images and 3 texts"):
        model(batch["input_ids"][:3], batch["pixel_values"])
    with pytest.raises(ValueError, match="both mlm_input_ids and mlm_labels"):
        model(**batch, mlm_input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="both itm_negative_image_indices and itm_negative_text_indices"):
        model(**batch, itm_negative_image_indices=torch.zeros(8, dtype=torch.long))
    config = tiny_config()
    config.text_config.mask_token_id = None
    with pytest.raises(ValueError, match="mask_token_id and cls_token_id"):
        VlpAlbefForPretraining(config)(**batch)
    with pytest.raises(ValueError, match="not a multiple of the global batch"):
        VlpAlbefForPretraining(tiny_config(queue_size=12)).train()(**batch, return_loss=True)


# --------------------------------------------------------------------------------------------------- training


class FixedPairs(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.batch = tiny_batch(8, seed=3)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.batch.items()}


def collate_with_loss(examples: list[dict[str, torch.Tensor]]) -> dict[str, object]:
    batch = {key: torch.stack([example[key] for example in examples]) for key in examples[0]}
    return {**batch, "return_loss": True}


def test_trainer_overfits_eight_pairs_with_the_momentum_callback(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # itm_negative_eps: the fast-falling temp makes the in-batch softmax underflow (the original would fail there)
    config = tiny_config(queue_size=8, momentum=0.9, itm_negative_eps=1e-4)
    # wider init than BERT's 0.02: at this size the [CLS] states are otherwise near-identical across examples
    for settings in (config, config.vision_config, config.text_config):
        settings.initializer_range = 0.2
    model = VlpAlbefForPretraining(config)
    momentum_before = model.momentum_vision_proj.weight.detach().clone()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=80, per_device_train_batch_size=8, learning_rate=5e-3, warmup_steps=0,
        logging_steps=1, report_to=[], save_strategy="no", dataloader_drop_last=True, use_cpu=True,
        lr_scheduler_type="constant", seed=0, disable_tqdm=True,
    )
    callback = MomentumCallback(alpha_warmup_steps=10)
    trainer = Trainer(model=model, args=args, train_dataset=FixedPairs(), data_collator=collate_with_loss, callbacks=[callback])
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 80
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    assert model.distill_alpha == pytest.approx(0.4)  # ramped to alpha_max after 10 steps
    assert not torch.equal(model.momentum_vision_proj.weight, momentum_before)  # EMA ran
    assert not model.momentum_vision_proj.weight.requires_grad
    assert int(model.image_queue.ptr) == 0  # 80 batches of 8 through a queue of 8


# --------------------------------------------------------------------------------------------------- round trip


def test_save_load_round_trip_keeps_queues_momentum_towers_and_ties(tmp_path: Path) -> None:
    model = fixture_model()
    ema_step(model)
    with torch.no_grad():
        model(**recorded_step_inputs(), update_queues=True)  # ptr 0 -> 4, queues changed
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert {"image_queue.queue", "image_queue.ptr", "text_queue.queue", "text_queue.ptr"} <= set(saved)
    assert "momentum_vision_proj.weight" in saved and "momentum_mlm_head.decoder.weight" not in saved  # tied
    loaded = VlpAlbefForPretraining.from_pretrained(tmp_path, dtype=torch.float32).eval()
    reference = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert int(loaded.image_queue.ptr) == int(loaded.text_queue.ptr) == 4
    assert all(not p.requires_grad for n, p in loaded.named_parameters() if n.startswith("momentum_"))
    assert loaded.momentum_mlm_head.decoder.weight is loaded.momentum_text_model.get_input_embeddings().weight
    assert loaded.mlm_head.decoder.weight is loaded.albef.text_model.get_input_embeddings().weight
    with torch.no_grad():
        expected = model(**recorded_step_inputs(), return_loss=True).loss
        actual = loaded(**recorded_step_inputs(), return_loss=True).loss
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)
    # the online-only heads load the same directory, ignoring the momentum towers and queues
    masked_lm = VlpAlbefForMaskedLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(masked_lm.mlm_head.dense.weight, model.mlm_head.dense.weight)
    base = AutoModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert isinstance(base, VlpAlbefModel) and torch.equal(base.temp, model.albef.temp)


def test_fresh_queues_are_normalised_noise_and_queue_modules_are_feature_queues() -> None:
    torch.manual_seed(0)
    model = VlpAlbefForPretraining(tiny_config())
    assert isinstance(model.image_queue, FeatureQueue) and model.image_queue.queue.shape == (8, 16)
    torch.testing.assert_close(model.image_queue.queue.norm(dim=0), torch.ones(16))
    assert not torch.equal(model.image_queue.queue, model.text_queue.queue) and int(model.text_queue.ptr) == 0
