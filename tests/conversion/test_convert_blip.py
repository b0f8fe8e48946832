"""BLIP converter: heads and their rule tables, the CLI with verification against transformers' BLIP, every error."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

import conversion.convert_blip as convert_blip
from conversion.blip_heads import HEADS, map_blip_state_dict, resolve_head, source_kind
from conversion.common import ConversionError, run_cli
from conversion.convert_blip import convert_blip_checkpoint, main
from hf_vlp.models.blip import VlpBlipForConditionalGeneration, VlpBlipModel, VlpBlipProcessor
from tests.conversion.helpers import converter_error, save_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "originals"
LOGIT_ATOL = 1e-4


def files(case: str) -> tuple[Path, Path, Path]:
    folder = FIXTURES / case
    return folder / "checkpoint.pth", folder / "original_config.json", folder / "vocab.txt"


def state_dict(case: str) -> dict[str, torch.Tensor]:
    return torch.load(files(case)[0], weights_only=True)["model"]


cli_error = functools.partial(converter_error, main)


# --------------------------------------------------------------------------------------------------- success


def test_cli_converts_a_captioner_verifies_it_and_writes_a_loadable_folder(tmp_path: Path, capsys) -> None:
    checkpoint, config, vocab = files("blip_caption")
    output = tmp_path / "blip-caption"
    status = run_cli(main, ["--checkpoint", str(checkpoint), "--output", str(output), "--original-config", str(config),
                            "--tokenizer", str(vocab), "--verify"])
    assert status == 0, capsys.readouterr().err
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "README.md"} <= {
        path.name for path in output.iterdir()
    }
    model = AutoModelForImageTextToText.from_pretrained(output, dtype=torch.float32).eval()
    assert type(model) is VlpBlipForConditionalGeneration
    processor = AutoProcessor.from_pretrained(output)
    assert type(processor) is VlpBlipProcessor and processor.prompt == "a picture of "
    assert processor.special_token_ids()["bos_token_id"] == model.config.text_config.bos_token_id == 64
    inputs, expected = load_file(checkpoint.parent / "inputs.safetensors"), load_file(checkpoint.parent / "outputs.safetensors")
    with torch.no_grad():
        logits = model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]).logits
    torch.testing.assert_close(logits, expected["decoder_logits"], atol=LOGIT_ATOL, rtol=0)
    card = (output / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in card and "the self-attention of the decoder role" in card
    assert "Compared with transformers' BLIP on random inputs: max |diff| decoder_logits" in card
    assert "python conversion/convert_blip.py --checkpoint" in card and "BLIP_Decoder" in card


def test_pretraining_checkpoint_gives_the_encoders_or_the_decoder(tmp_path: Path) -> None:
    checkpoint, config, vocab = files("blip_pretrain")
    encoders = convert_blip_checkpoint(checkpoint, tmp_path / "model", config, vocab, head="model", verify=True)
    assert encoders.kind == "pretraining" and max(encoders.differences.values()) < LOGIT_ATOL
    reasons = set(encoders.dropped.values())
    assert any("tied copy" in reason for reason in reasons) and any("momentum" in reason for reason in reasons)
    assert any("causal self-attention" in reason for reason in reasons)
    loaded = AutoModel.from_pretrained(tmp_path / "model", dtype=torch.float32)
    assert type(loaded) is VlpBlipModel and loaded.temp.item() == 0.0625
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path / "model"))
    scores = classifier(PIL.Image.new("RGB", (40, 30), "red"), candidate_labels=["dog", "red car"])
    assert {score["label"] for score in scores} == {"dog", "red car"}
    assert sum(score["score"] for score in scores) == pytest.approx(1.0)
    decoder = convert_blip_checkpoint(checkpoint, None, config, vocab, head="caption", verify=True)
    assert isinstance(decoder.model, VlpBlipForConditionalGeneration) and decoder.output is None
    assert any("bidirectional self-attention" in reason for reason in decoder.dropped.values())


def test_retrieval_and_itm_checkpoints_give_the_encoders(tmp_path: Path) -> None:
    """Layouts without a decoder: the retrieval model's (``ptr_queue``, ``idx_queue``) and blip_itm.py's (no ``temp``)."""
    _, config, vocab = files("blip_pretrain")
    pretrain = state_dict("blip_pretrain")
    retrieval = {key: value for key, value in pretrain.items() if not key.startswith("text_decoder.")}
    retrieval["ptr_queue"] = retrieval.pop("queue_ptr")
    retrieval["idx_queue"] = torch.arange(8).view(1, 8)
    itm = {key: value for key, value in retrieval.items()
           if not key.startswith(("visual_encoder_m", "text_encoder_m", "vision_proj_m", "text_proj_m"))
           and "queue" not in key and key != "temp"}
    inputs, expected = load_file(FIXTURES / "blip_pretrain" / "inputs.safetensors"), load_file(
        FIXTURES / "blip_pretrain" / "outputs.safetensors"
    )
    for name, layout, head in (("retrieval", retrieval, "model"), ("itm", itm, "auto")):
        result = convert_blip_checkpoint(save_checkpoint(tmp_path, layout), None, config, vocab, head=head)
        assert result.kind == name and type(result.model) is VlpBlipModel
        with torch.no_grad():
            logits = result.model.get_itm_logits(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
        torch.testing.assert_close(logits, expected["itm_logits_pos"], atol=LOGIT_ATOL, rtol=0)
    assert result.model.temp.item() == pytest.approx(0.07)


def test_the_checkpoints_own_config_is_used_without_original_config() -> None:
    checkpoint, _, vocab = files("blip_pretrain")  # the fixture stores its config dict next to the weights
    result = convert_blip_checkpoint(checkpoint, tokenizer=vocab, head="model")
    assert result.model.config.vision_config.num_attention_heads == 4
    assert result.model.config.text_config.num_attention_heads == 4 and result.model.config.embed_dim == 16


def test_an_image_size_in_the_config_interpolates_position_embeddings(tmp_path: Path) -> None:
    checkpoint, config, vocab = files("blip_caption")
    original = json.loads(config.read_text()) | {"image_size": 48}
    result = convert_blip_checkpoint(checkpoint, tmp_path / "out", original, vocab)
    model = result.model
    assert model.config.vision_config.image_size == 48
    assert model.vision_model.transformer.position_embedding.shape == (37, 48)
    assert result.processor.image_processor.size.height == 48
    assert "4x4 -> 6x6 patch grid" in (tmp_path / "out" / "README.md").read_text()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 48), torch.tensor([[2, 5, 9, 3]])).logits.shape == (1, 4, 66)


def test_overwrite_replaces_an_existing_output(tmp_path: Path) -> None:
    checkpoint, config, vocab = files("blip_caption")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.txt").write_text("old")
    with pytest.raises(ConversionError, match="not empty"):
        convert_blip_checkpoint(checkpoint, tmp_path / "out", config, vocab)
    with pytest.raises(ConversionError, match="not written by a converter"):  # not ours: never replaced
        convert_blip_checkpoint(checkpoint, tmp_path / "out", config, vocab, overwrite=True)
    (tmp_path / "out" / "stale.txt").unlink()
    convert_blip_checkpoint(checkpoint, tmp_path / "out", config, vocab)
    (tmp_path / "out" / "stale.txt").write_text("old")
    convert_blip_checkpoint(checkpoint, tmp_path / "out", config, vocab, overwrite=True)
    assert not (tmp_path / "out" / "stale.txt").exists() and (tmp_path / "out" / "model.safetensors").exists()


# --------------------------------------------------------------------------------------------------- head tables


def test_every_source_layout_is_recognised() -> None:
    assert source_kind(state_dict("blip_pretrain")) == "pretraining"
    assert source_kind(state_dict("blip_caption")) == "caption"
    assert source_kind(state_dict("blip_vqa")) == "vqa"
    pretrain = state_dict("blip_pretrain")
    retrieval = {key: value for key, value in pretrain.items() if not key.startswith("text_decoder.")}
    retrieval["ptr_queue"] = retrieval.pop("queue_ptr")
    retrieval["idx_queue"] = torch.arange(8).view(1, 8)
    assert source_kind(retrieval) == "retrieval"
    itm = {key: value for key, value in retrieval.items()
           if not key.startswith(("visual_encoder_m", "text_encoder_m", "vision_proj_m", "text_proj_m"))
           and "queue" not in key}
    assert source_kind(itm) == "itm"
    assert source_kind({key: value for key, value in itm.items() if not key.startswith("itm_head")}) == "feature_extractor"


def test_rule_tables_consume_every_key() -> None:
    """Pre-training, retrieval and VQA rules: every source key is claimed, shared decoder tensors once, momentum
    towers and queues under the pre-training names."""
    pretrain = state_dict("blip_pretrain")
    mapped = map_blip_state_dict(pretrain, "pretraining", "pretraining")
    tops = {key.split(".")[0] for key in mapped.tensors}
    assert tops == {"vision_model", "text_model", "lm_head", "vision_proj", "text_proj", "itm_head", "temp",
                    "momentum_vision_model", "momentum_vision_proj", "momentum_text_model", "momentum_text_proj",
                    "image_queue", "text_queue"}
    assert "text_model.transformer.encoder.layers.2.causal_attn.qkv.weight" in mapped.tensors
    assert mapped.tensors["text_queue.ptr"].shape == () and torch.equal(
        mapped.tensors["text_queue.ptr"], pretrain["queue_ptr"].reshape(())
    )
    assert sum("tied copy" in reason for reason in mapped.dropped.values()) > 40
    retrieval = map_blip_state_dict(pretrain, "pretraining", "retrieval")
    assert torch.equal(retrieval.tensors["idx_queue.queue"], torch.full((1, 8), -100))
    assert "idx_queue.ptr" in retrieval.tensors
    vqa = map_blip_state_dict(state_dict("blip_vqa"), "vqa", "vqa")
    assert {key.split(".")[0] for key in vqa.tensors} == {"vision_model", "text_model", "answer_decoder", "answer_head"}
    assert HEADS[resolve_head("pretraining", "retrieval")].model_class == "VlpBlipForImageTextRetrieval"


# --------------------------------------------------------------------------------------------------- errors


def test_tied_copies_that_differ_are_refused(tmp_path: Path, capsys) -> None:
    edited = state_dict("blip_pretrain")
    edited["text_decoder.bert.encoder.layer.1.intermediate.dense.weight"] = (
        edited["text_decoder.bert.encoder.layer.1.intermediate.dense.weight"] + 1
    )
    error = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, edited), "--head", "model")
    assert "text_decoder.bert.encoder.layer.1.intermediate.dense.weight != text_encoder.encoder.layer.1" in error
    caption = state_dict("blip_caption")
    caption["text_decoder.cls.predictions.bias"] = caption["text_decoder.cls.predictions.bias"] * 2
    assert "cls.predictions.decoder.bias != text_decoder.cls.predictions.bias" in cli_error(
        tmp_path, capsys, save_checkpoint(tmp_path, caption)
    )


def test_unclaimed_and_missing_keys_are_named(tmp_path: Path, capsys) -> None:
    _, config, vocab = files("blip_caption")
    settings = ("--original-config", str(config), "--tokenizer", str(vocab))
    extra = state_dict("blip_caption") | {"text_decoder.adapter.weight": torch.zeros(2)}
    error = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, extra), *settings)
    assert "unexpected source keys that no rule consumes (1): text_decoder.adapter.weight" in error
    missing = state_dict("blip_caption")
    del missing["text_decoder.bert.encoder.layer.2.output.dense.bias"]
    error = cli_error(tmp_path, capsys, save_checkpoint(tmp_path, missing), *settings)
    assert "text_model.transformer.encoder.layers.2.mlp.fc2.bias" in error


def test_wrong_or_unsupported_checkpoints_and_heads(tmp_path: Path, capsys) -> None:
    caption, config, _ = files("blip_caption")
    error = cli_error(tmp_path, capsys, caption, "--head", "model")
    assert "--head model (VlpBlipModel) cannot be written from a BLIP captioning" in error and "caption" in error
    nlvr = {key.replace("crossattention.self.", "crossattention.self0."): value for key, value in state_dict("blip_vqa").items()}
    assert "NLVR2" in cli_error(tmp_path, capsys, save_checkpoint(tmp_path, nlvr))
    not_blip = {key: value for key, value in state_dict("blip_caption").items() if not key.startswith("visual_encoder")}
    assert "not an original BLIP state dict" in cli_error(tmp_path, capsys, save_checkpoint(tmp_path, not_blip))
    assert "Checkpoint not found" in cli_error(tmp_path, capsys, tmp_path / "missing.pth")


def test_configuration_and_tokenizer_errors(tmp_path: Path, capsys) -> None:
    checkpoint, config, vocab = files("blip_caption")
    no_config = save_checkpoint(tmp_path, state_dict("blip_caption"))  # widths 48/32 cannot use width // 64 heads
    assert "pass --original-config with the right 'vit_num_heads'" in cli_error(tmp_path, capsys, no_config)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    assert "is not valid JSON" in cli_error(tmp_path, capsys, checkpoint, "--original-config", str(bad_json))
    med_path = tmp_path / "med_path.json"
    med_path.write_text(json.dumps({"med_config": "configs/med_config.json"}))
    assert "must hold the CONTENT" in cli_error(tmp_path, capsys, checkpoint, "--original-config", str(med_path))
    short_vocab = tmp_path / "vocab.txt"
    short_vocab.write_text("\n".join(vocab.read_text().splitlines()[:-3]))
    error = cli_error(tmp_path, capsys, checkpoint, "--original-config", str(config), "--tokenizer", str(short_vocab))
    assert "has 63 tokens with [DEC] and [ENC] added but the checkpoint's vocabulary has 66" in error
    assert "Tokenizer not found" in cli_error(
        tmp_path, capsys, checkpoint, "--original-config", str(config), "--tokenizer", str(tmp_path / "none.txt")
    )
    # a vocabulary other than bert-base-uncased's needs the tokenizer for its special-token ids
    error = cli_error(tmp_path, capsys, checkpoint, "--original-config", str(config))
    assert "special-token ids" in error and "Pass --tokenizer" in error


def test_a_failed_verification_writes_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    reference = convert_blip.transformers_reference

    def perturbed(*args, **kwargs):
        model = reference(*args, **kwargs)
        with torch.no_grad():
            model.text_decoder.cls.predictions.transform.dense.bias.add_(0.1)
        return model

    monkeypatch.setattr(convert_blip, "transformers_reference", perturbed)
    checkpoint, config, vocab = files("blip_caption")
    error = cli_error(tmp_path, capsys, checkpoint, "--original-config", str(config), "--tokenizer", str(vocab), "--verify")
    assert "Verification against transformers' BLIP failed" in error and "decoder_logits" in error
