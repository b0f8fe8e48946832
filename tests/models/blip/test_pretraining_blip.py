"""BLIP pre-training head: parity with the original's recorded pre-training step (blip_pretrain fixture), the momentum
pairing of a MED holding two roles, queues, Trainer overfitting, save/load round trip."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from conversion.convert_blip import convert_blip_checkpoint
from hf_vlp.models.blip import VlpBlipConfig, VlpBlipForConditionalGeneration, VlpBlipModel
from hf_vlp.models.blip.modeling_blip_pretraining import (
    VlpBlipForImageTextRetrieval,
    VlpBlipForPretraining,
    encoder_role_modules,
)
from hf_vlp.objectives.momentum import FeatureQueue
from hf_vlp.training.callbacks import MomentumCallback

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "originals" / "blip_pretrain"
FEATURE_ATOL, LOGIT_ATOL = 1e-5, 1e-4
ALPHA = 0.4  # the fixture's alpha


@functools.cache
def converted_state() -> tuple[dict, dict[str, torch.Tensor]]:
    result = convert_blip_checkpoint(
        FIXTURE / "checkpoint.pth", original_config=FIXTURE / "original_config.json", tokenizer=FIXTURE / "vocab.txt",
        head="pretraining",
    )
    assert isinstance(result.model, VlpBlipForPretraining)
    return result.model.config.to_dict(), {key: value.clone() for key, value in result.model.state_dict().items()}


def fixture_model() -> VlpBlipForPretraining:
    config, state = converted_state()
    model = VlpBlipForPretraining(VlpBlipConfig.from_dict(config)).eval()
    model.load_state_dict(state, strict=True)
    return model


@functools.cache
def fixture_tensors() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return load_file(FIXTURE / "inputs.safetensors"), load_file(FIXTURE / "outputs.safetensors")


def recorded_step_inputs() -> dict[str, torch.Tensor]:
    """The fixture's batch plus the original forward's hard negatives."""
    inputs, expected = fixture_tensors()
    return {
        "input_ids": inputs["input_ids"],
        "pixel_values": inputs["pixel_values"],
        "attention_mask": inputs["attention_mask"],
        "itm_negative_image_indices": expected["itm_neg_image_idx_for_text"],
        "itm_negative_text_indices": expected["itm_neg_text_idx_for_image"],
    }


def ema_step(model: VlpBlipForPretraining) -> None:
    """What Trainer does after an optimizer step: the callback's EMA update (the original's at forward start)."""
    MomentumCallback().on_optimizer_step(None, None, None, model=model)


def tiny_config(**overrides) -> VlpBlipConfig:
    vision = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=16,
                  patch_size=8)
    text = dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=12, pad_token_id=0, cls_token_id=2, sep_token_id=3, mask_token_id=4,
                bos_token_id=38, enc_token_id=39, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    settings = {"embed_dim": 8, "queue_size": 16, **overrides}
    return VlpBlipConfig(vision_config=vision, text_config=text, **settings)


def tiny_batch(batch: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 38, (batch, 7), generator=generator)
    input_ids[:, 0] = 2
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1::2, 5:] = 0
    input_ids[:, -1] = 3
    input_ids[1::2, 4] = 3
    input_ids[attention_mask == 0] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "pixel_values": torch.randn(batch, 3, 16, 16, generator=generator)}


# --------------------------------------------------------------------------------------------------- parity


def test_parity_momentum_features_similarities_itm_and_decoder_logits() -> None:
    """Before any update: online and momentum features, [batch ; queue] similarities, positive ITM logits ([ENC]
    first), teacher-forced decoder logits ([DEC] first); eval forwards leave the queues alone."""
    model = fixture_model()
    inputs, expected = fixture_tensors()
    queue_before = model.image_queue.queue.clone()
    with torch.no_grad():
        out = model(**recorded_step_inputs(), return_loss=True, alpha=ALPHA)
    actual = {
        "image_feat": out.image_embeds,
        "text_feat": out.text_embeds,
        "image_feat_m": out.momentum_image_embeds,
        "text_feat_m": out.momentum_text_embeds,
        "sim_i2t_with_queue": out.logits_per_image,
        "sim_t2i_with_queue": out.logits_per_text,
        "sim_i2t": out.image_embeds @ out.text_embeds.T / model.temp,
        "itm_logits_pos": out.itm_logits[:4],
        "decoder_logits": out.lm_logits,
    }
    for name, value in actual.items():
        atol = LOGIT_ATOL if name.startswith(("sim", "itm", "decoder")) else FEATURE_ATOL
        torch.testing.assert_close(value, expected[name], atol=atol, rtol=0, msg=name)
    # the LM loss does not depend on the momentum towers: before the EMA step it already is the recorded one
    torch.testing.assert_close(out.loss_lm, expected["loss_lm_teacher_forced"], atol=FEATURE_ATOL, rtol=0)
    assert torch.equal(model.image_queue.queue, queue_before) and int(model.image_queue.ptr) == 0
    assert out.itm_labels.tolist() == [1] * 4 + [0] * 8


def test_parity_one_pretraining_step_losses_queues_and_momentum_weights() -> None:
    """EMA update, then the forward with the recorded negatives: the three losses, queues/ptr and EMA'd weights."""
    model = fixture_model()
    _, expected = fixture_tensors()
    online_cross = model.text_model.transformer.encoder.layers[1].cross_attn.kv.weight.detach().clone()
    momentum_cross = model.momentum_text_model.transformer.encoder.layers[1].cross_attn.kv.weight.detach().clone()
    ema_step(model)
    with torch.no_grad():
        out = model(**recorded_step_inputs(), return_loss=True, alpha=ALPHA, update_queues=True)
    for name, value in {"loss_ita": out.loss_itc, "loss_itm": out.loss_itm, "loss_lm": out.loss_lm}.items():
        torch.testing.assert_close(value, expected[name], atol=FEATURE_ATOL, rtol=0, msg=name)
    torch.testing.assert_close(out.loss, out.loss_itc + out.loss_itm + out.loss_lm)
    torch.testing.assert_close(model.image_queue.queue, expected["image_queue_after"], atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(model.text_queue.queue, expected["text_queue_after"], atol=FEATURE_ATOL, rtol=0)
    assert int(model.image_queue.ptr) == int(model.text_queue.ptr) == int(expected["queue_ptr_after"])
    torch.testing.assert_close(
        model.momentum_vision_proj.weight, expected["vision_proj_m.weight_after"], atol=FEATURE_ATOL, rtol=0
    )
    torch.testing.assert_close(
        model.momentum_text_proj.bias, expected["text_proj_m.bias_after"], atol=FEATURE_ATOL, rtol=0
    )
    # the momentum cross-attention follows the online one, which the encoder shares with the decoder
    torch.testing.assert_close(
        model.momentum_text_model.transformer.encoder.layers[1].cross_attn.kv.weight,
        0.995 * momentum_cross + 0.005 * online_cross, atol=1e-6, rtol=0,
    )


def test_seeded_forward_replays_the_originals_hard_negatives() -> None:
    """With the original's seed the negatives (softmax + 1e-4, diagonal zeroed) are drawn as the original drew them."""
    model = fixture_model()
    inputs, expected = fixture_tensors()
    ema_step(model)
    with safe_open(str(FIXTURE / "outputs.safetensors"), framework="pt") as handle:
        torch.manual_seed(int(handle.metadata()["loss_seed"]))
    with torch.no_grad():
        out = model(
            inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], return_loss=True, alpha=ALPHA
        )
    assert torch.equal(out.itm_negative_image_indices, expected["itm_neg_image_idx_for_text"])
    assert torch.equal(out.itm_negative_text_indices, expected["itm_neg_text_idx_for_image"])
    torch.testing.assert_close(out.loss_itm, expected["loss_itm"], atol=FEATURE_ATOL, rtol=0)


