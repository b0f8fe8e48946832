"""ALBEF converter: parity with the original code's outputs after conversion, the CLI, and every error path."""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor, AutoTokenizer

import conversion.convert_albef as convert_albef
from conversion.common import ConversionError, run_cli
from conversion.convert_albef import MOMENTUM_PREFIXES, convert_albef_checkpoint, main
from hf_vlp.models.albef import (
    VlpAlbefForImageTextRetrieval,
    VlpAlbefForMaskedLM,
    VlpAlbefForPretraining,
    VlpAlbefForQuestionAnswering,
    VlpAlbefForTextAssignment,
    VlpAlbefForVisualEntailment,
    VlpAlbefForVisualReasoning,
    VlpAlbefModel,
    VlpAlbefProcessor,
)
from hf_vlp.modules.vision import interpolate_grid_embeddings
from tests.conversion.helpers import converter_error, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "originals" / "albef_pretrain"
CHECKPOINT, CONFIG, VOCAB = FIXTURE / "checkpoint.pth", FIXTURE / "original_config.json", FIXTURE / "vocab.txt"
LOGIT_ATOL = 1e-4


def fixture_tensors() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return load_file(FIXTURE / "inputs.safetensors"), load_file(FIXTURE / "outputs.safetensors")


def towers_output(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Image and text states, contrastive logits, features and ITM logits of the online towers of a flat ALBEF head."""
    with torch.no_grad():
        image_states = model.encode_image(inputs["pixel_values"]).last_hidden_state
        text_states = model.encode_text(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state
        fused = model.fuse(text_states, image_states, inputs["attention_mask"]).last_hidden_state
        image_feat = torch.nn.functional.normalize(model.vision_proj(image_states[:, 0]), dim=-1)
        text_feat = torch.nn.functional.normalize(model.text_proj(text_states[:, 0]), dim=-1)
    return {
        "image_states": image_states,
        "logits_per_image": image_feat @ text_feat.t() / model.temp,
        "text_embeds": text_feat,
        "itm_logits": model.itm_head(fused[:, 0]),
    }


def assert_reproduces_fixture(model: VlpAlbefForMaskedLM | VlpAlbefForPretraining) -> None:
    inputs, expected = fixture_tensors()
    out = towers_output(model, inputs)
    with torch.no_grad():
        mlm_states = model.text_model(
            inputs["mlm_input_ids"], inputs["attention_mask"], encoder_hidden_states=out["image_states"]
        ).last_hidden_state
        mlm = model.mlm_head(mlm_states)
    torch.testing.assert_close(out["logits_per_image"], expected["sim_i2t"], atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(out["itm_logits"], expected["itm_logits_pos"], atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(out["text_embeds"], expected["text_feat"], atol=1e-5, rtol=0)
    torch.testing.assert_close(mlm, expected["mlm_logits"], atol=LOGIT_ATOL, rtol=0)


@pytest.fixture
def state_dict() -> dict[str, torch.Tensor]:
    return torch.load(CHECKPOINT, weights_only=True)["model"]


cli_error = functools.partial(converter_error, main)


def convert_fixture_cli(folder: Path, output: Path, architecture: str) -> dict[str, torch.Tensor]:
    """Convert the fixture in ``folder`` (with its config and vocabulary) through the command line to ``output``, check
    the class written and return the original state dict."""
    arguments = [
        "--checkpoint", str(folder / "checkpoint.pth"), "--output", str(output),
        "--original-config", str(folder / "original_config.json"), "--tokenizer", str(folder / "vocab.txt"),
    ]
    assert run_cli(main, arguments) == 0
    assert json.loads((output / "config.json").read_text())["architectures"] == [architecture]
    return torch.load(folder / "checkpoint.pth", weights_only=True)["model"]


# --------------------------------------------------------------------------------------------------- success


def test_cli_end_to_end_with_config_and_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "albef"
    status = run_cli(
        main,
        ["--checkpoint", str(CHECKPOINT), "--output", str(output), "--original-config", str(CONFIG), "--tokenizer", str(VOCAB)],
    )
    assert status == 0, capsys.readouterr().err
    assert {"config.json", "model.safetensors", "README.md", "tokenizer_config.json"} <= {p.name for p in output.iterdir()}
    readme = (output / "README.md").read_text()
    assert "checkpoint.pth" in readme and "momentum" in readme and "--original-config" in readme
    assert json.loads((output / "config.json").read_text())["architectures"] == ["VlpAlbefForPretraining"]
    pretraining = VlpAlbefForPretraining.from_pretrained(output, dtype=torch.float32).eval()
    assert_reproduces_fixture(pretraining)
    config = pretraining.config.text_config
    assert (config.pad_token_id, config.cls_token_id, config.mask_token_id) == (0, 2, 4)  # for in-model MLM masking
    assert config.sep_token_id == 3  # VQA answers end there: generate stops without an explicit eos_token_id
    model = VlpAlbefForMaskedLM.from_pretrained(output, dtype=torch.float32).eval()
    assert_reproduces_fixture(model)
    assert isinstance(VlpAlbefModel.from_pretrained(output, dtype=torch.float32), VlpAlbefModel)

    tokenizer = AutoTokenizer.from_pretrained(output)
    inputs, _ = fixture_tensors()
    metadata = json.loads(load_file_metadata(FIXTURE / "inputs.safetensors")["captions_after_pre_caption"])
    ids = tokenizer(metadata)["input_ids"]
    assert all(row[-1] == tokenizer.sep_token_id for row in ids)
    # ALBEF's format is [CLS] tokens without [SEP]: the stock tokenizer's ids minus the last one
    for row, expected, mask in zip(ids, inputs["input_ids"], inputs["attention_mask"]):
        assert row[:-1] == expected[mask.bool()].tolist()
    special = (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id)
    assert special + (tokenizer.mask_token_id,) == (0, 1, 2, 3, 4)


def load_file_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def test_converted_folder_holds_a_processor_whose_inputs_reproduce_the_fixture(tmp_path: Path) -> None:
    """The folder is complete: AutoProcessor loads ALBEF's processor, which turns the raw captions and images into the
    fixture's inputs, and the converted model (verified on the way) gives the original's outputs on them."""
    output = tmp_path / "albef"
    result = convert_albef_checkpoint(CHECKPOINT, output, CONFIG, VOCAB, verify=True)
    assert set(result.differences) >= {"image_embeds", "text_embeds", "fusion_hidden", "itm_logits"}
    assert max(result.differences.values()) < LOGIT_ATOL
    assert "Compared with the original tensors run through transformers' BERT/BLIP modules" in (
        output / "README.md"
    ).read_text()
    processor = AutoProcessor.from_pretrained(output)
    assert isinstance(processor, VlpAlbefProcessor) and processor.image_processor.size["height"] == 32
    inputs, expected = fixture_tensors()
    captions = json.loads(load_file_metadata(FIXTURE / "inputs.safetensors")["raw_captions"])
    encoded = processor(text=captions, images=list(inputs["raw_images_uint8"].numpy()), return_tensors="pt")
    assert torch.equal(encoded["input_ids"], inputs["input_ids"])
    assert torch.equal(encoded["attention_mask"], inputs["attention_mask"])
    torch.testing.assert_close(encoded["pixel_values"], inputs["pixel_values"], atol=1e-5, rtol=0)
    model = VlpAlbefForPretraining.from_pretrained(output, dtype=torch.float32).eval()
    out = towers_output(model, encoded)
    torch.testing.assert_close(out["itm_logits"], expected["itm_logits_pos"], atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(out["logits_per_image"], expected["sim_i2t"], atol=LOGIT_ATOL, rtol=0)


def test_verify_fails_on_a_wrong_reference_and_covers_the_tower_heads_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = convert_albef.reference_outputs

    def perturbed(*args, **kwargs):
        outputs = reference(*args, **kwargs)
        return {**outputs, "itm_logits": outputs["itm_logits"] + 0.01}

    monkeypatch.setattr(convert_albef, "reference_outputs", perturbed)
    message = cli_error(tmp_path, capsys, CHECKPOINT, "--original-config", str(CONFIG), "--verify")
    assert "Verification against the original tensors" in message and "itm_logits" in message
    monkeypatch.undo()
    message = cli_error(tmp_path, capsys, VQA / "checkpoint.pth", "--original-config", str(VQA / "original_config.json"), "--verify")
    assert "it covers --head pretraining, masked_lm, retrieval, not --head vqa" in message


def test_masked_lm_head_drops_momentum_towers_and_queues_explicitly(
    state_dict: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="conversion.albef"):
        result = convert_albef_checkpoint(CHECKPOINT, original_config=CONFIG, head="masked_lm")
    assert type(result.model) is VlpAlbefForMaskedLM
    momentum = {key for key in state_dict if key.split(".")[0] in MOMENTUM_PREFIXES}
    queues = {"image_queue", "text_queue", "queue_ptr"}
    extras = {"text_encoder.bert.embeddings.position_ids", "text_encoder.cls.predictions.bias"}
    assert len(momentum) > 100 and set(result.dropped) == momentum | queues | extras
    assert f"dropped {len(momentum) + 3} momentum/queue tensors" in caplog.text
    assert result.tokenizer is None
    assert_reproduces_fixture(result.model)


def test_momentum_towers_and_queues_are_mapped_into_the_pretraining_head(state_dict: dict[str, torch.Tensor]) -> None:
    result = convert_albef_checkpoint(CHECKPOINT, original_config=CONFIG)
    model = result.model
    assert type(model) is VlpAlbefForPretraining
    assert set(result.dropped) == {
        f"{encoder}.{key}"
        for encoder in ("text_encoder", "text_encoder_m")
        for key in ("bert.embeddings.position_ids", "cls.predictions.bias")
    }
    assert torch.equal(model.image_queue.queue, state_dict["image_queue"])
    assert torch.equal(model.text_queue.queue, state_dict["text_queue"])
    for queue in (model.image_queue, model.text_queue):  # the shared [1] pointer copied into each 0-d ptr
        assert queue.ptr.shape == () and queue.ptr.dtype == torch.long and queue.ptr.item() == state_dict["queue_ptr"].item()
    assert model.image_queue.ptr.data_ptr() != model.text_queue.ptr.data_ptr()
    pairs = {
        "momentum_vision_proj.weight": "vision_proj_m.weight",
        "momentum_text_proj.bias": "text_proj_m.bias",
        "momentum_vision_model.transformer.norm_post.weight": "visual_encoder_m.norm.weight",
        "momentum_vision_model.transformer.class_embedding": "visual_encoder_m.cls_token",
        "momentum_text_model.transformer.embeddings.word_embeddings.weight": "text_encoder_m.bert.embeddings.word_embeddings.weight",
        "momentum_text_model.transformer.encoder.layers.3.cross_attn.q.weight": "text_encoder_m.bert.encoder.layer.3.crossattention.self.query.weight",
        "momentum_mlm_head.dense.weight": "text_encoder_m.cls.predictions.transform.dense.weight",
        "momentum_mlm_head.decoder.bias": "text_encoder_m.cls.predictions.bias",
        "vision_proj.weight": "vision_proj.weight",
    }
    ours = model.state_dict()
    for target, source in pairs.items():
        assert torch.equal(ours[target].reshape(-1), state_dict[source].reshape(-1)), target
    qkv = ours["momentum_text_model.transformer.encoder.layers.0.attn.qkv.weight"]
    original = [state_dict[f"text_encoder_m.bert.encoder.layer.0.attention.self.{p}.weight"] for p in ("query", "key", "value")]
    assert torch.equal(qkv, torch.cat(original))
    # momentum towers differ from the online ones in the fixture, so a swapped mapping would show
    assert not torch.equal(ours["momentum_vision_proj.weight"], ours["vision_proj.weight"])
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("momentum_"))
    assert_reproduces_fixture(model)


def test_pretraining_errors_name_momentum_and_queue_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], state_dict: dict
) -> None:
    broken = dict(state_dict)
    del broken["queue_ptr"], broken["text_encoder_m.bert.encoder.layer.1.output.dense.bias"]
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, broken), "--original-config", str(CONFIG))
    assert "target keys that no source key fills (3)" in message
    assert "image_queue.ptr" in message and "text_queue.ptr" in message
    assert "momentum_text_model.transformer.encoder.layers.1.mlp.fc2.bias" in message
    untied = dict(state_dict)
    untied["text_encoder_m.cls.predictions.decoder.bias"] = untied["text_encoder_m.cls.predictions.bias"] + 1
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, untied), "--original-config", str(CONFIG))
    assert "text_encoder_m.cls.predictions.decoder.bias differs from text_encoder_m.cls.predictions.bias" in message


def test_cli_masked_lm_head_and_checkpoints_without_momentum(tmp_path: Path, state_dict: dict) -> None:
    online_only = {k: v for k, v in state_dict.items() if k.split(".")[0] not in MOMENTUM_PREFIXES and "queue" not in k}
    result = convert_albef_checkpoint(save_checkpoint(tmp_path, online_only), original_config=CONFIG)
    assert type(result.model) is VlpAlbefForMaskedLM  # auto: no momentum towers
    assert_reproduces_fixture(result.model)
    output = tmp_path / "masked_lm"
    arguments = ["--checkpoint", str(CHECKPOINT), "--output", str(output), "--original-config", str(CONFIG)]
    assert run_cli(main, [*arguments, "--head", "masked_lm"]) == 0
    assert json.loads((output / "config.json").read_text())["architectures"] == ["VlpAlbefForMaskedLM"]
    assert "--head masked_lm" in (output / "README.md").read_text()
    with pytest.raises(ConversionError, match="head must be one of"):
        convert_albef_checkpoint(CHECKPOINT, original_config=CONFIG, head="classification")


def test_error_missing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], state_dict: dict) -> None:
    del state_dict["text_encoder.bert.encoder.layer.3.output.LayerNorm.bias"]
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, state_dict), "--original-config", str(CONFIG))
    assert "target keys that no source key fills (1): text_model.transformer.encoder.layers.3.norm2.bias" in message


def test_error_missing_part_of_a_fused_tensor(tmp_path: Path, capsys: pytest.CaptureFixture[str], state_dict: dict) -> None:
    del state_dict["text_encoder.bert.encoder.layer.2.crossattention.self.value.weight"]
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, state_dict), "--original-config", str(CONFIG))
    assert "text_model.transformer.encoder.layers.2.cross_attn.kv.weight" in message and "lacks ['value']" in message


def test_error_extra_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], state_dict: dict) -> None:
    state_dict["cls_head.0.weight"] = torch.zeros(3)
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, state_dict), "--original-config", str(CONFIG))
    assert "unexpected source keys that no rule consumes (1): cls_head.0.weight" in message


def test_error_untied_decoder(tmp_path: Path, capsys: pytest.CaptureFixture[str], state_dict: dict) -> None:
    state_dict["text_encoder.cls.predictions.decoder.weight"] = state_dict["text_encoder.cls.predictions.decoder.weight"] + 1
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, state_dict), "--original-config", str(CONFIG))
    assert "decoder.weight differs from text_encoder.bert.embeddings.word_embeddings.weight" in message


def test_error_shape_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str], state_dict: dict) -> None:
    state_dict["itm_head.bias"] = torch.zeros(3)
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, state_dict), "--original-config", str(CONFIG))
    assert "itm_head.bias (from itm_head.bias): expected [2], got [3]" in message


def test_error_head_counts_need_the_original_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = cli_error(tmp_path, capsys, CHECKPOINT)
    assert "width 48 cannot be split into 0 attention heads" in message and "vit_num_heads" in message


def test_error_config_that_contradicts_the_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = json.loads(CONFIG.read_text())
    original["bert_config"]["fusion_layer"] = 1
    (tmp_path / "config.json").write_text(json.dumps(original))
    message = cli_error(tmp_path, capsys, CHECKPOINT, "--original-config", str(tmp_path / "config.json"))
    assert "bert_config.fusion_layer 1 contradicts the checkpoint" in message
    original["bert_config"] = "configs/config_bert.json"
    (tmp_path / "config.json").write_text(json.dumps(original))
    message = cli_error(tmp_path, capsys, CHECKPOINT, "--original-config", str(tmp_path / "config.json"))
    assert "must hold the CONTENT of the BERT json" in message
    assert "Original config not found" in cli_error(tmp_path, capsys, CHECKPOINT, "--original-config", str(tmp_path / "x.json"))


def test_error_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ("--original-config", str(CONFIG), "--tokenizer")
    assert "Tokenizer not found" in cli_error(tmp_path, capsys, CHECKPOINT, *base, str(tmp_path / "vocab.txt"))
    tokens = VOCAB.read_text().splitlines()
    (tmp_path / "short.txt").write_text("\n".join(tokens[:60]))
    message = cli_error(tmp_path, capsys, CHECKPOINT, *base, str(tmp_path / "short.txt"))
    assert "The tokenizer has 60 tokens but the checkpoint's vocabulary has 64" in message
    (tmp_path / "nomask.txt").write_text("\n".join(["[unused]" if t == "[MASK]" else t for t in tokens]))
    assert "lacks the special tokens ['[MASK]']" in cli_error(tmp_path, capsys, CHECKPOINT, *base, str(tmp_path / "nomask.txt"))


def test_error_not_an_albef_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_checkpoint(tmp_path, {"visual.proj": torch.zeros(2, 2)})
    assert "unexpected source keys that no rule consumes (1): visual.proj" in cli_error(tmp_path, capsys, path)


def test_error_existing_output_without_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    arguments = ["--checkpoint", str(CHECKPOINT), "--output", str(output), "--original-config", str(CONFIG)]
    assert run_cli(main, arguments) == 1
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert [path.name for path in output.iterdir()] == ["keep.txt"]
    assert run_cli(main, [*arguments, "--overwrite"]) == 1  # only a converted folder (with its marker) is replaced
    assert "was not written by a converter" in capsys.readouterr().err
    (output / "keep.txt").unlink()
    assert run_cli(main, arguments) == 0
    assert run_cli(main, [*arguments, "--overwrite"]) == 0 and (output / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------------- retrieval


RETRIEVAL = ROOT / "tests" / "fixtures" / "originals" / "albef_retrieval"


def test_retrieval_checkpoint_is_detected_and_reproduces_the_gallery_scores(tmp_path: Path) -> None:
    output = tmp_path / "retrieval"
    original = convert_fixture_cli(RETRIEVAL, output, "VlpAlbefForImageTextRetrieval")
    assert "idx_queue" in (output / "README.md").read_text()
    model = VlpAlbefForImageTextRetrieval.from_pretrained(output, dtype=torch.float32).eval()
    assert torch.equal(model.idx_queue.queue, original["idx_queue"]) and model.config.queue_size == 8
    assert torch.equal(model.momentum_vision_proj.weight, original["vision_proj_m.weight"])
    assert torch.equal(
        model.momentum_text_model.transformer.encoder.layers[3].cross_attn.q.weight,
        original["text_encoder_m.encoder.layer.3.crossattention.self.query.weight"],
    )
    for queue in (model.image_queue, model.text_queue, model.idx_queue):
        assert queue.ptr.shape == () and int(queue.ptr) == int(original["queue_ptr"])
    inputs, expected = load_file(RETRIEVAL / "inputs.safetensors"), load_file(RETRIEVAL / "outputs.safetensors")
    scores = model.rank(inputs["gallery_pixel_values"], inputs["gallery_input_ids"], inputs["gallery_attention_mask"], k=2)
    torch.testing.assert_close(scores.image_to_text, expected["gallery_score_matrix_i2t"], atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(scores.text_to_image, expected["gallery_score_matrix_t2i"], atol=LOGIT_ATOL, rtol=0)


def test_retrieval_head_from_a_pretraining_checkpoint_starts_fine_tuning(state_dict: dict) -> None:
    result = convert_albef_checkpoint(CHECKPOINT, original_config=CONFIG, head="retrieval")
    model = result.model
    assert type(model) is VlpAlbefForImageTextRetrieval
    assert torch.equal(model.idx_queue.queue, torch.full((1, state_dict["image_queue"].shape[1]), -100))
    assert torch.equal(model.text_queue.queue, state_dict["text_queue"])
    mlm = {key for key in state_dict if ".cls." in key}
    position_ids = {f"{encoder}.bert.embeddings.position_ids" for encoder in ("text_encoder", "text_encoder_m")}
    assert len(mlm) > 4 and set(result.dropped) == mlm | position_ids
    inputs, expected = fixture_tensors()
    out = towers_output(model, inputs)
    torch.testing.assert_close(out["itm_logits"], expected["itm_logits_pos"], atol=LOGIT_ATOL, rtol=0)


def test_retrieval_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], state_dict: dict) -> None:
    config = ("--original-config", str(RETRIEVAL / "original_config.json"))
    message = cli_error(tmp_path, capsys, RETRIEVAL / "checkpoint.pth", *config, "--head", "masked_lm")
    assert "is an ALBEF retrieval model (it has idx_queue)" in message and "--head retrieval" in message
    online_only = {k: v for k, v in state_dict.items() if k.split(".")[0] not in MOMENTUM_PREFIXES and "queue" not in k}
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, online_only), "--original-config", str(CONFIG), "--head", "retrieval")
    assert "--head retrieval needs the momentum towers" in message
    broken = torch.load(RETRIEVAL / "checkpoint.pth", weights_only=True)["model"]
    del broken["text_encoder_m.encoder.layer.2.crossattention.self.key.bias"]
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, broken), *config)
    assert "momentum_text_model.transformer.encoder.layers.2.cross_attn.kv.bias" in message


VQA = ROOT / "tests" / "fixtures" / "originals" / "albef_vqa"


def test_vqa_checkpoint_is_detected_and_reproduces_the_answer_ranking(tmp_path: Path) -> None:
    output = tmp_path / "vqa"
    original = convert_fixture_cli(VQA, output, "VlpAlbefForQuestionAnswering")
    model = VlpAlbefForQuestionAnswering.from_pretrained(output, dtype=torch.float32).eval()
    assert torch.equal(
        model.momentum_answer_decoder.transformer.encoder.layers[5].cross_attn.q.weight,
        original["text_decoder_m.bert.encoder.layer.5.crossattention.self.query.weight"],
    )
    assert torch.equal(model.answer_head.dense.weight, original["text_decoder.cls.predictions.transform.dense.weight"])
    assert torch.equal(model.answer_head.decoder.weight, original["text_decoder.bert.embeddings.word_embeddings.weight"])
    inputs, expected = load_file(VQA / "inputs.safetensors"), load_file(VQA / "outputs.safetensors")
    ranking = model.rank_answers(
        inputs["pixel_values"], inputs["question_input_ids"], inputs["answer_input_ids"],
        inputs["question_attention_mask"], inputs["answer_attention_mask"], k=3,
    )
    assert torch.equal(ranking.answer_indices, expected["rank_topk_ids"])
    torch.testing.assert_close(ranking.scores, expected["rank_topk_probs"], atol=1e-5, rtol=0)


def test_vqa_conversion_drops_only_position_ids_and_tied_biases() -> None:
    result = convert_albef_checkpoint(VQA / "checkpoint.pth", original_config=VQA / "original_config.json", head="vqa")
    assert type(result.model) is VlpAlbefForQuestionAnswering
    towers = ("text_encoder", "text_encoder_m", "text_decoder.bert", "text_decoder_m.bert")
    expected = {f"{tower}.embeddings.position_ids" for tower in towers}
    expected |= {f"{decoder}.cls.predictions.bias" for decoder in ("text_decoder", "text_decoder_m")}
    assert set(result.dropped) == expected


def test_vqa_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], state_dict: dict) -> None:
    config = ("--original-config", str(VQA / "original_config.json"))
    message = cli_error(tmp_path, capsys, VQA / "checkpoint.pth", *config, "--head", "pretraining")
    assert "converts only with --head vqa" in message
    message = cli_error(tmp_path, capsys, CHECKPOINT, "--original-config", str(CONFIG), "--head", "vqa")
    assert "--head vqa needs an ALBEF VQA checkpoint" in message
    vqa_state = torch.load(VQA / "checkpoint.pth", weights_only=True)["model"]
    online_only = {key: value for key, value in vqa_state.items() if key.split(".")[0] not in MOMENTUM_PREFIXES}
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, online_only), *config)
    assert "--head vqa needs the momentum towers" in message
    untied = dict(vqa_state)
    untied["text_decoder.cls.predictions.decoder.bias"] = untied["text_decoder.cls.predictions.decoder.bias"] + 1
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, untied), *config)
    assert "text_decoder.cls.predictions.decoder.bias differs" in message
    broken = dict(vqa_state)
    del broken["text_decoder.bert.encoder.layer.4.crossattention.self.key.bias"]
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, broken), *config)
    assert "answer_decoder.transformer.encoder.layers.4.cross_attn.kv.bias" in message


# --------------------------------------------------------------------------------------------------- visual reasoning

FUSION_LAYER, TEXT_WIDTH = 2, 32  # the pretraining fixture's text tower


def reasoning_state_dict(head: str, momentum: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """An original-layout NLVR2 / SNLI-VE / text-assignment state dict, initialised from the pretraining fixture as the
    original scripts do (``bert.`` stripped; for the paired encoder, ``Pretrain_nlvr.py`` copies fusion layer ``f + i``
    into layers ``f + 2i`` and ``f + 2i + 1``), plus a random ``cls_head`` / ``ta_head`` (``*_m`` copies included)."""
    pretrain = torch.load(CHECKPOINT, weights_only=True)["model"]
    generator = torch.Generator().manual_seed(seed)
    towers = ("", "_m") if momentum and head != "text-assignment" else ("",)
    state: dict[str, torch.Tensor] = {}
    for key, value in pretrain.items():
        match = re.fullmatch(r"(visual_encoder|text_encoder)(_m)?\.(.+)", key)
        if match is None or (match.group(2) or "") not in towers:
            continue
        tower, rest = f"{match.group(1)}{match.group(2) or ''}", match.group(3)
        if tower.startswith("visual_encoder"):
            state[key] = value.clone()
            continue
        if not rest.startswith("bert."):
            continue  # the MLM head: none of these models has one
        rest = rest[len("bert."):]
        layer = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", rest)
        if layer is not None and head != "snli-ve" and int(layer.group(1)) >= FUSION_LAYER:
            pair = int(layer.group(1)) - FUSION_LAYER
            for index in (FUSION_LAYER + 2 * pair, FUSION_LAYER + 2 * pair + 1):
                state[f"{tower}.encoder.layer.{index}.{layer.group(2)}"] = value.clone()
        else:
            state[f"{tower}.{rest}"] = value.clone()
    if head == "text-assignment":
        for key in ("vision_proj.weight", "vision_proj.bias", "text_proj.weight", "text_proj.bias", "temp"):
            state[key] = pretrain[key].clone()
        state["ta_head.weight"] = torch.randn(3, TEXT_WIDTH, generator=generator)
        state["ta_head.bias"] = torch.randn(3, generator=generator)
        return state
    classes = {"nlvr2": 2, "snli-ve": 3}[head]
    for tower in towers:
        state[f"cls_head{tower}.0.weight"] = torch.randn(TEXT_WIDTH, TEXT_WIDTH, generator=generator) * 0.2
        state[f"cls_head{tower}.0.bias"] = torch.randn(TEXT_WIDTH, generator=generator) * 0.2
        state[f"cls_head{tower}.2.weight"] = torch.randn(classes, TEXT_WIDTH, generator=generator) * 0.2
        state[f"cls_head{tower}.2.bias"] = torch.randn(classes, generator=generator) * 0.2
    return state


def pretrained_albef() -> VlpAlbefForPretraining:
    return convert_albef_checkpoint(CHECKPOINT, original_config=CONFIG).model


def image_pairs() -> torch.Tensor:
    pixel_values = fixture_tensors()[0]["pixel_values"]
    return torch.stack([pixel_values, pixel_values.flip(0)], dim=1)


def load_head(module: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str) -> None:
    module.load_state_dict({key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)})


def test_nlvr2_checkpoint_is_detected_and_matches_the_pretrained_initialisation(tmp_path: Path) -> None:
    state = reasoning_state_dict("nlvr2")
    assert sum(key.startswith("text_encoder.encoder.layer.5.") for key in state) > 10
    output = tmp_path / "nlvr2"
    arguments = ["--checkpoint", str(save_checkpoint(tmp_path, state)), "--output", str(output),
                 "--original-config", str(CONFIG), "--tokenizer", str(VOCAB)]
    assert run_cli(main, arguments) == 0
    assert json.loads((output / "config.json").read_text())["architectures"] == ["VlpAlbefForVisualReasoning"]
    assert "NLVR2" in (output / "README.md").read_text()
    model = VlpAlbefForVisualReasoning.from_pretrained(output, dtype=torch.float32).eval()
    config = model.config.text_config
    assert (config.num_hidden_layers, config.fusion_layer) == (4, 2)
    assert model.config.id2label == {0: "False", 1: "True"}
    for prefix, tower in (("text_encoder", model.text_model), ("text_encoder_m", model.momentum_text_model)):
        layers = tower.transformer.encoder.layers
        assert len(layers) == 6
        for index in (2, 3, 4, 5):
            cross = f"{prefix}.encoder.layer.{index}.crossattention.self."
            kv = torch.cat([state[cross + "key.weight"], state[cross + "value.weight"]])
            assert torch.equal(layers[index].cross_attn.kv.weight, kv)
            assert torch.equal(layers[index].cross_attn.q.weight, state[cross + "query.weight"])
        assert layers[2].cross_attn.kv.weight is layers[3].cross_attn.kv.weight
    for tower in ("", "_m"):
        head = model.momentum_cls_head if tower else model.cls_head
        assert torch.equal(head[0].weight, state[f"cls_head{tower}.0.weight"])
        assert torch.equal(head[2].bias, state[f"cls_head{tower}.2.bias"])
    # the converted keys land where from_albef_pretrained puts the pre-trained weights (Pretrain_nlvr.py's mapping)
    reference = VlpAlbefForVisualReasoning.from_albef_pretrained(pretrained_albef())
    load_head(reference.cls_head, state, "cls_head.")
    inputs, _ = fixture_tensors()
    with torch.no_grad():
        expected = reference(inputs["input_ids"], image_pairs(), inputs["attention_mask"]).logits
        logits = model(inputs["input_ids"], image_pairs(), inputs["attention_mask"]).logits
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)


def test_snli_ve_checkpoint_is_detected_and_matches_the_pretrained_initialisation(tmp_path: Path) -> None:
    state = reasoning_state_dict("snli-ve")
    result = convert_albef_checkpoint(save_checkpoint(tmp_path, state), original_config=CONFIG)
    model = result.model
    assert type(model) is VlpAlbefForVisualEntailment
    assert set(result.dropped) == {"text_encoder.embeddings.position_ids", "text_encoder_m.embeddings.position_ids"}
    assert model.config.id2label == {0: "contradiction", 1: "neutral", 2: "entailment"}
    assert torch.equal(model.momentum_cls_head[2].weight, state["cls_head_m.2.weight"])
    assert torch.equal(
        model.momentum_vision_model.transformer.encoder.layers[1].attn.qkv.weight,
        state["visual_encoder_m.blocks.1.attn.qkv.weight"],
    )
    reference = VlpAlbefForVisualEntailment.from_albef_pretrained(pretrained_albef())
    load_head(reference.cls_head, state, "cls_head.")
    inputs, _ = fixture_tensors()
    with torch.no_grad():
        expected = reference(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"]).logits
        logits = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"]).logits
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)


def test_text_assignment_checkpoint_is_detected_and_loads_into_nlvr2(tmp_path: Path) -> None:
    state = reasoning_state_dict("text-assignment")
    output = tmp_path / "ta"
    result = convert_albef_checkpoint(save_checkpoint(tmp_path, state), output, original_config=CONFIG)
    model = result.model
    assert type(model) is VlpAlbefForTextAssignment
    assert set(result.dropped) == {"text_encoder.embeddings.position_ids", "text_proj.weight", "text_proj.bias", "temp"}
    assert torch.equal(model.ta_head.weight, state["ta_head.weight"])
    assert torch.equal(model.vision_proj.weight, state["vision_proj.weight"])
    reference = VlpAlbefForTextAssignment.from_albef_pretrained(pretrained_albef())
    load_head(reference.ta_head, state, "ta_head.")
    inputs, _ = fixture_tensors()
    given = {"image_pair_indices": torch.tensor([[0, 1], [2, 1], [3, 0], [1, 2]]), "labels": torch.tensor([0, 2, 1, 0])}
    with torch.no_grad():
        expected = reference(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], **given)
        out = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], **given)
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-6, rtol=0)
    nlvr = VlpAlbefForVisualReasoning.from_pretrained(output, dtype=torch.float32)
    assert torch.equal(nlvr.momentum_text_model.transformer.encoder.layers[4].mlp.fc1.weight,
                       state["text_encoder.encoder.layer.4.intermediate.dense.weight"])


def test_checkpoints_without_momentum_towers_get_copies_of_the_online_ones(tmp_path: Path) -> None:
    state = reasoning_state_dict("nlvr2", momentum=False)
    model = convert_albef_checkpoint(save_checkpoint(tmp_path, state), original_config=CONFIG, head="nlvr2").model
    for online, momentum in model.momentum_pairs():
        for p, p_m in zip(online.parameters(), momentum.parameters()):
            assert torch.equal(p, p_m)


def test_position_embeddings_are_resized_for_every_head(tmp_path: Path) -> None:
    state = reasoning_state_dict("nlvr2")
    output = tmp_path / "nlvr2-48"
    arguments = ["--checkpoint", str(save_checkpoint(tmp_path, state)), "--output", str(output),
                 "--original-config", str(CONFIG), "--image-size", "48"]
    assert run_cli(main, arguments) == 0
    model = VlpAlbefForVisualReasoning.from_pretrained(output, dtype=torch.float32)
    assert model.config.vision_config.image_size == 48
    towers = (("visual_encoder.pos_embed", model.vision_model), ("visual_encoder_m.pos_embed", model.momentum_vision_model))
    for key, tower in towers:
        expected = interpolate_grid_embeddings(state[key][0], 1, 4, (6, 6))
        assert torch.equal(tower.transformer.position_embedding, expected)
    readme = (output / "README.md").read_text()
    assert "`visual_encoder_m.pos_embed` resized from a 4x4 to a 6x6 patch grid" in readme
    # the original config's image_res is the default target, for the pretraining head too
    original = json.loads(CONFIG.read_text()) | {"image_res": 48}
    pretraining = convert_albef_checkpoint(CHECKPOINT, original_config=original).model
    assert pretraining.vision_model.transformer.position_embedding.shape == (37, 48)
    assert pretraining.momentum_vision_model.transformer.position_embedding.shape == (37, 48)
    retrieval = convert_albef_checkpoint(CHECKPOINT, original_config=CONFIG, head="grounding", image_size=16).model
    assert retrieval.vision_model.transformer.position_embedding.shape == (5, 48)


def test_grounding_head_writes_the_retrieval_model(tmp_path: Path) -> None:
    output = tmp_path / "grounding"
    arguments = ["--checkpoint", str(RETRIEVAL / "checkpoint.pth"), "--output", str(output), "--original-config",
                 str(RETRIEVAL / "original_config.json"), "--head", "grounding"]
    assert run_cli(main, arguments) == 0
    assert json.loads((output / "config.json").read_text())["architectures"] == ["VlpAlbefForImageTextRetrieval"]
    assert "grounding (RefCOCO+" in (output / "README.md").read_text()


def test_reasoning_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = ("--original-config", str(CONFIG))
    nlvr = reasoning_state_dict("nlvr2")
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, nlvr), *config, "--head", "snli-ve")
    assert "is an ALBEF NLVR2 model (models/model_nlvr.py); it converts only with --head nlvr2" in message
    message = cli_error(tmp_path, capsys, CHECKPOINT, *config, "--head", "nlvr2")
    assert "--head nlvr2 needs an ALBEF NLVR2 checkpoint" in message
    assert "VlpAlbefForVisualReasoning.from_albef_pretrained" in message
    untied = dict(nlvr)
    untied["text_encoder_m.encoder.layer.5.crossattention.self.value.bias"] = untied[
        "text_encoder_m.encoder.layer.5.crossattention.self.value.bias"] + 1
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, untied), *config)
    assert "text_encoder_m.encoder.layer.5.crossattention.self.value.bias differs from" in message
    missing = dict(nlvr)
    del missing["cls_head_m.0.bias"]
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, missing), *config)
    assert "target keys that no source key fills (1): momentum_cls_head.0.bias" in message
    four_way = dict(nlvr)
    four_way["cls_head.2.weight"] = torch.zeros(4, TEXT_WIDTH)
    assert "has 4 outputs" in cli_error(tmp_path, capsys, save_checkpoint(tmp_path, four_way), *config)
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, nlvr), *config, "--image-size", "44")
    assert "configuration is invalid" in message and "patch_size" in message
    ta = reasoning_state_dict("text-assignment")
    del ta["text_encoder.encoder.layer.3.crossattention.self.key.weight"]
    message = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, ta), *config)
    assert "text_model.transformer.encoder.layers.3.cross_attn.kv.weight" in message and "lacks ['key']" in message
