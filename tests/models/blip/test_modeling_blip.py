"""BLIP models: parity with the original code's recorded outputs (blip_pretrain, blip_caption, blip_vqa fixtures), the
MED's shared weights, the decoder's cache, cross-head loading, an overfitting run, registration and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
    BertConfig,
    BertForMaskedLM,
    ViTConfig,
    ViTModel,
)

from conversion.blip_heads import map_blip_state_dict
from conversion.common import filter_prefix
from conversion.convert_blip import convert_blip_checkpoint
from hf_vlp.models.blip import (
    VlpBlipConfig,
    VlpBlipForConditionalGeneration,
    VlpBlipModel,
    VlpBlipTextModel,
    VlpBlipVisionModel,
)
from hf_vlp.objectives.lm import shifted_lm_loss
from hf_vlp.modules.heads import MaskedLMHead
from tests.helpers.fixtures import converted_state as converted_fixture, fixture_dir, fixture_tensors, model_from_state
from tests.helpers.tiny_models import tiny_blip_batch, tiny_blip_config

FEATURE_ATOL, LOGIT_ATOL = 1e-5, 1e-4
CONVERTED_CLASSES = {"model": VlpBlipModel, "caption": VlpBlipForConditionalGeneration}


def converted_state(case: str, head: str) -> tuple[dict, dict[str, torch.Tensor]]:
    return converted_fixture(convert_blip_checkpoint, case, head=head)


def fixture_model(case: str, head: str, implementation: str = "sdpa"):
    return model_from_state(CONVERTED_CLASSES[head], converted_state(case, head), implementation)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, name: str) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0, msg=lambda message: f"{name}: {message}")


def tiny_config(dropout: float = 0.1, **overrides) -> VlpBlipConfig:
    """One ViT layer, positions up to 16, text dropout ``dropout``."""
    text = dict(max_position_embeddings=16, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return tiny_blip_config(vision=dict(num_hidden_layers=1), text=text, **overrides)


def tiny_batch(batch: int = 3, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every caption but the first padded from column 5."""
    return tiny_blip_batch(batch, seed, length=length, padded_rows=slice(1, None))


# --------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_encoders_reproduce_every_recorded_tensor(implementation: str) -> None:
    model = fixture_model("blip_pretrain", "model", implementation)
    inputs, expected = fixture_tensors("blip_pretrain")
    pixel_values, input_ids, mask = inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        output = model(input_ids, pixel_values, mask, output_itm=True)
        image_states = model.encode_image(pixel_values).last_hidden_state
        actual = {
            "image_embeds": image_states,
            "text_embeds": model.encode_text(input_ids, mask).last_hidden_state,
            # get_*_features are projected, un-normalised (project convention); the original's *_feat are normalised
            "image_feat": torch.nn.functional.normalize(model.get_image_features(pixel_values).pooler_output, dim=-1),
            "text_feat": torch.nn.functional.normalize(model.get_text_features(input_ids, mask).pooler_output, dim=-1),
            "multimodal_hidden": model.encode_multimodal(input_ids, image_states, mask).last_hidden_state,
            "sim_i2t": output.logits_per_image,
            "sim_t2i": output.logits_per_text,
            "itm_logits_pos": output.itm_logits,
            "itm_logits_pos_with_cls_first_token": model.get_itm_logits(
                input_ids, pixel_values, mask, replace_first_token=False
            ),
        }
        from_states = model.get_itm_logits(inputs["itm_input_ids"], attention_mask=mask, image_hidden_states=image_states)
    for name, value in actual.items():
        atol = LOGIT_ATOL if name.startswith(("sim", "itm")) else FEATURE_ATOL
        assert_close(value, expected[name], atol, name)
    with torch.no_grad():
        raw_norms = model.get_image_features(pixel_values).pooler_output.norm(dim=-1)
    assert not torch.allclose(raw_norms, torch.ones_like(raw_norms))  # projected, not normalised (CLIP/ALBEF contract)
    assert_close(output.image_embeds, expected["image_feat"], FEATURE_ATOL, "output.image_embeds")
    assert_close(output.text_embeds, expected["text_feat"], FEATURE_ATOL, "output.text_embeds")
    assert_close(output.multimodal_output.last_hidden_state, expected["multimodal_hidden"], FEATURE_ATOL, "multimodal")
    assert_close(from_states, expected["itm_logits_pos"], LOGIT_ATOL, "itm from [ENC] ids and image states")
    assert model.temp.item() == 0.0625  # the checkpoint's value, not the config's initial 0.07