def test_temp_is_clamped_in_forward_as_the_original_does() -> None:
    model = fixture_model()
    batch = recorded_step_inputs()
    for value, clamped in ((0.9, 0.5), (1e-5, 0.001), (0.0625, 0.0625)):
        with torch.no_grad():
            model.temp.fill_(value)
            out = model(**batch)
        assert model.temp.item() == pytest.approx(clamped)
        torch.testing.assert_close(out.logits_per_image, out.image_embeds @ torch.cat(
            [out.momentum_text_embeds.T, model.text_queue.queue], dim=1) / clamped)


# --------------------------------------------------------------------------------------------------- machinery


def test_momentum_pairs_the_encoder_role_only_and_only_online_weights_get_gradients() -> None:
    torch.manual_seed(0)
    model = VlpBlipForPretraining(tiny_config()).train()
    assert model.accepts_loss_kwargs is False
    online_text, momentum_text = model.momentum_pairs()[2]
    online_names = {id(p) for p in online_text.parameters()}
    causal = {id(p) for n, p in model.text_model.named_parameters() if ".causal_attn." in n or ".norm_causal." in n}
    assert causal and not causal & online_names  # the decoder's self-attention has no momentum copy
    assert not any(".causal_attn." in n for n, _ in model.momentum_text_model.named_parameters())
    for online, momentum in model.momentum_pairs():
        for param, param_m in zip(online.parameters(), momentum.parameters(), strict=True):
            assert torch.equal(param, param_m) and not param_m.requires_grad and param.requires_grad
    assert [name for name, _ in model.feature_queues()] == ["image_queue", "text_queue"]
    out = model(**tiny_batch(), return_loss=True)
    out.loss.backward()
    for name, param in model.named_parameters():
        if name.startswith("momentum_"):
            assert param.grad is None, name
    layer = model.text_model.transformer.encoder.layers[0]
    trained = {  # every objective reaches its own weights: ITC, ITM (encoder role), LM (decoder role)
        "text_proj": model.text_proj.weight, "itm_head": model.itm_head.weight, "attn": layer.attn.qkv.weight,
        "causal_attn": layer.causal_attn.qkv.weight, "cross_attn": layer.cross_attn.kv.weight,
        "lm_head": model.lm_head.dense.weight, "vit": model.vision_model.transformer.patch_embed.weight,
    }
    for name, weight in trained.items():
        assert weight.grad is not None and weight.grad.abs().sum() > 0, name
    assert model.temp.grad is not None
    with pytest.raises(ValueError, match="holds no encoder role"):
        encoder_role_modules(VlpBlipForConditionalGeneration(tiny_config()).text_model)


