"""BLIP pre-training head: parity with the original's recorded pre-training step (blip_pretrain fixture), the momentum
pairing of a MED holding two roles, queues, Trainer overfitting, save/load round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conversion.convert_blip import convert_blip_checkpoint
from hf_vlp.models.blip import VlpBlipConfig, VlpBlipForConditionalGeneration, VlpBlipModel
from hf_vlp.models.blip.modeling_blip_pretraining import (
    VlpBlipForImageTextRetrieval,
    VlpBlipForPretraining,
    encoder_role_modules,
)
from tests.helpers import momentum_checks as checks
from tests.helpers.fixtures import converted_state, fixture_tensors, model_from_state
from tests.helpers.tiny_models import tiny_blip_batch as tiny_batch, tiny_blip_config

FIXTURE = "blip_pretrain"
FEATURE_ATOL, LOGIT_ATOL = 1e-5, 1e-4
ALPHA = 0.4  # the fixture's alpha


def fixture_model() -> VlpBlipForPretraining:
    converted = converted_state(convert_blip_checkpoint, FIXTURE, VlpBlipForPretraining, head="pretraining")
    return model_from_state(VlpBlipForPretraining, converted)


def recorded_step_inputs() -> dict[str, torch.Tensor]:
    """The fixture's batch plus the original forward's hard negatives."""
    return checks.recorded_itm_step_inputs(FIXTURE)


def tiny_config(**overrides) -> VlpBlipConfig:
    """8-dim features, queues of 16."""
    return tiny_blip_config(**{"queue_size": 16, **overrides})


class TestBlipPretraining(checks.MomentumPretrainingTests):
    """The shared momentum pre-training tests on BLIP."""

    model_class, overfit_steps, overfit_ratio = VlpBlipForPretraining, 60, 0.5
    tiny_config, tiny_batch = staticmethod(tiny_config), staticmethod(tiny_batch)
    fixture_model, recorded_step_inputs = staticmethod(fixture_model), staticmethod(recorded_step_inputs)

    def check_own_errors(self, model: VlpBlipForPretraining, batch: checks.Batch) -> None:
        with pytest.raises(ValueError, match="lm_labels must align with input_ids"):
            model(**batch, lm_labels=batch["input_ids"][:, :3])
        with pytest.raises(ValueError, match="no token-type embeddings"):
            model(**batch, token_type_ids=torch.ones_like(batch["input_ids"]))

    def check_round_trip(
        self, model: VlpBlipForPretraining, loaded: VlpBlipForPretraining, saved: checks.Batch, directory: Path
    ) -> None:
        assert "momentum_text_model.transformer.encoder.layers.0.cross_attn.kv.weight" in saved
        assert "lm_head.decoder.weight" not in saved  # tied to the word embeddings
        assert all(p.requires_grad for n, p in loaded.named_parameters() if not n.startswith("momentum_"))
        assert loaded.lm_head.decoder.weight is loaded.text_model.get_input_embeddings().weight
        # every other BLIP head loads the same directory, ignoring what it does not hold
        base = VlpBlipModel.from_pretrained(directory, dtype=torch.float32)
        assert torch.equal(base.temp, model.temp) and torch.equal(base.itm_head.weight, model.itm_head.weight)
        captioner = VlpBlipForConditionalGeneration.from_pretrained(directory, dtype=torch.float32)
        assert torch.equal(captioner.lm_head.dense.weight, model.lm_head.dense.weight)
        retrieval = VlpBlipForImageTextRetrieval.from_pretrained(directory, dtype=torch.float32)
        assert torch.equal(retrieval.text_queue.queue, model.text_queue.queue)
        # a fresh id queue (-100) writes its ids where the features go
        assert int(retrieval.idx_queue.ptr) == 4 and (retrieval.idx_queue.queue == -100).all()
        assert not retrieval.momentum_text_proj.weight.requires_grad


# --------------------------------------------------------------------------------------------------- parity


def test_parity_momentum_features_similarities_itm_and_decoder_logits() -> None:
    """Before any update: online and momentum features, [batch ; queue] similarities, positive ITM logits ([ENC]
    first), teacher-forced decoder logits ([DEC] first); eval forwards leave the queues alone."""
    model = fixture_model()
    inputs, expected = fixture_tensors(FIXTURE)
    queue_before = model.image_queue.queue.clone()
    with torch.no_grad():
        out = model(**recorded_step_inputs(), return_loss=True, alpha=ALPHA)
    actual = {**checks.recorded_momentum_outputs(out, model.temp), "decoder_logits": out.lm_logits}
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
    _, expected = fixture_tensors(FIXTURE)
    online_cross = model.text_model.transformer.encoder.layers[1].cross_attn.kv.weight.detach().clone()
    momentum_cross = model.momentum_text_model.transformer.encoder.layers[1].cross_attn.kv.weight.detach().clone()
    checks.ema_step(model)
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
    out = checks.assert_seeded_forward_replays_the_recorded_negatives(
        fixture_model(), FIXTURE, return_loss=True, alpha=ALPHA
    )
    _, expected = fixture_tensors(FIXTURE)
    torch.testing.assert_close(out.loss_itm, expected["loss_itm"], atol=FEATURE_ATOL, rtol=0)


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
    checks.assert_momentum_towers_are_frozen_copies(model)
    out = model(**tiny_batch(), return_loss=True)
    out.loss.backward()
    checks.assert_no_momentum_gradient(model)
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