def test_itm_loss_from_the_recorded_hard_negatives() -> None:
    """The original's ``loss_itm`` from the image-grounded encoder once its multinomial draws are replayed."""
    model = fixture_model("blip_pretrain", "model")
    inputs, expected = fixture_tensors("blip_pretrain")
    input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
    negative_image, negative_text = expected["itm_neg_image_idx_for_text"], expected["itm_neg_text_idx_for_image"]
    with torch.no_grad():
        images = model.encode_image(inputs["pixel_values"]).last_hidden_state
        states = model.encode_multimodal(
            torch.cat([input_ids, input_ids, input_ids[negative_text]]),
            torch.cat([images, images[negative_image], images]),
            torch.cat([mask, mask, mask[negative_text]]),
        ).last_hidden_state
        logits = model.itm_head(states[:, 0])
    batch = input_ids.shape[0]
    labels = torch.cat([torch.ones(batch, dtype=torch.long), torch.zeros(2 * batch, dtype=torch.long)])
    assert_close(torch.nn.functional.cross_entropy(logits, labels), expected["loss_itm"], LOGIT_ATOL, "loss_itm")


def test_decoder_of_the_pretraining_checkpoint_reproduces_logits_and_lm_loss() -> None:
    model = fixture_model("blip_pretrain", "caption")
    inputs, expected = fixture_tensors("blip_pretrain")
    kwargs = dict(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    with torch.no_grad():
        from_ids = model(**kwargs, labels=inputs["input_ids"])  # [PAD] labels ignored by the model, [DEC] put first
        from_labels = model(**kwargs, labels=inputs["decoder_labels"])
    assert_close(from_ids.logits, expected["decoder_logits"], LOGIT_ATOL, "decoder_logits")
    assert_close(from_ids.loss, expected["loss_lm_teacher_forced"], LOGIT_ATOL, "loss from input ids")
    assert_close(from_labels.loss, expected["loss_lm"], LOGIT_ATOL, "loss from the recorded labels")
    unsmoothed = shifted_lm_loss(from_ids.logits, inputs["decoder_labels"], label_smoothing=0.0)
    assert_close(unsmoothed, expected["derived_loss_lm_no_label_smoothing"], LOGIT_ATOL, "plain CE")
    assert_close(from_ids.image_hidden_states, expected["image_embeds"], FEATURE_ATOL, "image_hidden_states")


def test_captioner_reproduces_logits_and_the_prompt_masked_loss() -> None:
    model = fixture_model("blip_caption", "caption")
    inputs, expected = fixture_tensors("blip_caption")
    prompt_length = int(inputs["prompt_length"])
    with torch.no_grad():
        output = model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"], labels=inputs["input_ids"],
                       prompt_length=prompt_length)
        recorded_labels = model(inputs["pixel_values"], inputs["decoder_input_ids"], inputs["attention_mask"],
                                labels=inputs["decoder_labels"])
        from_states = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            image_hidden_states=expected["image_embeds"])
    assert prompt_length == 4
    assert_close(output.logits, expected["decoder_logits"], LOGIT_ATOL, "decoder_logits")
    assert_close(output.loss, expected["loss_lm"], LOGIT_ATOL, "loss_lm (prompt masked by the model)")
    assert_close(recorded_labels.loss, expected["loss_lm_via_text_decoder"], LOGIT_ATOL, "loss_lm_via_text_decoder")
    assert_close(from_states.logits, expected["decoder_logits"], LOGIT_ATOL, "logits from cached image states")
    assert output.cache is None