def test_training_forwards_enqueue_momentum_features_and_wrap_the_pointer() -> None:
    torch.manual_seed(0)
    model = VlpBlipForPretraining(tiny_config(queue_size=16)).train()
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
    model = VlpBlipForPretraining(tiny_config()).eval()
    batch = tiny_batch()
    out = model(**batch)
    assert out.loss is None and out.loss_itc is None and out.loss_itm is None and out.loss_lm is None
    assert out.logits_per_image.shape == (8, 8 + 16) and out.lm_logits.shape == (8, 7, 40)
    assert out.itm_logits.shape == (24, 2)
    assert (out.itm_negative_image_indices != torch.arange(8)).all()  # the diagonal is never a negative
    assert (out.itm_negative_text_indices != torch.arange(8)).all()
    assert isinstance(model(**batch, return_loss=True, return_dict=False), tuple)
    # LM labels: [PAD] ignored by default; given labels replace them (nothing labelled: zero loss)
    nothing = torch.full_like(batch["input_ids"], -100)
    out = model(**batch, return_loss=True, lm_labels=nothing)
    assert out.loss_lm.item() == 0.0 and torch.isfinite(out.loss)
    labels = model.lm_labels(batch["input_ids"])
    assert (labels[batch["attention_mask"] == 0] == -100).all() and (labels[batch["attention_mask"] == 1] >= 0).all()
    # generated draws are reproducible with a generator
    first = model(**batch, generator=torch.Generator().manual_seed(3))
    again = model(**batch, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.itm_negative_image_indices, again.itm_negative_image_indices)
    # all-zero token types (BERT tokenizers) are accepted
    model(**batch, token_type_ids=torch.zeros_like(batch["input_ids"]))


def test_alpha_defaults_to_the_callbacks_value() -> None:
    torch.manual_seed(0)
    model = VlpBlipForPretraining(tiny_config()).eval()
    batch = tiny_batch()
    draws = {"itm_negative_image_indices": torch.roll(torch.arange(8), 1),
             "itm_negative_text_indices": torch.roll(torch.arange(8), 2)}
    fixed = {**batch, **draws, "return_loss": True}
    assert model.distill_alpha == 0.4
    model.distill_alpha = 0.0
    at_zero = model(**fixed).loss_itc
    torch.testing.assert_close(at_zero, model(**fixed, alpha=0.0).loss_itc)
    assert not torch.allclose(at_zero, model(**fixed, alpha=0.4).loss_itc)


