"""ViLT converter: parity of every tensor the original code produced for its fixture, head selection per release
subset, strict key accounting, transformers ViLT directories, the written folder and both command lines."""

from __future__ import annotations

import argparse
import functools
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor, BertTokenizer, ViltConfig, ViltImageProcessor

from conversion.common import ConversionError, run_cli
from conversion.convert_vilt import convert_vilt_checkpoint, main, read_answers
from conversion.vilt_transformers import original_layout
from hf_vlp import cli
from hf_vlp.models.vilt import (
    VlpViltForImageTextRetrieval,
    VlpViltForMaskedLM,
    VlpViltForPretraining,
    VlpViltForQuestionAnswering,
    VlpViltForVisualReasoning,
    VlpViltModel,
)
from hf_vlp.models.vilt.processing_vilt import VlpViltProcessor
from tests.conversion.helpers import converter_error

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "originals" / "vilt"
CHECKPOINT, CONFIG = FIXTURE / "checkpoint.ckpt", FIXTURE / "original_config.json"
FEATURE_ATOL, LOGIT_ATOL = 1e-5, 1e-4
TEXT_LENGTH = 16
# the fixture's synthetic special ids: 0 [PAD], 1 [CLS], 2 [SEP], 3 [MASK] (vocabulary of 99)
SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")

cli_error = functools.partial(converter_error, main)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def fixture_tensors() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return load_file(FIXTURE / "inputs.safetensors"), load_file(FIXTURE / "outputs.safetensors")


def original_checkpoint() -> dict:
    return torch.load(CHECKPOINT, weights_only=True)


@functools.cache
def converted(head: str) -> torch.nn.Module:
    """The fixture converted to ``head`` (with its original config, which names the tiny ViT variant)."""
    return convert_vilt_checkpoint(CHECKPOINT, original_config=CONFIG, head=head).model


def write_vocab(path: Path, size: int = 99) -> Path:
    """A WordPiece vocabulary with the fixture's special ids."""
    path.write_text("\n".join([*SPECIAL_TOKENS, *(f"word{i}" for i in range(size - len(SPECIAL_TOKENS)))]) + "\n")
    return path


def save_subset(tmp_path: Path, name: str, drop: tuple[str, ...], rows: int) -> Path:
    """The fixture as a release would hold it: the head modules ``drop`` removed, ``rows`` modality rows, the same
    PyTorch Lightning container with the original config (which names the ViT variant) as hyper_parameters."""
    checkpoint = original_checkpoint()
    state = {key: value for key, value in checkpoint["state_dict"].items() if not key.startswith(drop)}
    state["token_type_embeddings.weight"] = state["token_type_embeddings.weight"][:rows].clone()
    checkpoint["state_dict"] = state
    checkpoint["hyper_parameters"] = {"config": json.loads(CONFIG.read_text())}
    path = tmp_path / f"{name}.ckpt"
    torch.save(checkpoint, path)
    return path


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, name: str) -> float:
    difference = float((actual.float().reshape(expected.shape) - expected.float()).abs().max())
    assert difference <= atol, f"{name}: max |diff| {difference:.3g} > {atol:g}"
    return difference


# --------------------------------------------------------------------------------------------------- fixture parity