def test_vqa_checkpoint_parts_reproduce_question_states_and_answer_scores() -> None:
    """The building blocks a VQA head needs: question encoder ([ENC] ids, image tokens) and an answer decoder (decoder
    role, cross-attending the padded question states) with label-smoothed summed answer losses."""
    folder = fixture_dir("blip_vqa")
    state = torch.load(folder / "checkpoint.pth", weights_only=True)["model"]
    mapped = map_blip_state_dict(state, "vqa", "vqa").tensors
    config = VlpBlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=66, hidden_size=32, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                         max_position_embeddings=40, cls_token_id=2, sep_token_id=3, mask_token_id=4, bos_token_id=64,
                         enc_token_id=65),
    )
    vision = VlpBlipVisionModel(config.vision_config).eval()
    encoder = VlpBlipTextModel(config.text_config).eval()
    decoder = VlpBlipTextModel(config.text_config, roles=("decoder",)).eval()
    head = MaskedLMHead(32, 66).eval()
    for module, prefix in ((vision, "vision_model."), (encoder, "text_model."), (decoder, "answer_decoder."),
                           (head, "answer_head.")):
        module.load_state_dict(filter_prefix(mapped, prefix), strict=True)
    inputs, expected = fixture_tensors("blip_vqa")
    question_mask, answers = inputs["question_attention_mask"], inputs["answer_input_ids"]
    num_answers = answers.shape[0]
    with torch.no_grad():
        images = vision(inputs["pixel_values"]).last_hidden_state
        questions = encoder(inputs["question_input_ids"], question_mask, images, mode="multimodal").last_hidden_state
        logits = head(decoder(
            answers.repeat(2, 1), inputs["answer_attention_mask"].repeat(2, 1),
            questions.repeat_interleave(num_answers, 0), question_mask.repeat_interleave(num_answers, 0), mode="decoder",
        ).last_hidden_state)
    labels = answers.masked_fill(answers == 0, -100).repeat(2, 1)
    scores = -shifted_lm_loss(logits, labels, label_smoothing=0.1, per_sequence=True).view(2, num_answers)
    assert_close(images, expected["image_embeds"], FEATURE_ATOL, "image_embeds")
    assert_close(questions, expected["question_states"], FEATURE_ATOL, "question_states")
    assert_close(logits, expected["answer_decoder_logits_all_pairs"], LOGIT_ATOL, "answer decoder logits")
    assert_close(scores, expected["answer_scores_all_pairs"], LOGIT_ATOL, "answer scores")


# --------------------------------------------------------------------------------------------------- MED sharing


def test_one_med_module_serves_encoder_and_decoder_and_saves_each_shared_tensor_once(tmp_path: Path) -> None:
    """Encoder (from --head model) and decoder self-attention (from --head caption) in ONE text module reproduce both
    recorded passes; FFN, cross-attention and embeddings are single Parameters used by both modes."""
    config = VlpBlipConfig.from_dict(converted_state("blip_pretrain", "model")[0])
    med = VlpBlipTextModel(config.text_config, roles=("encoder", "decoder")).eval()
    encoder_state = filter_prefix(converted_state("blip_pretrain", "model")[1], "text_model.")
    decoder_state = filter_prefix(converted_state("blip_pretrain", "caption")[1], "text_model.")
    shared = set(encoder_state) & set(decoder_state)
    assert shared and all(torch.equal(encoder_state[key], decoder_state[key]) for key in shared)
    med.load_state_dict({**encoder_state, **decoder_state}, strict=True)
    lm_head = fixture_model("blip_pretrain", "caption").lm_head
    layer = med.transformer.encoder.layers[0]
    assert layer.attn.qkv.weight is not layer.causal_attn.qkv.weight
    assert not torch.equal(layer.attn.qkv.weight, layer.causal_attn.qkv.weight)

    inputs, expected = fixture_tensors("blip_pretrain")
    mask = inputs["attention_mask"]

    def passes(model: VlpBlipTextModel) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            encoded = model(inputs["itm_input_ids"], mask, expected["image_embeds"], mode="multimodal").last_hidden_state
            decoded = model(inputs["decoder_input_ids"], mask, expected["image_embeds"], mode="decoder").last_hidden_state
        return encoded, lm_head(decoded)

    encoded, logits = passes(med)
    assert_close(encoded, expected["multimodal_hidden"], FEATURE_ATOL, "multimodal_hidden")
    assert_close(logits, expected["decoder_logits"], LOGIT_ATOL, "decoder_logits")

    med.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        saved = set(handle.keys())
    layers = config.text_config.num_hidden_layers
    for name in ("mlp.fc1.weight", "cross_attn.kv.weight", "attn.qkv.weight", "causal_attn.qkv.weight"):
        assert sum(key.endswith(f".{name}") and f"_{name}" not in key for key in saved) == layers, name
    reloaded = VlpBlipTextModel.from_pretrained(tmp_path, roles=("encoder", "decoder")).eval()
    for mine, theirs in zip(passes(reloaded), (encoded, logits)):
        torch.testing.assert_close(mine, theirs, atol=0, rtol=0)


