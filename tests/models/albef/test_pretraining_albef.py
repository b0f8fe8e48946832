"""ALBEF pretraining head: parity with the original's recorded pretraining step (albef_pretrain fixture), momentum and
queue machinery, Trainer overfitting, save/load round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from conversion.convert_albef import convert_albef_checkpoint
from hf_vlp.models.albef import VlpAlbefConfig, VlpAlbefForMaskedLM, VlpAlbefForPretraining, VlpAlbefModel
from tests.helpers import momentum_checks as checks
from tests.helpers.fixtures import converted_state, fixture_tensors, model_from_state
from tests.helpers.tiny_models import MASK_ID, NO_DROPOUT, tiny_albef_config, tiny_batch

FIXTURE = "albef_pretrain"
FEATURE_ATOL, LOGIT_ATOL = 1e-5, 1e-4
ALPHA = 0.4  # the fixture's alpha


def fixture_model() -> VlpAlbefForPretraining:
    converted = converted_state(convert_albef_checkpoint, FIXTURE, VlpAlbefForPretraining)
    return model_from_state(VlpAlbefForPretraining, converted)


def recorded_step_inputs() -> dict[str, torch.Tensor]:
    """The fixture's batch plus the original forward's random draws (hard negatives, MLM masking)."""
    _, expected = fixture_tensors(FIXTURE)
    return {
        **checks.recorded_itm_step_inputs(FIXTURE),
        "mlm_input_ids": expected["mlm_masked_input_ids_seeded"],
        "mlm_labels": expected["mlm_labels_seeded"],
    }


def tiny_config(**overrides) -> VlpAlbefConfig:
    """Dropout-free, with the [CLS]/[MASK] ids MLM masking needs; 8-dim features, queues of 16."""
    text = {**NO_DROPOUT, "cls_token_id": 2, "mask_token_id": MASK_ID}
    return tiny_albef_config(text=text, **{"embed_dim": 8, "queue_size": 16, **overrides})


class TestAlbefPretraining(checks.MomentumPretrainingTests):
    """The shared momentum pre-training tests on ALBEF; MLM masking drawn with a fixed generator."""

    model_class, overfit_steps, overfit_ratio = VlpAlbefForPretraining, 80, 0.6
    # itm_negative_eps: the fast-falling temp makes the in-batch softmax underflow (the original would fail there)
    overfit_overrides = {"itm_negative_eps": 1e-4}
    tiny_config, tiny_batch = staticmethod(tiny_config), staticmethod(tiny_batch)
    fixture_model, recorded_step_inputs = staticmethod(fixture_model), staticmethod(recorded_step_inputs)

    def extra_loss_inputs(self, model: VlpAlbefForPretraining, batch: checks.Batch) -> checks.Batch:
        masked = model.mask_tokens(batch["input_ids"], torch.Generator().manual_seed(0))
        return {"mlm_input_ids": masked[0], "mlm_labels": masked[1]}

    def check_own_errors(self, model: VlpAlbefForPretraining, batch: checks.Batch) -> None:
        with pytest.raises(ValueError, match="both mlm_input_ids and mlm_labels"):
            model(**batch, mlm_input_ids=batch["input_ids"])
        config = tiny_config()
        config.text_config.mask_token_id = None
        with pytest.raises(ValueError, match="mask_token_id and cls_token_id"):
            VlpAlbefForPretraining(config)(**batch)

    def check_round_trip(
        self, model: VlpAlbefForPretraining, loaded: VlpAlbefForPretraining, saved: checks.Batch, directory: Path
    ) -> None:
        assert "momentum_vision_proj.weight" in saved and "momentum_mlm_head.decoder.weight" not in saved  # tied
        assert loaded.momentum_mlm_head.decoder.weight is loaded.momentum_text_model.get_input_embeddings().weight
        assert loaded.mlm_head.decoder.weight is loaded.text_model.get_input_embeddings().weight
        # the online-only heads load the same directory, ignoring the momentum towers and queues
        masked_lm = VlpAlbefForMaskedLM.from_pretrained(directory, dtype=torch.float32)
        assert torch.equal(masked_lm.mlm_head.dense.weight, model.mlm_head.dense.weight)
        base = AutoModel.from_pretrained(directory, dtype=torch.float32)
        assert isinstance(base, VlpAlbefModel) and torch.equal(base.temp, model.temp)


# --------------------------------------------------------------------------------------------------- parity


def test_parity_momentum_features_and_similarities_against_the_queue() -> None:
    """Before any update: momentum features, [batch ; queue] similarities; eval forwards leave the queues alone."""
    model = fixture_model()
    _, expected = fixture_tensors(FIXTURE)
    queue_before = model.image_queue.queue.clone()
    with torch.no_grad():
        out = model(**recorded_step_inputs())
    actual = checks.recorded_momentum_outputs(out, model.temp)
    for name, value in actual.items():
        atol = LOGIT_ATOL if name.startswith(("sim", "itm")) else FEATURE_ATOL
        torch.testing.assert_close(value, expected[name], atol=atol, rtol=0, msg=name)
    assert out.loss is None and out.loss_itc is None and out.loss_itm is None and out.loss_mlm is None
    assert torch.equal(model.image_queue.queue, queue_before) and int(model.image_queue.ptr) == 0


def test_parity_one_pretraining_step_losses_queues_and_momentum_weights() -> None:
    """EMA update, then the forward with the recorded draws: losses, queues/ptr and EMA'd weights as recorded."""
    model = fixture_model()
    _, expected = fixture_tensors(FIXTURE)
    online_words = model.text_model.get_input_embeddings().weight.detach().clone()
    momentum_words = model.momentum_text_model.get_input_embeddings().weight.detach().clone()
    checks.ema_step(model)
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
    out = checks.assert_seeded_forward_replays_the_recorded_negatives(
        fixture_model(), FIXTURE, return_loss=True, alpha=ALPHA
    )
    _, expected = fixture_tensors(FIXTURE)
    assert torch.equal(out.mlm_input_ids, expected["mlm_masked_input_ids_seeded"])
    assert torch.equal(out.mlm_labels, expected["mlm_labels_seeded"])
    torch.testing.assert_close(out.loss, expected["loss_total"], atol=LOGIT_ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------- machinery


def test_momentum_towers_are_frozen_copies_and_only_online_weights_get_gradients() -> None:
    torch.manual_seed(0)
    model = VlpAlbefForPretraining(tiny_config()).train()
    assert model.accepts_loss_kwargs is False
    checks.assert_momentum_towers_are_frozen_copies(model)
    names = {name for name, _ in model.named_parameters()}
    assert {n for n in names if n.startswith("momentum_")} and all(
        n.startswith(("vision_model.", "text_model.", "vision_proj.", "text_proj.", "itm_head.", "temp", "mlm_head.", "momentum_")) for n in names
    )
    out = model(**tiny_batch(), return_loss=True)
    out.loss.backward()
    checks.assert_no_momentum_gradient(model)
    assert model.vision_model.transformer.patch_embed.weight.grad.abs().sum() > 0
    assert model.temp.grad is not None and model.mlm_head.dense.weight.grad.abs().sum() > 0


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