def test_every_fixture_tensor_is_reproduced_by_the_converted_heads() -> None:
    """Every output the original code saved, from the heads converted out of the one all-heads checkpoint (eval mode,
    every patch row-major: the canonical order)."""
    inputs, expected = fixture_tensors()
    pair = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    first = {"pixel_values": inputs["pixel_values"], "pixel_mask": inputs["pixel_mask"]}
    second = {"pixel_values_2": inputs["pixel_values_2"], "pixel_mask_2": inputs["pixel_mask_2"]}
    ours: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        pretraining = converted("pretraining")
        base = pretraining.vilt(**pair, **first, output_hidden_states=True)
        ours.update(
            text_feats=base.last_hidden_state[:, :TEXT_LENGTH], cls_feats=base.pooler_output,
            raw_cls_feats=base.last_hidden_state[:, 0], image_feats_canonical=base.last_hidden_state[:, TEXT_LENGTH:],
            image_masks_canonical=base.image_attention_mask, patch_index_canonical=base.patch_index,
            hidden_states_canonical=torch.stack(base.hidden_states), embeddings_canonical=base.hidden_states[0],
        )
        out = pretraining(**pair, **first, labels=inputs["mlm_labels"], itm_labels=inputs["itm_labels"])
        ours.update(
            itm_logits=out.itm_logits, mlm_logits=out.mlm_logits, mlm_loss=out.loss_mlm, itm_loss=out.loss_itm,
            wpa_distance=out.wpa_distance, itm_wpa_loss=out.loss_wpa,
        )
        vqa = converted("vqa")(**pair, **first, labels=inputs["vqa_targets"])
        ours.update(vqa_logits=vqa.logits, vqa_loss=vqa.loss)
        nlvr2 = converted("nlvr2")(**pair, **first, **second, labels=inputs["nlvr2_labels"])
        ours.update(
            nlvr2_logits=nlvr2.logits, nlvr2_loss=nlvr2.loss, nlvr2_cls_feats_1=nlvr2.pooler_output_1,
            nlvr2_cls_feats_2=nlvr2.pooler_output_2,
        )
        ours["rank_logits"] = converted("retrieval")(**pair, **first).logits
        masked_lm = converted("masked_lm")(**pair, **first, labels=inputs["mlm_labels"])
        encoder = converted("model")(**pair, **first)
    features = {"text_feats", "cls_feats", "raw_cls_feats", "image_feats_canonical", "hidden_states_canonical",
                "embeddings_canonical", "nlvr2_cls_feats_1", "nlvr2_cls_feats_2"}
    for name, tensor in ours.items():
        if name in ("image_masks_canonical", "patch_index_canonical"):
            assert torch.equal(tensor, expected[name]), name
        else:
            assert_close(tensor, expected[name], FEATURE_ATOL if name in features else LOGIT_ATOL, name)
    assert_close(masked_lm.logits, expected["mlm_logits"], LOGIT_ATOL, "masked_lm mlm_logits")
    assert_close(masked_lm.loss, expected["mlm_loss"], LOGIT_ATOL, "masked_lm mlm_loss")
    assert_close(encoder.pooler_output, expected["cls_feats"], FEATURE_ATOL, "model cls_feats")
    assert set(expected) - set(ours) == {"image_feats", "image_masks", "patch_index"}  # raw (random) patch order


def test_nlvr2_third_modality_row_is_the_second_images_embedding() -> None:
    rows = original_checkpoint()["state_dict"]["token_type_embeddings.weight"]
    model = converted("nlvr2")
    assert torch.equal(model.second_image_modality_embedding.detach(), rows[2])
    assert torch.equal(model.vilt.modality_embeddings.weight.detach(), rows[:2])
    assert model.config.modality_type_vocab_size == 2 and model.config.id2label == {0: "False", 1: "True"}
    dropped = convert_vilt_checkpoint(CHECKPOINT, original_config=CONFIG, head="vqa").dropped
    assert "second image" in dropped["token_type_embeddings.weight[2]"]


def test_config_comes_from_shapes_and_the_original_config() -> None:
    config = converted("vqa").config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (
        64, 2, 4, 256
    )
    assert (config.patch_size, config.image_size, config.max_position_embeddings, config.vocab_size) == (16, 64, 16, 99)
    assert (config.num_labels, config.max_image_length, config.layer_norm_eps, config.text_layer_norm_eps) == (
        10, -1, 1e-6, 1e-12
    )
    assert config.cls_token_id is None  # no tokenizer: bert-base-uncased's 101 is outside this vocabulary


# --------------------------------------------------------------------------------------------------- heads