def test_lm_head_is_tied_to_the_word_embeddings_through_save_and_load(tmp_path: Path) -> None:
    model = fixture_model("blip_caption", "caption")
    assert model.lm_head.decoder.weight is model.get_input_embeddings().weight
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        assert "lm_head.decoder.weight" not in set(handle.keys())
    reloaded = VlpBlipForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32)
    assert reloaded.lm_head.decoder.weight is reloaded.get_input_embeddings().weight
    torch.testing.assert_close(reloaded.lm_head.decoder.weight, model.lm_head.decoder.weight, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------- decoding


def test_incremental_decoding_with_a_cache_equals_teacher_forcing() -> None:
    model = fixture_model("blip_caption", "caption")
    inputs, _ = fixture_tensors("blip_caption")
    input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        full = model(inputs["pixel_values"], input_ids, mask).logits
        prompt = model(inputs["pixel_values"], input_ids[:, :4], mask[:, :4], use_cache=True)  # [CLS] -> [DEC] here
        steps, cache = [prompt.logits], prompt.cache
        for position in range(4, input_ids.shape[1]):
            step = model(input_ids=input_ids[:, position : position + 1], attention_mask=mask[:, : position + 1],
                         image_hidden_states=prompt.image_hidden_states, cache=cache, use_cache=True)
            steps.append(step.logits)
            cache = step.cache
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=0)
    assert cache.get_seq_length() == input_ids.shape[1]


def test_decoder_puts_dec_first_only_on_the_first_call() -> None:
    model = VlpBlipForConditionalGeneration(tiny_config()).eval()
    batch = tiny_batch()
    with torch.no_grad():
        as_given = model.decode(batch["input_ids"], torch.randn(3, 5, 24), replace_first_token=False)
        images = torch.randn(3, 5, 24)
        replaced = model.decode(batch["input_ids"], images).last_hidden_state
        explicit = batch["input_ids"].clone()
        explicit[:, 0] = 38
        torch.testing.assert_close(replaced, model.decode(explicit, images, replace_first_token=False).last_hidden_state)
    assert as_given.last_hidden_state.shape == (3, 7, 16)


# --------------------------------------------------------------------------------------------------- training


def test_overfitting_eight_captions() -> None:
    """The decoder and its tied LM head learn 8 captions: teacher-forced argmax equals every label."""
    torch.manual_seed(0)
    model = VlpBlipForConditionalGeneration(tiny_config(dropout=0.0)).train()
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 38, (8, 7), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 2, 3
    pixel_values = torch.randn(8, 3, 16, 16, generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):  # ~35 steps suffice; no dropout, so the training logits are the evaluation logits
        output = model(pixel_values, input_ids, labels=input_ids)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        if torch.equal(output.logits.argmax(-1)[:, :-1], input_ids[:, 1:]):
            break
    with torch.no_grad():
        predicted = model.eval()(pixel_values, input_ids).logits.argmax(-1)
    assert torch.equal(predicted[:, :-1], input_ids[:, 1:]), f"not memorised (loss {output.loss.item():.3f})"


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    batch = tiny_batch()
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = VlpBlipModel(tiny_config(dropout=0.0)).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.text_model.transformer.encoder.layers)
        output = model(**batch, output_itm=True)
        (output.logits_per_image.sum() + output.itm_logits.sum()).backward()
        gradients.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(gradients[0]) == len(gradients[1])
    for plain, checkpointed in zip(*gradients):
        torch.testing.assert_close(plain, checkpointed, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------------- loading


def test_one_checkpoint_feeds_every_head(tmp_path: Path) -> None:
    """Heads share parameter names: a captioner's weights initialise VlpBlipModel's shared tensors and vice versa;
    what a head does not hold is ignored, what it lacks is initialised (``temp`` from the config)."""
    captioner = fixture_model("blip_caption", "caption")
    captioner.save_pretrained(tmp_path / "caption")
    encoders, info = VlpBlipModel.from_pretrained(tmp_path / "caption", output_loading_info=True, dtype=torch.float32)
    assert not info["unexpected_keys"]  # the decoder's self-attention and LM head are ignored by design
    assert any(".attn.qkv" in key for key in info["missing_keys"]) and "temp" in info["missing_keys"]
    assert encoders.temp.item() == pytest.approx(0.07)
    for name in ("transformer.encoder.layers.1.mlp.fc1.weight", "transformer.embeddings.word_embeddings.weight"):
        torch.testing.assert_close(encoders.text_model.state_dict()[name], captioner.text_model.state_dict()[name])

    fixture_model("blip_pretrain", "model").save_pretrained(tmp_path / "model")
    decoder, info = VlpBlipForConditionalGeneration.from_pretrained(
        tmp_path / "model", output_loading_info=True, dtype=torch.float32
    )
    assert not info["unexpected_keys"]
    assert {key for key in info["missing_keys"] if "causal" not in key} <= {
        "lm_head.dense.weight", "lm_head.dense.bias", "lm_head.norm.weight", "lm_head.norm.bias", "lm_head.decoder.bias"
    }


def test_auto_classes_build_and_reload_every_blip_model(tmp_path: Path) -> None:
    config = tiny_config()
    assert type(AutoConfig.for_model("hf_vlp_blip")) is VlpBlipConfig
    assert type(AutoModel.from_config(config)) is VlpBlipModel
    assert type(AutoModel.from_config(config.vision_config)) is VlpBlipVisionModel
    assert type(AutoModel.from_config(config.text_config)) is VlpBlipTextModel
    assert type(AutoModelForZeroShotImageClassification.from_config(config)) is VlpBlipModel
    assert type(AutoModelForImageTextToText.from_config(config)) is VlpBlipForConditionalGeneration
    torch.manual_seed(0)
    model = VlpBlipModel(config).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(reloaded) is VlpBlipModel and reloaded.config.text_config.enc_token_id == 39
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch, output_itm=True).itm_logits, model(**batch, output_itm=True).itm_logits)
    assert "A **BLIP** vision-language model" in (tmp_path / "README.md").read_text()