def test_errors_say_what_to_do() -> None:
    model = VlpBlipForPretraining(tiny_config()).eval()
    batch = tiny_batch()
    with pytest.raises(ValueError, match="8 images and 3 texts"):
        model(batch["input_ids"][:3], batch["pixel_values"])
    with pytest.raises(ValueError, match="both itm_negative_image_indices and itm_negative_text_indices"):
        model(**batch, itm_negative_image_indices=torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="lm_labels must align with input_ids"):
        model(**batch, lm_labels=batch["input_ids"][:, :3])
    with pytest.raises(ValueError, match="no token-type embeddings"):
        model(**batch, token_type_ids=torch.ones_like(batch["input_ids"]))
    with pytest.raises(ValueError, match="not a multiple of the global batch"):
        VlpBlipForPretraining(tiny_config(queue_size=12)).train()(**batch, return_loss=True)


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
    config = tiny_config(queue_size=8, momentum=0.9)
    # wider init than BERT's 0.02: at this size the [CLS] states are otherwise near-identical across examples
    for settings in (config, config.vision_config, config.text_config):
        settings.initializer_range = 0.2
    model = VlpBlipForPretraining(config)
    momentum_before = model.momentum_vision_proj.weight.detach().clone()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=60, per_device_train_batch_size=8, learning_rate=5e-3, warmup_steps=0,
        logging_steps=1, report_to=[], save_strategy="no", dataloader_drop_last=True, use_cpu=True,
        lr_scheduler_type="constant", seed=0, disable_tqdm=True,
    )
    callback = MomentumCallback(alpha_warmup_steps=10)
    trainer = Trainer(model=model, args=args, train_dataset=FixedPairs(), data_collator=collate_with_loss,
                      callbacks=[callback])
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 60
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    assert model.distill_alpha == pytest.approx(0.4)  # ramped to alpha_max after 10 steps
    assert not torch.equal(model.momentum_vision_proj.weight, momentum_before)  # EMA ran
    assert not model.momentum_vision_proj.weight.requires_grad
    assert int(model.image_queue.ptr) == 0  # 60 batches of 8 through a queue of 8


# --------------------------------------------------------------------------------------------------- round trip


def test_save_load_round_trip_keeps_queues_momentum_towers_and_ties(tmp_path: Path) -> None:
    model = fixture_model()
    ema_step(model)
    with torch.no_grad():
        model(**recorded_step_inputs(), update_queues=True)  # ptr 0 -> 4, queues changed
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert {"image_queue.queue", "image_queue.ptr", "text_queue.queue", "text_queue.ptr"} <= set(saved)
    assert "momentum_text_model.transformer.encoder.layers.0.cross_attn.kv.weight" in saved
    assert "lm_head.decoder.weight" not in saved  # tied to the word embeddings
    loaded = VlpBlipForPretraining.from_pretrained(tmp_path, dtype=torch.float32).eval()
    reference = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert int(loaded.image_queue.ptr) == int(loaded.text_queue.ptr) == 4
    assert all(not p.requires_grad for n, p in loaded.named_parameters() if n.startswith("momentum_"))
    assert all(p.requires_grad for n, p in loaded.named_parameters() if not n.startswith("momentum_"))
    assert loaded.lm_head.decoder.weight is loaded.text_model.get_input_embeddings().weight
    with torch.no_grad():
        expected = model(**recorded_step_inputs(), return_loss=True).loss
        actual = loaded(**recorded_step_inputs(), return_loss=True).loss
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)
    # every other BLIP head loads the same directory, ignoring what it does not hold
    base = VlpBlipModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(base.temp, model.temp) and torch.equal(base.itm_head.weight, model.itm_head.weight)
    captioner = VlpBlipForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(captioner.lm_head.dense.weight, model.lm_head.dense.weight)
    retrieval = VlpBlipForImageTextRetrieval.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(retrieval.text_queue.queue, model.text_queue.queue)
    # a fresh id queue (-100) writes its ids where the features go
    assert int(retrieval.idx_queue.ptr) == 4 and (retrieval.idx_queue.queue == -100).all()
    assert not retrieval.momentum_text_proj.weight.requires_grad


def test_fresh_queues_are_normalised_noise_and_queue_modules_are_feature_queues() -> None:
    torch.manual_seed(0)
    model = VlpBlipForPretraining(tiny_config())
    assert isinstance(model.image_queue, FeatureQueue) and model.image_queue.queue.shape == (8, 16)
    torch.testing.assert_close(model.image_queue.queue.norm(dim=0), torch.ones(16))
    assert not torch.equal(model.image_queue.queue, model.text_queue.queue) and int(model.text_queue.ptr) == 0