@pytest.mark.parametrize(
    ("drop", "rows", "model_class"),
    [
        (("vqa_classifier", "nlvr2_classifier", "rank_output"), 2, VlpViltForPretraining),
        (("mlm_score", "itm_score", "nlvr2_classifier", "rank_output"), 2, VlpViltForQuestionAnswering),
        (("mlm_score", "itm_score", "vqa_classifier", "rank_output"), 3, VlpViltForVisualReasoning),
        (("mlm_score", "vqa_classifier", "nlvr2_classifier"), 2, VlpViltForImageTextRetrieval),
        (("itm_score", "vqa_classifier", "nlvr2_classifier", "rank_output"), 2, VlpViltForMaskedLM),
        (("mlm_score", "itm_score", "vqa_classifier", "nlvr2_classifier", "rank_output"), 2, VlpViltModel),
    ],
    ids=["mlm_itm", "vqa", "nlvr2", "irtr", "mlm", "backbone"],
)
def test_auto_head_follows_the_release_subset(
    drop: tuple[str, ...], rows: int, model_class: type, tmp_path: Path
) -> None:
    """Each release holds one task's heads; ``auto`` writes that task's class from the config stored in the file."""
    result = convert_vilt_checkpoint(save_subset(tmp_path, "subset", drop, rows))
    assert type(result.model) is model_class
    assert set(result.dropped) == {"text_embeddings.position_ids"}
    reference = converted(result.head)
    for key, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, reference.state_dict()[key]), key


def test_retrieval_head_from_the_pretrained_checkpoint_starts_rank_output_at_the_itm_match_row(tmp_path: Path) -> None:
    path = save_subset(tmp_path, "mlm_itm", ("vqa_classifier", "nlvr2_classifier", "rank_output"), 2)
    result = convert_vilt_checkpoint(path, head="retrieval")
    itm = original_checkpoint()["state_dict"]["itm_score.fc.weight"]
    assert torch.equal(result.model.rank_output.weight.detach(), itm[1:])
    assert "the MLM head" in result.dropped["mlm_score.decoder.weight"]


def test_a_checkpoint_holding_several_tasks_needs_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    error = cli_error(tmp_path, capsys, CHECKPOINT, "--original-config", str(CONFIG))
    assert "holds the heads of several tasks" in error and "--head vqa / nlvr2 / retrieval / pretraining" in error
    result = convert_vilt_checkpoint(CHECKPOINT, original_config=CONFIG, head="pretraining")
    reasons = {key.split(".")[0]: reason for key, reason in result.dropped.items()}
    assert reasons["vqa_classifier"] == "the VQA classifier, not part of VlpViltForPretraining"
    assert "NLVR2 classifier" in reasons["nlvr2_classifier"] and "retrieval head" in reasons["rank_output"]


def test_a_head_the_checkpoint_lacks_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_subset(tmp_path, "vqa", ("mlm_score", "itm_score", "nlvr2_classifier", "rank_output"), 2)
    error = cli_error(tmp_path, capsys, path, "--head", "nlvr2")
    assert "--head nlvr2 (VlpViltForVisualReasoning) needs the NLVR2 classifier (nlvr2_classifier.*)" in error
    assert "Heads it converts to: vqa, model" in error


# --------------------------------------------------------------------------------------------------- errors


def test_unknown_and_missing_keys_fail_with_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = original_checkpoint()
    checkpoint["state_dict"]["transformer.blocks.0.attn.extra.weight"] = torch.zeros(2)
    torch.save(checkpoint, tmp_path / "unknown.ckpt")
    error = cli_error(tmp_path, capsys, tmp_path / "unknown.ckpt", "--original-config", str(CONFIG), "--head", "vqa")
    assert "unexpected source keys that no rule consumes (1): transformer.blocks.0.attn.extra.weight" in error

    checkpoint = original_checkpoint()
    del checkpoint["state_dict"]["transformer.blocks.1.mlp.fc2.bias"]
    torch.save(checkpoint, tmp_path / "missing.ckpt")
    error = cli_error(tmp_path, capsys, tmp_path / "missing.ckpt", "--original-config", str(CONFIG), "--head", "vqa")
    assert "target keys that no source key fills (1): vilt.transformer.encoder.layers.1.mlp.fc2.bias" in error


