"""BLIP VQA: the original's recorded question states, first-token probabilities, answer scores, rankings, beam-3
answers and weighted training loss reproduced through ``convert_blip.py --head vqa``; cache == no cache; an
overfitting run whose ranking and generation give the learned answers; initialisation from pre-training (where each
weight lands); loading and errors."""

from __future__ import annotations

import copy
import functools
import json
import logging
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForVisualQuestionAnswering

from conversion.common import run_cli
from conversion.convert_blip import convert_blip_checkpoint, main
from hf_vlp.models.blip import (
    VlpBlipConfig,
    VlpBlipForPretraining,
    VlpBlipForQuestionAnswering,
    VlpBlipModel,
)
from hf_vlp.models.blip.modeling_blip import with_first_token
from hf_vlp.objectives.lm import shifted_lm_loss
from tests.helpers.fixtures import fixture_dir, fixture_inputs, fixture_metadata, fixture_tensors
from tests.helpers.tiny_models import WIDE_BLIP_TEXT, tiny_blip_config

FIXTURE = fixture_dir("blip_vqa")
DEC, SEP, PAD = 64, 3, 0
FEATURE_ATOL, LOGIT_ATOL = 1e-5, 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def converted():
    return convert_blip_checkpoint(FIXTURE / "checkpoint.pth", None, FIXTURE / "original_config.json", FIXTURE / "vocab.txt")


def vqa_model() -> VlpBlipForQuestionAnswering:
    return converted().model.eval()


def fixture() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    return *fixture_tensors(FIXTURE.name), fixture_metadata(FIXTURE.name)


def fixture_inputs_metadata() -> dict[str, str]:
    return fixture_metadata(FIXTURE.name, "inputs")


def questions() -> dict[str, torch.Tensor]:
    return fixture_inputs(
        FIXTURE.name, pixel_values="pixel_values", input_ids="question_input_ids", attention_mask="question_attention_mask"
    )


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float, name: str) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0, msg=lambda message: f"{name}: {message}")


def tiny_config(vision_width: int = 32) -> VlpBlipConfig:
    vision = dict(hidden_size=vision_width, intermediate_size=64, num_hidden_layers=1)
    return tiny_blip_config(vision=vision, text=WIDE_BLIP_TEXT, queue_size=16)


# --------------------------------------------------------------------------------------------------- parity


def test_converter_writes_the_vqa_head_and_it_reproduces_every_recorded_tensor() -> None:
    inputs, expected, _ = fixture()
    result = converted()
    assert result.kind == "vqa" and result.head == "vqa" and type(result.model) is VlpBlipForQuestionAnswering
    model = vqa_model()
    assert model.answer_head.decoder.weight is model.answer_decoder.get_input_embeddings().weight
    layer = model.answer_decoder.transformer.encoder.layers[0]
    assert layer.cross_attn.kv.in_features == model.config.text_config.hidden_size  # question states, text width
    answers, answer_mask = inputs["answer_input_ids"], inputs["answer_attention_mask"]
    question_mask = inputs["question_attention_mask"]
    with torch.no_grad():
        states = model.encode_question(**questions())
        all_pairs = model(question_states=states, attention_mask=question_mask, answer_input_ids=answers.repeat(2, 1),
                          answer_attention_mask=answer_mask.repeat(2, 1), answers_per_question=torch.tensor([6, 6]))
        training = model(**questions(), answer_input_ids=inputs["train_answer_input_ids"],
                         answer_attention_mask=inputs["train_answer_attention_mask"],
                         answer_weights=inputs["train_answer_weights"],
                         answers_per_question=inputs["train_answers_per_question"], return_loss=True)
    close(states, expected["question_states"], FEATURE_ATOL, "question_states")
    close(all_pairs.logits, expected["answer_decoder_logits_all_pairs"], LOGIT_ATOL, "answer decoder logits")
    close(training.loss, expected["loss_train"], LOGIT_ATOL, "weighted training loss")
    labels = answers.masked_fill(answers == PAD, -100).repeat(2, 1)
    summed = shifted_lm_loss(all_pairs.logits, labels, 0.1, per_sequence=True)
    close(-summed.view(2, 6), expected["answer_scores_all_pairs"], LOGIT_ATOL, "scores from the forward's logits")


