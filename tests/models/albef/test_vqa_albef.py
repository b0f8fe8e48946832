"""ALBEF VQA head: parity with the original's recorded question states, answer-decoder logits, sequence losses,
answer ranking and distilled training loss (albef_vqa fixture), loss options, overfitting, save/load round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertTokenizer

from conversion.convert_albef import convert_albef_checkpoint
from hf_vlp.models.albef import VlpAlbefConfig, VlpAlbefForPretraining, VlpAlbefForQuestionAnswering
from hf_vlp.objectives.lm import summed_answer_losses
from hf_vlp.training.callbacks import MomentumCallback
from tests.helpers.fixtures import converted_state, fixture_dir, fixture_inputs, fixture_tensors, model_from_state
from tests.helpers.momentum_checks import ema_step
from tests.helpers.tiny_models import NO_DROPOUT, tiny_albef_config

FIXTURE = "albef_vqa"
FEATURE_ATOL, LOGIT_ATOL = 1e-5, 1e-4
ALPHA, K_TEST = 0.4, 3  # the fixture's alpha and k_test


def fixture_model() -> VlpAlbefForQuestionAnswering:
    converted = converted_state(convert_albef_checkpoint, FIXTURE, VlpAlbefForQuestionAnswering)
    return model_from_state(VlpAlbefForQuestionAnswering, converted)


def training_inputs() -> dict[str, torch.Tensor]:
    return fixture_inputs(
        FIXTURE, input_ids="train_question_input_ids", attention_mask="train_question_attention_mask",
        pixel_values="pixel_values", answer_input_ids="train_answer_input_ids",
        answer_attention_mask="train_answer_attention_mask", answer_weights="train_answer_weights",
        answers_per_question="train_answers_per_question",
    )


def rank_fixture(model: VlpAlbefForQuestionAnswering, k: int):
    inputs, _ = fixture_tensors(FIXTURE)
    return model.rank_answers(
        inputs["pixel_values"], inputs["question_input_ids"], inputs["answer_input_ids"],
        inputs["question_attention_mask"], inputs["answer_attention_mask"], k=k,
    )


# --------------------------------------------------------------------------------------------------- parity


def test_parity_question_states_decoder_logits_and_sequence_losses() -> None:
    model = fixture_model()
    inputs, expected = fixture_tensors(FIXTURE)
    questions, answers = inputs["question_input_ids"].shape[0], inputs["answer_input_ids"].shape[0]
    with torch.no_grad():
        image_states = model.vision_model(inputs["pixel_values"]).last_hidden_state
        states = model.encode_question(
            inputs["pixel_values"], inputs["question_input_ids"], inputs["question_attention_mask"]
        )
        answer_ids = inputs["answer_input_ids"].repeat(questions, 1)  # question-major pairs
        logits = model.decode_answers(
            answer_ids,
            states.repeat_interleave(answers, dim=0),
            inputs["answer_attention_mask"].repeat(questions, 1),
            inputs["question_attention_mask"].repeat_interleave(answers, dim=0),
        )
    torch.testing.assert_close(image_states, expected["image_embeds"], atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(states, expected["question_states"], atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(logits, expected["answer_decoder_logits_all_pairs"], atol=LOGIT_ATOL, rtol=0)
    labels = answer_ids.masked_fill(answer_ids == 0, -100)
    losses = summed_answer_losses(logits, labels).view(questions, answers)
    torch.testing.assert_close(losses, expected["answer_seq_loss_all_pairs"], atol=LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize(
    ("k", "ids", "probs"), [(K_TEST, "rank_topk_ids", "rank_topk_probs"), (6, "rank_all_ids", "rank_all_probs")]
)
def test_parity_answer_ranking(k: int, ids: str, probs: str) -> None:
    _, expected = fixture_tensors(FIXTURE)
    ranking = rank_fixture(fixture_model(), k)
    first_token_probs = expected["answer_first_token_probs"]
    torch.testing.assert_close(ranking.first_token_probs, first_token_probs, atol=FEATURE_ATOL, rtol=0)
    assert torch.equal(ranking.answer_indices, expected[ids])
    torch.testing.assert_close(ranking.scores, expected[probs], atol=FEATURE_ATOL, rtol=0)
    assert torch.equal(ranking.answer_indices[:, 0], expected["predicted_answer_index"])


def test_parity_distilled_training_loss_after_the_ema_step() -> None:
    model = fixture_model()
    _, expected = fixture_tensors(FIXTURE)
    with torch.no_grad():
        without_ema = model(**training_inputs(), return_loss=True, alpha=ALPHA).loss
    ema_step(model)
    with torch.no_grad():
        out = model(**training_inputs(), return_loss=True, alpha=ALPHA)
    torch.testing.assert_close(out.loss, expected["loss_train_alpha0.4"], atol=LOGIT_ATOL, rtol=0)
    # the momentum towers differ from the online ones in the fixture: the EMA step (and the teacher) matter
    assert not torch.allclose(without_ema, out.loss, atol=LOGIT_ATOL, rtol=0)
    weights = training_inputs()["answer_weights"]
    torch.testing.assert_close(out.loss, (weights * out.answer_losses).sum() / 2)


# --------------------------------------------------------------------------------------------------- loss options


def test_losses_only_when_asked_and_plain_cross_entropy_at_alpha_zero() -> None:
    model = fixture_model()
    with torch.no_grad():
        out = model(**training_inputs())
        assert out.loss is None and out.answer_losses is None and out.logits.shape == (3, 3, 64)
        plain = model(**training_inputs(), return_loss=True, alpha=0.0)
        distilled = model(**training_inputs(), return_loss=True, alpha=ALPHA)
    ids = training_inputs()["answer_input_ids"]
    labels = ids.masked_fill(ids == 0, -100)
    log_probs = torch.log_softmax(out.logits[:, :-1], dim=-1)
    picked = log_probs.gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    manual = -(picked * (labels[:, 1:] != -100)).sum(dim=1)
    torch.testing.assert_close(plain.answer_losses, manual, atol=1e-5, rtol=0)
    assert not torch.allclose(plain.loss, distilled.loss)


def test_ignored_labels_and_explicit_labels() -> None:
    model = fixture_model()
    inputs = training_inputs()
    ids = inputs["answer_input_ids"]
    with torch.no_grad():
        default = model(**inputs, return_loss=True, alpha=ALPHA)
        explicit = model(**inputs, labels=ids.masked_fill(ids == 0, -100), return_loss=True, alpha=ALPHA)
        nothing = model(**inputs, labels=torch.full_like(ids, -100), return_loss=True, alpha=ALPHA)
    torch.testing.assert_close(explicit.loss, default.loss, atol=0, rtol=0)
    assert torch.equal(nothing.answer_losses, torch.zeros(3))


def test_bad_inputs_raise_clear_errors() -> None:
    model = fixture_model()
    inputs = training_inputs()
    with pytest.raises(ValueError, match="answers_per_question"):
        model(**{**inputs, "answers_per_question": torch.tensor([1, 1])})
    with pytest.raises(ValueError, match="pass answers_per_question"):
        model(**{key: value for key, value in inputs.items() if key != "answers_per_question"})
    with pytest.raises(ValueError, match="one weight per answer"):
        model(**{**inputs, "answer_weights": torch.ones(2)}, return_loss=True)
    with pytest.raises(ValueError, match="k"):
        rank_fixture(model, 0)


def test_answer_head_is_tied_to_the_decoder_embeddings() -> None:
    model = fixture_model()
    assert model.answer_head.decoder.weight is model.answer_decoder.get_input_embeddings().weight
    assert model.momentum_answer_head.decoder.weight is model.momentum_answer_decoder.get_input_embeddings().weight
    assert len(model.answer_decoder.transformer.encoder.layers) == 6
    assert all(layer.has_cross_attention for layer in model.answer_decoder.transformer.encoder.layers)


# --------------------------------------------------------------------------------------------------- overfit


NARROW_VIT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1)


def tiny_config() -> VlpAlbefConfig:
    return tiny_albef_config(vision=NARROW_VIT, text=dict(vocab_size=24, num_hidden_layers=2, **NO_DROPOUT), momentum=0.9)


def test_overfits_eight_questions_and_ranks_the_trained_answers() -> None:
    torch.manual_seed(0)
    model = VlpAlbefForQuestionAnswering(tiny_config())
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(8, 3, 16, 16, generator=generator)
    questions = torch.randint(5, 24, (8, 5), generator=generator)
    questions[:, 0] = 2
    # candidates [CLS] a [SEP] [PAD] and [CLS] a b [SEP]; each question's answer is candidate i % 4
    candidates = torch.tensor([[2, 10, 3, 0], [2, 11, 3, 0], [2, 10, 12, 3], [2, 13, 14, 3]])
    candidate_mask = (candidates != 0).long()
    targets = torch.arange(8) % 4
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    callback = MomentumCallback()
    model.train()
    for _ in range(60):
        loss = model(
            questions, pixel_values, candidates[targets], answer_attention_mask=candidate_mask[targets],
            answer_weights=torch.ones(8), return_loss=True, alpha=0.0,  # distillation is covered by the parity test
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        callback.on_optimizer_step(None, None, None, model=model)
    model.eval()
    ranking = model.rank_answers(pixel_values, questions, candidates, answer_attention_mask=candidate_mask, k=4)
    assert torch.equal(ranking.answer_indices[:, 0], targets), (ranking.answer_indices, loss)
    assert loss.item() < 0.5


# --------------------------------------------------------------------------------------------------- round trip


def test_save_load_round_trip_keeps_frozen_momentum_towers(tmp_path: Path) -> None:
    model = fixture_model()
    ema_step(model)
    model.save_pretrained(tmp_path)
    loaded = VlpAlbefForQuestionAnswering.from_pretrained(tmp_path, dtype=torch.float32).eval()
    reference = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert all(not p.requires_grad for n, p in loaded.named_parameters() if n.startswith("momentum_"))
    assert loaded.answer_head.decoder.weight is loaded.answer_decoder.get_input_embeddings().weight
    with torch.no_grad():
        expected = model(**training_inputs(), return_loss=True).loss
        actual = loaded(**training_inputs(), return_loss=True).loss
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)
    first, second = rank_fixture(model, K_TEST), rank_fixture(loaded, K_TEST)
    assert torch.equal(first.answer_indices, second.answer_indices) and torch.equal(first.scores, second.scores)


# --------------------------------------------------------------------------------------------------- generation

CLS_ID, SEP_ID, PAD_ID = 2, 3, 0  # the fixture tokenizer's


def fixture_questions() -> dict[str, torch.Tensor]:
    return fixture_inputs(
        FIXTURE, pixel_values="pixel_values", input_ids="question_input_ids", attention_mask="question_attention_mask"
    )


def fixture_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab=str(fixture_dir(FIXTURE) / "vocab.txt"))


def test_generation_config_defaults_follow_the_text_config() -> None:
    model = fixture_model()
    config = model.generation_config
    assert (config.bos_token_id, config.pad_token_id) == (CLS_ID, PAD_ID)  # cls/pad ids set by the converter
    assert config.eos_token_id == SEP_ID  # the converter records [SEP] from the tokenizer: answers stop there
    assert (config.num_beams, config.max_new_tokens) == (3, 10)
    text = {**tiny_config().text_config.to_dict(), "cls_token_id": 2, "sep_token_id": 3}
    vision = tiny_config().vision_config.to_dict()
    with_sep = VlpAlbefForQuestionAnswering(VlpAlbefConfig(vision_config=vision, text_config=text))
    assert (with_sep.generation_config.bos_token_id, with_sep.generation_config.eos_token_id) == (2, 3)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_with_the_kv_cache_equals_generation_without(num_beams: int) -> None:
    model = fixture_model()
    settings = dict(num_beams=num_beams, max_new_tokens=5, eos_token_id=SEP_ID, min_new_tokens=2)
    cached = model.generate(**fixture_questions(), **settings)
    uncached = model.generate(**fixture_questions(), **settings, use_cache=False)
    assert torch.equal(cached, uncached), (cached, uncached)
    assert (cached[:, 0] == CLS_ID).all() and cached.shape[0] == 2 and cached.shape[1] >= 3


def test_greedy_first_token_is_the_argmax_of_the_ranking_first_token_distribution() -> None:
    model = fixture_model()
    inputs = fixture_questions()
    vocab = model.config.text_config.vocab_size
    # every token as a one-token candidate "[CLS] v [SEP]": first_token_probs is then the whole distribution
    candidates = torch.stack([torch.full((vocab,), CLS_ID), torch.arange(vocab), torch.full((vocab,), SEP_ID)], dim=1)
    ranking = model.rank_answers(inputs["pixel_values"], inputs["input_ids"], candidates, inputs["attention_mask"], k=4)
    generated = model.generate(**inputs, num_beams=1, max_new_tokens=1)
    assert generated.shape == (2, 2)
    assert torch.equal(generated[:, 1], ranking.first_token_probs.argmax(dim=1))
    torch.testing.assert_close(ranking.first_token_probs.sum(dim=1), torch.ones(2))


def test_beam_search_returns_ranked_sequences_and_decoded_answers() -> None:
    model = fixture_model()
    out = model.generate(
        **fixture_questions(), num_beams=3, num_return_sequences=2, max_new_tokens=4, eos_token_id=SEP_ID,
        return_dict_in_generate=True, output_scores=True,
    )
    assert out.sequences.shape[0] == 4 and (out.sequences[:, 0] == CLS_ID).all()
    scores = out.sequences_scores.view(2, 2)
    assert (scores[:, 0] >= scores[:, 1]).all()
    answers = model.generate_answers(fixture_tokenizer(), **fixture_questions(), num_beams=3, max_new_tokens=4)
    expected = fixture_tokenizer().batch_decode(
        model.generate(**fixture_questions(), num_beams=3, max_new_tokens=4, eos_token_id=SEP_ID),
        skip_special_tokens=True,
    )
    assert answers == [text.strip() for text in expected] and len(answers) == 2


def test_generation_errors_say_what_to_do() -> None:
    model = fixture_model()
    with pytest.raises(ValueError, match="pixel_values"):
        model.generate(input_ids=fixture_questions()["input_ids"])
    model.config.text_config.cls_token_id = None
    model.generation_config.bos_token_id = None
    with pytest.raises(ValueError, match="cls_token_id"):
        model.generate(**fixture_questions())
    with pytest.raises(ValueError, match="question states"):
        model.prepare_inputs_for_generation(torch.tensor([[CLS_ID]]))


def test_generation_config_round_trip_and_loading_without_it(tmp_path: Path) -> None:
    model = fixture_model()
    model.generation_config.eos_token_id = SEP_ID
    model.save_pretrained(tmp_path)
    loaded = VlpAlbefForQuestionAnswering.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert loaded.generation_config.eos_token_id == SEP_ID and loaded.generation_config.num_beams == 3
    (tmp_path / "generation_config.json").unlink()  # e.g. a checkpoint converted before generation existed
    bare = VlpAlbefForQuestionAnswering.from_pretrained(tmp_path, dtype=torch.float32).eval()
    settings = dict(num_beams=1, max_new_tokens=3, eos_token_id=SEP_ID)
    expected = model.generate(**fixture_questions(), **settings)
    assert torch.equal(bare.generate(**fixture_questions(), **settings), expected)


# --------------------------------------------------------------------------------------------------- from pretraining


def pretraining_config(fusion_layers: int = 6) -> VlpAlbefConfig:
    text = dict(vocab_size=24, num_hidden_layers=1 + fusion_layers, cls_token_id=2, mask_token_id=4)
    return tiny_albef_config(vision=NARROW_VIT, text=text, embed_dim=8, queue_size=8)


def perturbed_pretraining_model() -> VlpAlbefForPretraining:
    torch.manual_seed(0)
    model = VlpAlbefForPretraining(pretraining_config())
    with torch.no_grad():  # every tensor distinct, so a copy from the wrong place shows
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    return model


def assert_same_state(module: torch.nn.Module, reference: torch.nn.Module) -> None:
    expected = reference.state_dict()
    state = module.state_dict()
    assert state.keys() == expected.keys()
    for key, value in state.items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("from_directory", [False, True])
def test_from_pretraining_copies_weights_where_vqa_py_puts_them(tmp_path: Path, from_directory: bool) -> None:
    pretrained = perturbed_pretraining_model()
    if from_directory:
        pretrained.save_pretrained(tmp_path)
        model = VlpAlbefForQuestionAnswering.from_pretraining(tmp_path, dtype=torch.float32)
    else:
        model = VlpAlbefForQuestionAnswering.from_pretraining(pretrained)
    assert not model.training
    source = pretrained
    assert_same_state(model.vision_model, source.vision_model)
    assert_same_state(model.text_model, source.text_model)  # text and fusion layers: the question encoder
    decoder, source_text = model.answer_decoder.transformer, source.text_model.transformer
    assert_same_state(decoder.embeddings, source_text.embeddings)
    for index, layer in enumerate(decoder.encoder.layers):
        assert_same_state(layer, source_text.encoder.layers[1 + index])  # fusion_layer 1 -> decoder layer 0
    assert_same_state(model.answer_head, pretrained.mlm_head)
    assert model.answer_head.decoder.weight is decoder.embeddings.word_embeddings.weight
    for online, momentum in model.momentum_pairs():
        assert_same_state(momentum, online)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("momentum_"))
    # the decoder and question encoder are separate parameters from here on
    assert model.answer_decoder.transformer.embeddings.word_embeddings.weight is not (
        model.text_model.transformer.embeddings.word_embeddings.weight
    )


def test_from_pretraining_with_few_fusion_layers_copies_them_and_says_so(caplog) -> None:
    source = VlpAlbefForPretraining(pretraining_config(fusion_layers=2))
    with caplog.at_level("WARNING"):
        model = VlpAlbefForQuestionAnswering.from_pretraining(source)
    assert "only 2 fusion layers" in caplog.text
    source_text = source.text_model.transformer
    fusion = source.config.text_config.fusion_layer
    for index, layer in enumerate(model.answer_decoder.transformer.encoder.layers[:2]):
        assert_same_state(layer, source_text.encoder.layers[fusion + index])


def test_from_pretraining_rejects_other_models() -> None:
    with pytest.raises(TypeError, match="VlpAlbefForPretraining"):
        VlpAlbefForQuestionAnswering.from_pretraining(fixture_model())
    with pytest.raises(TypeError, match="only apply"):
        VlpAlbefForQuestionAnswering.from_pretraining(perturbed_pretraining_model(), dtype=torch.float32)