def test_head_count_needs_a_known_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The fixture's own hyper_parameters name a variant only its generator registered: the head count must come from
    _vit_variant (original_config.json) or --num-attention-heads; a known name is checked against the shapes."""
    error = cli_error(tmp_path, capsys, CHECKPOINT, "--head", "vqa")
    assert "Pass --num-attention-heads N" in error and "'vilt_fixture_dev_p16_i64_d64_l2'" in error
    result = convert_vilt_checkpoint(CHECKPOINT, head="vqa", num_attention_heads=4)
    assert result.model.config.num_attention_heads == 4
    config = {**json.loads(CONFIG.read_text()), "vit": "vit_base_patch32_384"}
    del config["_vit_variant"]
    (tmp_path / "base.json").write_text(json.dumps(config))
    error = cli_error(tmp_path, capsys, CHECKPOINT, "--original-config", str(tmp_path / "base.json"), "--head", "vqa")
    assert "the ViT variant 'vit_base_patch32_384' has embed_dim 768, but the checkpoint's ViT has 64" in error


def test_other_families_and_pickled_objects_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    albef = ROOT / "tests" / "fixtures" / "originals" / "albef_pretrain" / "checkpoint.pth"
    assert "looks like an ALBEF checkpoint" in cli_error(tmp_path, capsys, albef)
    import conversion.convert_albef as convert_albef

    status = run_cli(convert_albef.main, ["--checkpoint", str(CHECKPOINT), "--output", str(tmp_path / "out")])
    assert status == 1 and "use conversion/convert_vilt.py / hf-vlp convert vilt" in capsys.readouterr().err
    checkpoint = original_checkpoint()
    checkpoint["callbacks"] = {argparse.Namespace: {}}  # Lightning keys its callbacks by class
    torch.save(checkpoint, tmp_path / "trained.ckpt")
    error = cli_error(tmp_path, capsys, tmp_path / "trained.ckpt")
    assert "weights_only=True" in error and "source you trust" in error and "--original-config config.json" in error


def test_answers_name_the_vqa_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answers = tmp_path / "vqa_dict.json"
    answers.write_text(json.dumps({str(i): f"answer {i}" for i in range(10)}))
    result = convert_vilt_checkpoint(CHECKPOINT, original_config=CONFIG, head="vqa", answers=answers)
    assert result.model.config.id2label[7] == "answer 7"
    (tmp_path / "list.json").write_text(json.dumps([f"a{i}" for i in range(10)]))
    assert read_answers(tmp_path / "list.json", 10)[9] == "a9"
    (tmp_path / "short.json").write_text(json.dumps({"a": 0, "b": 1}))
    with pytest.raises(ConversionError, match="names 2 answers .* the VQA classifier has 10 outputs"):
        read_answers(tmp_path / "short.json", 10)
    error = cli_error(tmp_path, capsys, CHECKPOINT, "--original-config", str(CONFIG), "--head", "pretraining",
                      "--answers", str(answers))
    assert "--head pretraining has no VQA classifier" in error


# --------------------------------------------------------------------------------------------------- output and CLI


def test_written_folder_loads_through_the_auto_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vocab, output = write_vocab(tmp_path / "vocab.txt"), tmp_path / "vilt-pretraining"
    arguments = ["--checkpoint", str(CHECKPOINT), "--output", str(output), "--original-config", str(CONFIG),
                 "--tokenizer", str(vocab), "--head", "pretraining", "--verify"]
    assert run_cli(main, arguments) == 0, capsys.readouterr().err
    assert {"config.json", "model.safetensors", "README.md", "conversion.json", "tokenizer_config.json"} <= {
        path.name for path in output.iterdir()
    }
    readme = (output / "README.md").read_text()
    assert "python conversion/convert_vilt.py --checkpoint" in readme and "apache-2.0" in readme
    assert "Compared with transformers' ViLT run on the original tensors" in readme and "mlm_logits" in readme
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == ["VlpViltForPretraining"]
    assert (config["pad_token_id"], config["cls_token_id"], config["sep_token_id"], config["mask_token_id"]) == (
        0, 1, 2, 3
    )
    assert config["max_image_length"] == -1  # the fixture config's max_image_len

    model = AutoModel.from_pretrained(output, dtype=torch.float32).eval()
    assert isinstance(model, VlpViltModel)
    inputs, expected = fixture_tensors()
    with torch.no_grad():
        pooled = model(inputs["input_ids"], inputs["attention_mask"], pixel_values=inputs["pixel_values"],
                       pixel_mask=inputs["pixel_mask"]).pooler_output
    assert_close(pooled, expected["cls_feats"], FEATURE_ATOL, "cls_feats after save/load")
    processor = AutoProcessor.from_pretrained(output)
    assert isinstance(processor, VlpViltProcessor) and processor.max_length == TEXT_LENGTH
    assert processor.image_processor.size["shortest_edge"] == 64  # the original config's image_size
    encoded = processor(text=["word1 word2"], images=[torch.zeros(3, 40, 70, dtype=torch.uint8).numpy()],
                        return_tensors="pt")
    assert encoded["input_ids"][0, :4].tolist() == [1, 5 + 1, 5 + 2, 2]
    assert encoded["pixel_values"].shape[-2] % 32 == 0 and "pixel_mask" in encoded


def test_hf_vlp_convert_vilt_and_the_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli.main(["convert", "vilt", "--checkpoint", str(CHECKPOINT), "--output", str(tmp_path / "nlvr2"),
                       "--original-config", str(CONFIG), "--head", "nlvr2"])
    assert status == 0, capsys.readouterr().err
    written = json.loads((tmp_path / "nlvr2" / "config.json").read_text())
    assert written["architectures"] == ["VlpViltForVisualReasoning"]
    assert "hf-vlp convert vilt --checkpoint" in (tmp_path / "nlvr2" / "README.md").read_text()
    assert not any(path.name.endswith(("tokenizer_config.json", "processor_config.json"))
                   for path in (tmp_path / "nlvr2").iterdir())  # no tokenizer: model only, as the other converters

    argv = ["convert_vilt.py", "--checkpoint", str(tmp_path / "missing.ckpt"), "--output", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(ROOT / "conversion" / "convert_vilt.py"), run_name="__main__")
    assert exited.value.code == 1
    assert "Checkpoint not found" in capsys.readouterr().err and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------- transformers


def transformers_model(architecture: str, seed: int) -> torch.nn.Module:
    """A tiny transformers ViLT with O(1) random weights and a LayerNorm epsilon unlike the original's (1e-3), so that
    a conversion keeping 1e-12 / 1e-6 would show."""
    nlvr2 = architecture == "ViltForImagesAndTextClassification"
    config = ViltConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
        patch_size=8, max_position_embeddings=12, layer_norm_eps=1e-3, num_labels=2 if nlvr2 else 5,
        modality_type_vocab_size=3 if nlvr2 else 2, num_images=2 if nlvr2 else -1,
    )
    model = getattr(transformers, architecture)(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "LayerNorm" in name or "layernorm" in name or name.startswith("classifier.1."):
                parameter.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif parameter.ndim >= 2 and "embeddings" not in name:
                parameter.copy_(noise / parameter.shape[-1] ** 0.5)
            else:
                parameter.copy_(0.5 * noise)
    return model.eval()


def transformers_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    input_ids = torch.randint(4, 99, (2, 10), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    pixels = torch.zeros(2, 2, 3, 32, 48)
    mask = torch.zeros(2, 2, 32, 48, dtype=torch.long)
    for sample, image, (height, width) in ((0, 0, (32, 48)), (1, 0, (24, 32)), (0, 1, (32, 40)), (1, 1, (16, 48))):
        pixels[sample, image, :, :height, :width] = torch.randn(3, height, width, generator=generator)
        mask[sample, image, :height, :width] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixels, "pixel_mask": mask}


@pytest.mark.parametrize(
    ("architecture", "model_class"),
    [
        ("ViltForQuestionAnswering", VlpViltForQuestionAnswering),
        ("ViltForImagesAndTextClassification", VlpViltForVisualReasoning),
        ("ViltForImageAndTextRetrieval", VlpViltForImageTextRetrieval),
        ("ViltForMaskedLM", VlpViltForMaskedLM),
        ("ViltModel", VlpViltModel),
    ],
)
def test_transformers_directory_gives_transformers_outputs(
    architecture: str, model_class: type, tmp_path: Path
) -> None:
    """Pooled [CLS], text states and logits (all independent of transformers' random patch order) within 1e-5; the
    epsilon of the directory at every LayerNorm the original distinguishes."""
    reference = transformers_model(architecture, seed=len(architecture))
    reference.save_pretrained(tmp_path / "hf")
    BertTokenizer(vocab=str(write_vocab(tmp_path / "vocab.txt")), do_lower_case=True).save_pretrained(tmp_path / "hf")
    ViltImageProcessor(size={"shortest_edge": 48}, size_divisor=16).save_pretrained(tmp_path / "hf")
    result = convert_vilt_checkpoint(tmp_path / "hf", tmp_path / "out", verify=True)
    model = result.model
    assert type(model) is model_class and max(result.differences.values()) < FEATURE_ATOL
    config = model.config
    assert config.layer_norm_eps == config.text_layer_norm_eps == config.mlm_layer_norm_eps == 1e-3
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert isinstance(processor, VlpViltProcessor) and processor.max_length == 12
    assert (processor.image_processor.size["shortest_edge"], processor.image_processor.size_divisor) == (48, 16)
    assert "single LayerNorm epsilon (0.001)" in (tmp_path / "out" / "README.md").read_text()

    inputs = transformers_inputs()
    text = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    first = {"pixel_values": inputs["pixel_values"][:, 0], "pixel_mask": inputs["pixel_mask"][:, 0]}
    with torch.no_grad():
        theirs_base = reference(**text, **first) if architecture == "ViltModel" else reference.vilt(**text, **first)
        ours_base = model(**text, **first) if architecture == "ViltModel" else model.vilt(**text, **first)
        assert_close(ours_base.pooler_output, theirs_base.pooler_output, FEATURE_ATOL, "pooler_output")
        assert_close(ours_base.last_hidden_state[:, :10], theirs_base.last_hidden_state[:, :10], FEATURE_ATOL, "text")
        if architecture == "ViltForImagesAndTextClassification":
            second = {"pixel_values_2": inputs["pixel_values"][:, 1], "pixel_mask_2": inputs["pixel_mask"][:, 1]}
            assert_close(model(**text, **first, **second).logits, reference(**inputs).logits, FEATURE_ATOL,
                         "nlvr2 logits")
            assert torch.equal(model.second_image_modality_embedding.detach(),
                               reference.vilt.embeddings.token_type_embeddings.weight[2])
        elif architecture != "ViltModel":
            assert_close(model(**text, **first).logits, reference(**text, **first).logits, FEATURE_ATOL, "logits")


def test_transformers_layout_restores_the_tied_decoder_and_the_retrieval_itm_head() -> None:
    masked_lm = transformers_model("ViltForMaskedLM", seed=1)
    layout = original_layout(masked_lm.state_dict(), "ViltForMaskedLM")
    words = layout.state_dict["text_embeddings.word_embeddings.weight"]
    assert torch.equal(layout.state_dict["mlm_score.decoder.weight"], words)
    assert "transformer.blocks.1.attn.qkv.weight" in layout.state_dict
    retrieval = transformers_model("ViltForImageAndTextRetrieval", seed=2)
    layout = original_layout(retrieval.state_dict(), "ViltForImageAndTextRetrieval")
    assert torch.equal(layout.state_dict["itm_score.fc.weight"][1], retrieval.rank_output.weight[0])
    assert not layout.state_dict["itm_score.fc.weight"][0].any() and "no ITM head" in layout.made["itm_score.fc.bias"]
    state = retrieval.state_dict()
    incomplete = {key: value for key, value in state.items() if "layer.0.attention.attention.key" not in key}
    with pytest.raises(ConversionError, match="incomplete fused tensors"):
        original_layout(incomplete, "ViltForImageAndTextRetrieval")