def test_ranking_reproduces_first_token_probabilities_scores_and_choices() -> None:
    inputs, expected, _ = fixture()
    model = vqa_model()
    candidates = dict(answer_input_ids=inputs["answer_input_ids"], answer_attention_mask=inputs["answer_attention_mask"])
    everything = model.rank_answers(**questions(), **candidates, k=100)  # capped at the 6 candidates
    pruned = model.rank_answers(**questions(), **candidates, k=3)  # the fixture's k_test
    close(everything.first_token_probs, expected["answer_first_token_probs"], FEATURE_ATOL, "first-token probs")
    in_candidate_order = torch.empty_like(everything.scores).scatter_(1, everything.answer_indices, everything.scores)
    close(in_candidate_order, expected["answer_scores_all_pairs"], LOGIT_ATOL, "scores, no first-token term/softmax")
    assert torch.equal(everything.answer_indices[:, 0], expected["rank_max_ids_all"])
    assert torch.equal(pruned.answer_indices[:, 0], expected["rank_max_ids_k"])
    assert everything.answer_indices.shape == (2, 6) and pruned.answer_indices.shape == (2, 3)
    assert (everything.scores[:, :-1] >= everything.scores[:, 1:]).all()
    kept = everything.first_token_probs.topk(3, dim=1).indices.sort(dim=1).values
    assert torch.equal(pruned.answer_indices.sort(dim=1).values, kept)  # pruning keeps the top first-token probs


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_search_answers_are_the_originals(use_cache: bool) -> None:
    _, expected, metadata = fixture()
    with torch.no_grad():
        generated = vqa_model().generate(**questions(), use_cache=use_cache)
    assert torch.equal(generated, expected["generated_ids_beam3"]), generated
    answers = vqa_model().generate_answers(converted().processor, **questions())
    assert answers == json.loads(metadata["generated_answers_beam3"])


def test_sampled_answers_with_the_caches_equal_those_without() -> None:
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        with torch.no_grad():
            runs.append(vqa_model().generate(**questions(), do_sample=True, num_beams=1, num_return_sequences=3,
                                             use_cache=use_cache))
    assert torch.equal(*runs) and runs[0].shape[0] == 6


# --------------------------------------------------------------------------------------------------- training


def test_overfitting_eight_question_answer_pairs_then_ranking_and_generation_give_them() -> None:
    torch.manual_seed(0)
    model = VlpBlipForQuestionAnswering(tiny_config()).train()
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(8, 3, 16, 16, generator=generator)
    question_ids = torch.randint(5, 30, (8, 6), generator=generator)
    question_ids[:, 0], question_ids[:, -1] = 2, SEP
    candidates = torch.tensor([[2, 30 + i, 31 + (i % 6), SEP] for i in range(8)])  # 8 two-token answers
    answer_of = torch.arange(8).roll(3)
    answers = candidates[answer_of]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):  # ~30 steps suffice; no dropout, so training logits are the evaluation logits
        output = model(question_ids, pixel_values, answers, return_loss=True)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        if torch.equal(output.logits.argmax(-1)[:, :-1], answers[:, 1:]):
            break
    model.eval()
    ranking = model.rank_answers(pixel_values, question_ids, candidates, k=4)
    with torch.no_grad():
        generated = model.generate(pixel_values, question_ids, max_length=5)
    assert torch.equal(ranking.answer_indices[:, 0], answer_of), f"loss {output.loss.item():.3f}"
    assert torch.equal(generated[:, 1:4], answers[:, 1:]) and (generated[:, 4:] == PAD).all()


# --------------------------------------------------------------------------------------------------- from pre-training


def perturbed_pretraining_model(vision_width: int = 32) -> VlpBlipForPretraining:
    """A tiny pre-training model with every parameter redrawn, so LayerNorms and biases differ from a fresh init."""
    torch.manual_seed(0)
    model = VlpBlipForPretraining(tiny_config(vision_width))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    return model.eval()


def assert_copied(target: torch.nn.Module, source: torch.nn.Module, skip: tuple[str, ...] = ()) -> list[str]:
    """Every tensor of ``target`` (but names containing one of ``skip``) equals ``source``'s of the same name."""
    source_state = source.state_dict()
    names = [name for name in target.state_dict() if not any(part in name for part in skip)]
    for name in names:
        assert torch.equal(target.state_dict()[name], source_state[name]), name
    return names