def test_from_pretrained_towers_starts_from_vit_and_bert(tmp_path: Path) -> None:
    vit = ViTModel(ViTConfig(hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                             image_size=16, patch_size=8, layer_norm_eps=1e-6))
    bert = BertForMaskedLM(BertConfig(vocab_size=38, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=16))
    model, reports = VlpBlipForConditionalGeneration.from_pretrained_towers(tiny_config(), vision=vit, text=bert)
    layer, source = model.text_model.transformer.encoder.layers[1], bert.bert.encoder.layer[1]
    torch.testing.assert_close(layer.causal_attn.qkv.weight[:16], source.attention.self.query.weight, atol=0, rtol=0)
    torch.testing.assert_close(model.lm_head.dense.weight, bert.cls.predictions.transform.dense.weight, atol=0, rtol=0)
    assert model.lm_head.decoder.weight is model.get_input_embeddings().weight
    assert "embeddings.word_embeddings.weight" in reports["text"].resized  # [DEC]/[ENC] rows stay initialised
    assert all("cross" in key for key in reports["text"].not_initialised)
    encoders, _ = VlpBlipModel.from_pretrained_towers(tiny_config(), vision=vit, text=bert)
    torch.testing.assert_close(encoders.text_model.transformer.encoder.layers[1].attn.qkv.weight,
                               layer.causal_attn.qkv.weight, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------- errors


def test_errors_name_the_problem() -> None:
    model, captioner = VlpBlipModel(tiny_config()).eval(), VlpBlipForConditionalGeneration(tiny_config()).eval()
    batch = tiny_batch()
    with pytest.raises(ValueError, match="needs both input_ids and pixel_values"):
        model(input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="no token-type embeddings"):
        model(**batch, token_type_ids=torch.ones_like(batch["input_ids"]))
    model(**batch, token_type_ids=torch.zeros_like(batch["input_ids"]))  # what BERT tokenizers emit: accepted
    with pytest.raises(ValueError, match="pairs text row b with image row b"):
        model.encode_multimodal(batch["input_ids"], torch.randn(2, 5, 24))
    with pytest.raises(ValueError, match="exactly one of pixel_values or image_hidden_states"):
        model.get_itm_logits(batch["input_ids"])
    with pytest.raises(ValueError, match="built with roles"):
        model.text_model(batch["input_ids"], encoder_hidden_states=torch.randn(3, 5, 24), mode="decoder")
    with pytest.raises(ValueError, match="built with roles"):
        captioner.text_model(batch["input_ids"], mode="text")
    with pytest.raises(ValueError, match="exactly one of pixel_values or image_hidden_states"):
        captioner(input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="pass input_ids"):
        captioner(batch["pixel_values"], labels=batch["input_ids"])
    with pytest.raises(ValueError, match="labels must align with input_ids"):
        captioner(batch["pixel_values"], batch["input_ids"], labels=batch["input_ids"][:, 1:])
    with pytest.raises(ValueError, match="prompt_length must be >= 0"):
        captioner(batch["pixel_values"], batch["input_ids"], labels=batch["input_ids"], prompt_length=-1)
    with pytest.raises(ValueError, match="repeat the image states"):
        captioner.decode(batch["input_ids"], torch.randn(1, 5, 24))


def test_loss_is_zero_with_a_gradient_when_nothing_is_labelled() -> None:
    captioner = VlpBlipForConditionalGeneration(tiny_config())
    batch = tiny_batch()
    loss = captioner(batch["pixel_values"], batch["input_ids"], labels=torch.full_like(batch["input_ids"], -100)).loss
    assert loss.item() == 0.0 and loss.requires_grad