@pytest.mark.parametrize("from_directory", [False, True])
def test_from_pretraining_copies_weights_where_blip_vqa_loads_them(tmp_path: Path, from_directory: bool) -> None:
    pretrained = perturbed_pretraining_model()
    if from_directory:
        pretrained.save_pretrained(tmp_path)
        model = VlpBlipForQuestionAnswering.from_pretraining(tmp_path, dtype=torch.float32)
    else:
        model = VlpBlipForQuestionAnswering.from_pretraining(pretrained)
    assert not model.training and model.config.vision_config.drop_path_rate == 0.1  # blip_vqa.py's ViT
    assert_copied(model.vision_model, pretrained.vision_model)
    encoder_names = assert_copied(model.text_model, pretrained.text_model)  # question encoder <- encoder role
    decoder_names = assert_copied(model.answer_decoder, pretrained.text_model)  # answer decoder <- decoder role
    assert_copied(model.answer_head, pretrained.lm_head)
    assert any(".attn." in name for name in encoder_names) and not any("causal" in name for name in encoder_names)
    for part in ("embeddings.", ".causal_attn.", ".norm_causal.", ".cross_attn.", ".norm_cross.", ".mlp.", ".norm2."):
        assert any(part in name for name in decoder_names), part
    assert not any(".attn." in name for name in decoder_names)
    # shared in pre-training, separate parameters from now on; the answer head stays tied to the decoder's embeddings
    encoder_storage = {parameter.data_ptr() for parameter in model.text_model.parameters()}
    assert not encoder_storage & {parameter.data_ptr() for parameter in model.answer_decoder.parameters()}
    assert model.answer_head.decoder.weight is model.answer_decoder.get_input_embeddings().weight
    assert model.answer_decoder.transformer.encoder.layers[0].cross_attn.kv.in_features == 32  # question states
    # the same functions: [ENC] question encoding, and the [DEC] decoder + LM head over any memory of that width
    generator = torch.Generator().manual_seed(2)
    pixel_values = torch.randn(2, 3, 16, 16, generator=generator)
    ids = torch.tensor([[2, 9, 10, SEP], [2, 11, SEP, PAD]])
    mask = (ids != PAD).long()
    with torch.no_grad():
        images = pretrained.vision_model(pixel_values).last_hidden_state
        states = pretrained.text_model(with_first_token(ids, 39), mask, encoder_hidden_states=images,
                                       mode="multimodal").last_hidden_state
        decoded = pretrained.text_model(with_first_token(ids, 38), mask, encoder_hidden_states=images, mode="decoder")
        torch.testing.assert_close(model.encode_question(pixel_values, ids, mask), states, rtol=0, atol=1e-6)
        logits = pretrained.lm_head(decoded.last_hidden_state)
        torch.testing.assert_close(model.decode_answers(ids, images, mask), logits, rtol=0, atol=1e-5)


def test_from_pretraining_keeps_fresh_cross_attention_keys_when_vision_and_text_widths_differ(caplog) -> None:
    pretrained = perturbed_pretraining_model(vision_width=48)
    with caplog.at_level(logging.WARNING, logger="hf_vlp.models.blip.modeling_blip_vqa"):
        model = VlpBlipForQuestionAnswering.from_pretraining(pretrained)
    decoder_layers = model.answer_decoder.transformer.encoder.layers
    source_layers = pretrained.text_model.transformer.encoder.layers
    assert (decoder_layers[0].cross_attn.kv.in_features, source_layers[0].cross_attn.kv.in_features) == (32, 48)
    assert model.text_model.transformer.encoder.layers[0].cross_attn.kv.in_features == 48  # reads the image
    # only the key/value weights differ in shape (as in the original: key/value biases and the query still load)
    assert_copied(model.answer_decoder, pretrained.text_model, skip=(".cross_attn.kv.weight",))
    assert_copied(model.text_model, pretrained.text_model)
    message = " ".join(record.getMessage() for record in caplog.records)
    assert "2 tensors keep their fresh initialisation" in message and "cross_attn.kv.weight" in message
    answers = torch.tensor([[2, 9, SEP], [2, 10, SEP]])
    output = model(torch.tensor([[2, 5, SEP], [2, 6, SEP]]), torch.randn(2, 3, 16, 16), answers, return_loss=True)
    assert torch.isfinite(output.loss)


def test_from_pretraining_options_and_errors(tmp_path: Path) -> None:
    pretrained = perturbed_pretraining_model()
    kept = VlpBlipForQuestionAnswering.from_pretraining(pretrained, drop_path_rate=None)
    assert kept.config.vision_config.drop_path_rate == pretrained.config.vision_config.drop_path_rate == 0.0
    with pytest.raises(TypeError, match="only apply when `pretrained` is a directory"):
        VlpBlipForQuestionAnswering.from_pretraining(pretrained, dtype=torch.float32)
    with pytest.raises(TypeError, match="must be a VlpBlipForPretraining"):
        VlpBlipForQuestionAnswering.from_pretraining(VlpBlipModel(tiny_config()))
    VlpBlipModel(tiny_config()).save_pretrained(tmp_path)  # encoders only: no decoder, no LM head
    with pytest.raises(ValueError, match="lacks .* weights a BLIP VQA model starts from .*lm_head"):
        VlpBlipForQuestionAnswering.from_pretraining(tmp_path)


def test_rank_answer_list_answers_with_the_processors_candidates() -> None:
    expected = fixture()[1]
    candidates = json.loads(fixture_inputs_metadata()["answer_candidates"])
    processor = copy.deepcopy(converted().processor)
    processor.answer_list = candidates
    best = vqa_model().rank_answer_list(processor, **questions(), k=100)
    assert best == [candidates[index] for index in expected["rank_max_ids_all"].tolist()]
    pruned = vqa_model().rank_answer_list(converted().processor, **questions(), answer_list=candidates, k=3)
    assert pruned == [candidates[index] for index in expected["rank_max_ids_k"].tolist()]
    with pytest.raises(ValueError, match="no answer_list"):
        vqa_model().rank_answer_list(converted().processor, **questions())


# --------------------------------------------------------------------------------------------------- loading, CLI


def test_cli_writes_a_folder_that_auto_classes_load(tmp_path: Path, capsys) -> None:
    output = tmp_path / "blip-vqa"
    status = run_cli(main, ["--checkpoint", str(FIXTURE / "checkpoint.pth"), "--output", str(output),
                            "--original-config", str(FIXTURE / "original_config.json"),
                            "--tokenizer", str(FIXTURE / "vocab.txt")])
    assert status == 0, capsys.readouterr().err
    loaded = AutoModelForVisualQuestionAnswering.from_pretrained(output, dtype=torch.float32).eval()
    assert type(loaded) is VlpBlipForQuestionAnswering
    assert (loaded.generation_config.num_beams, loaded.generation_config.max_length) == (3, 10)
    with torch.no_grad():
        assert torch.equal(loaded.generate(**questions()), fixture()[1]["generated_ids_beam3"])
    card = (output / "README.md").read_text()  # no pipeline_tag: transformers 5 has no VQA pipeline; hf_vlp's own
    assert "pipeline_tag" not in card and 'pipeline("vlp-visual-question-answering"' in card


def test_errors_name_the_problem() -> None:
    model = VlpBlipForQuestionAnswering(tiny_config()).eval()
    pixel_values, question_ids = torch.randn(2, 3, 16, 16), torch.tensor([[2, 5, 6, SEP], [2, 7, SEP, PAD]])
    answers = torch.tensor([[2, 9, SEP], [2, 10, SEP], [2, 11, SEP]])
    with pytest.raises(ValueError, match="pass answer_input_ids"):
        model(question_ids, pixel_values)
    with pytest.raises(ValueError, match="3 answers for 2 questions: pass answers_per_question"):
        model(question_ids, pixel_values, answers)
    with pytest.raises(ValueError, match="one positive count per question"):
        model(question_ids, pixel_values, answers, answers_per_question=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="one weight per answer"):
        model(question_ids, pixel_values, answers, answers_per_question=torch.tensor([2, 1]),
              answer_weights=torch.ones(2), return_loss=True)
    with pytest.raises(ValueError, match="one image per question"):
        model.encode_question(pixel_values[:1], question_ids)
    with pytest.raises(ValueError, match="k .* must be >= 1"):
        model.rank_answers(pixel_values, question_ids, answers, k=0)
    with pytest.raises(ValueError, match="needs the images"):
        model.generate(input_ids=question_ids)
    with pytest.raises(ValueError, match="repeat the question states per answer"):
        model.decode_answers(answers, torch.randn(2, 4, 32))
