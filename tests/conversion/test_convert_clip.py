"""CLIP converter: parity with the original code's outputs, the CLI, transformers sources and every error path.

Text head counts are not stored in tensor shapes. The converter takes them from --original-config; without it a
TorchScript source opened with --trust-torchscript is probed (the count whose text tower reproduces the archive's
``encode_text``), and any other source (a plain state dict, or an archive read without running it) falls back to
OpenAI's ``width // 64`` with a warning. The tests below cover all three cases.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor, CLIPConfig, CLIPModel, pipeline

import hf_vlp
from conversion.common import ConversionError, run_cli
from conversion.convert_clip import ClipConversion, convert_clip_checkpoint, main
from hf_vlp.models.clip.tokenization_clip import clip_tokenizer_from_bpe
from tests.conversion.helpers import converter_error

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "originals"
BPE = "bpe_simple_vocab_truncated.txt.gz"
FEATURE_ATOL, LOGIT_ATOL = 1e-5, 1e-4
LOGIT_OUTPUTS = ("logits_per_image", "logits_per_text", "contrastive_loss")

# (fixture, checkpoint file, use original_config.json, trust the TorchScript archive): the ResNet fixture's 2 text
# heads need the config unless its archive is trusted (opened with torch.jit.load) and probed. Untrusted archives are
# read from their records without running them.
SOURCES = [
    ("clip_vit", "checkpoint.pt", False, False),
    ("clip_vit", "checkpoint.pt", True, False),
    ("clip_vit", "checkpoint_jit.pt", False, False),
    ("clip_resnet", "checkpoint.pt", True, False),
    ("clip_resnet", "checkpoint_jit.pt", True, False),
    ("clip_resnet", "checkpoint_jit.pt", False, True),
]


@functools.cache
def converted(fixture: str, checkpoint: str, with_config: bool, trust: bool = False) -> ClipConversion:
    folder = FIXTURES / fixture
    config = folder / "original_config.json" if with_config else None
    return convert_clip_checkpoint(folder / checkpoint, original_config=config, trust_torchscript=trust)


@functools.cache
def fixture_tensors(fixture: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    folder = FIXTURES / fixture
    return load_file(str(folder / "inputs.safetensors")), load_file(str(folder / "outputs.safetensors"))


@torch.no_grad()
def model_outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor the fixtures' outputs.safetensors may hold, computed by the converted model."""
    pixel_values, input_ids = inputs["pixel_values"], inputs["input_ids"]
    output = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True)
    vision = output.vision_model_output
    outputs = {
        "image_features": model.get_image_features(pixel_values).pooler_output,
        "text_features": model.get_text_features(input_ids).pooler_output,
        "image_embeds": output.image_embeds,
        "text_embeds": output.text_embeds,
        "logits_per_image": output.logits_per_image,
        "logits_per_text": output.logits_per_text,
        "logit_scale": model.logit_scale,
        "contrastive_loss": output.loss,
        "text_last_hidden_state": output.text_model_output.last_hidden_state,
        "text_embeds_pre_proj": output.text_model_output.pooler_output,
    }
    if model.config.vision_config.architecture == "vit":
        outputs["image_embeds_pre_proj"] = vision.pooler_output
        outputs["vision_hidden_states"] = vision.last_hidden_state
    else:
        outputs["resnet_layer4_output"] = vision.last_hidden_state
    return outputs


def assert_matches_reference(model: torch.nn.Module, fixture: str) -> None:
    inputs, reference = fixture_tensors(fixture)
    ours = model_outputs(model, inputs)
    assert set(reference) <= set(ours), f"reference tensors not compared: {set(reference) - set(ours)}"
    for name, expected in reference.items():
        atol = LOGIT_ATOL if name in LOGIT_OUTPUTS else FEATURE_ATOL
        torch.testing.assert_close(ours[name], expected, atol=atol, rtol=0, msg=lambda m: f"{fixture} {name}: {m}")
    assert model.logit_scale.item() == reference["logit_scale"].item()  # carried exactly


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize(("fixture", "checkpoint", "with_config", "trust"), SOURCES)
def test_parity_with_original_outputs(
    fixture: str, checkpoint: str, with_config: bool, trust: bool, attn_implementation: str
) -> None:
    model = converted(fixture, checkpoint, with_config, trust).model
    model.set_attn_implementation(attn_implementation)
    assert model.text_model.config._attn_implementation == attn_implementation
    assert_matches_reference(model, fixture)


def test_config_is_inferred_like_build_model() -> None:
    vit = converted("clip_vit", "checkpoint.pt", False).model.config
    assert (vit.projection_dim, vit.vision_config.architecture, vit.vision_config.hidden_size) == (32, "vit", 64)
    vision = vit.vision_config
    assert (vision.patch_size, vision.image_size, vision.num_hidden_layers) == (8, 32, 2)
    assert (vit.text_config.vocab_size, vit.text_config.eos_token_id, vit.text_config.bos_token_id) == (1000, 999, 998)
    resnet = converted("clip_resnet", "checkpoint_jit.pt", False, True).model.config
    assert resnet.vision_config.resnet_layers == [1, 2, 1, 1] and resnet.vision_config.resnet_width == 6
    assert resnet.vision_config.image_size == 64 and resnet.vision_config.resnet_attention_heads == 3
    assert resnet.text_config.num_attention_heads == 2  # probed from the TorchScript archive


def test_plain_state_dict_without_config_uses_build_model_heads_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    folder = FIXTURES / "clip_resnet"
    with caplog.at_level(logging.WARNING, logger="conversion.clip"):
        result = convert_clip_checkpoint(folder / "checkpoint.pt")
    assert "Text heads: 1 = width // 64" in caplog.text and "--original-config" in caplog.text
    inputs, reference = fixture_tensors("clip_resnet")
    with torch.no_grad():
        text_features = result.model.get_text_features(inputs["input_ids"]).pooler_output
    # 1 head where the original used 2: the text tower is wrong, which is why --original-config exists
    assert (text_features - reference["text_features"]).abs().max() > 1e-2


def test_verify_catches_a_wrong_head_count_and_writes_nothing(tmp_path: Path) -> None:
    folder = FIXTURES / "clip_resnet"
    wrong = {**json.loads((folder / "original_config.json").read_text()), "transformer_heads": 1}
    with pytest.raises(ConversionError, match=r"Verification against the TorchScript archive.*text_features"):
        convert_clip_checkpoint(
            folder / "checkpoint_jit.pt", tmp_path / "out", original_config=wrong, verify=True, trust_torchscript=True
        )
    assert list(tmp_path.iterdir()) == []


def test_verify_on_jit_passes_and_plain_state_dict_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConversionError, match="--verify runs the TorchScript archive.*pass --trust-torchscript"):
        convert_clip_checkpoint(FIXTURES / "clip_vit" / "checkpoint_jit.pt", verify=True)
    with caplog.at_level(logging.WARNING):
        result = convert_clip_checkpoint(FIXTURES / "clip_vit" / "checkpoint_jit.pt", verify=True, trust_torchscript=True)
    assert "runs code stored in the archive" in caplog.text
    assert set(result.max_abs_diffs) == {"image_features", "text_features", "logits_per_image", "logits_per_text"}
    assert max(result.max_abs_diffs.values()) < LOGIT_ATOL
    with caplog.at_level(logging.WARNING, logger="conversion.clip"):
        skipped = convert_clip_checkpoint(FIXTURES / "clip_vit" / "checkpoint.pt", verify=True)
    assert skipped.max_abs_diffs is None and "no runnable source model" in skipped.verification_note
    assert "Verification skipped" in caplog.text


def test_open_clip_style_wrapped_state_dict(tmp_path: Path) -> None:
    state_dict = torch.load(FIXTURES / "clip_vit" / "checkpoint.pt", weights_only=True)
    prefixed = {f"module.{key}": value.float() for key, value in state_dict.items()}
    wrapped = {"epoch": 32, "name": "run", "state_dict": prefixed}
    torch.save(wrapped, tmp_path / "epoch_32.pt")
    assert_matches_reference(convert_clip_checkpoint(tmp_path / "epoch_32.pt").model, "clip_vit")


# --------------------------------------------------------------------------------------------------- CLI


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "conversion/convert_clip.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_cli_end_to_end_with_tokenizer_and_verify(tmp_path: Path) -> None:
    folder, output = FIXTURES / "clip_resnet", tmp_path / "clip-rn"
    completed = run_script(
        "--checkpoint", str(folder / "checkpoint_jit.pt"), "--output", str(output),
        "--tokenizer", str(folder / BPE), "--verify", "--trust-torchscript",
    )
    assert completed.returncode == 0, completed.stderr
    assert "Verification against the TorchScript archive" in completed.stdout
    assert {"config.json", "model.safetensors", "README.md"} <= {path.name for path in output.iterdir()}
    card = (output / "README.md").read_text()
    assert "checkpoint_jit.pt" in card and "--verify" in card and "max |diff| image_features" in card
    assert "--trust-torchscript" in run_script("--help").stdout

    model = AutoModel.from_pretrained(str(output)).eval()
    processor = AutoProcessor.from_pretrained(str(output))
    assert isinstance(model, hf_vlp.VlpClipModel) and isinstance(processor, hf_vlp.VlpClipProcessor)
    assert_matches_reference(model, "clip_resnet")
    inputs, _ = fixture_tensors("clip_resnet")
    texts = json.loads((folder / "fixture_meta.json").read_text())["texts"]
    encoded = processor(text=texts, images=list(inputs["raw_images_uint8"].numpy()), return_tensors="pt")
    assert torch.equal(encoded["input_ids"], inputs["input_ids"])
    torch.testing.assert_close(encoded["pixel_values"], inputs["pixel_values"], atol=1e-5, rtol=0)

    classifier = pipeline("zero-shot-image-classification", model=str(output))
    image = Image.fromarray(inputs["raw_images_uint8"][0].numpy())
    scores = classifier(image, candidate_labels=["cat", "dog", "bicycle"])
    assert sorted(entry["label"] for entry in scores) == ["bicycle", "cat", "dog"]
    assert abs(sum(entry["score"] for entry in scores) - 1) < 1e-5


def test_model_without_tokenizer_is_written_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="conversion.clip"):
        result = convert_clip_checkpoint(FIXTURES / "clip_vit" / "checkpoint.pt", tmp_path / "out")
    assert result.processor is None and "without a processor" in caplog.text
    assert not (tmp_path / "out" / "processor_config.json").exists()
    assert isinstance(AutoModel.from_pretrained(str(tmp_path / "out")), hf_vlp.VlpClipModel)


def test_tokenizer_directory_for_an_openai_checkpoint(tmp_path: Path) -> None:
    clip_tokenizer_from_bpe(FIXTURES / "clip_vit" / BPE).save_pretrained(tmp_path / "tokenizer")
    result = convert_clip_checkpoint(FIXTURES / "clip_vit" / "checkpoint.pt", tokenizer=tmp_path / "tokenizer")
    texts = json.loads((FIXTURES / "clip_vit" / "fixture_meta.json").read_text())["texts"]
    inputs, _ = fixture_tensors("clip_vit")
    assert torch.equal(result.processor(text=texts, return_tensors="pt")["input_ids"], inputs["input_ids"])
    assert result.processor.image_processor.crop_size["height"] == 32


# --------------------------------------------------------------------------------------------------- transformers


def tiny_transformers_clip(eos_token_id: int, bos_token_id: int) -> CLIPModel:
    config = CLIPConfig(
        projection_dim=24,
        text_config=dict(
            vocab_size=1000, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
        ),
        vision_config=dict(
            hidden_size=40, intermediate_size=64, num_hidden_layers=2, num_attention_heads=5,
            image_size=24, patch_size=8,
        ),
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # every tensor matters: perturb zero biases and unit norms alike
            parameter.add_(0.05 * torch.randn_like(parameter))
        model.logit_scale.fill_(3.3)
    return model


def tiny_inputs(seed: int = 1, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, 3, 24, 24, generator=generator)
    input_ids = torch.randint(0, 998, (batch, 16), generator=generator)
    for row, end in enumerate((3, 9, 15)[:batch]):
        input_ids[row, end], input_ids[row, end + 1 :] = 999, 0
    return pixel_values, input_ids


@pytest.mark.parametrize("legacy_eos", [False, True], ids=["eos999", "legacy-eos2"])
def test_transformers_directory(tmp_path: Path, legacy_eos: bool) -> None:
    source = tiny_transformers_clip(*((2, 0) if legacy_eos else (999, 998)))
    source.save_pretrained(tmp_path / "hf")
    result = convert_clip_checkpoint(tmp_path / "hf", verify=True)
    assert max(result.max_abs_diffs.values()) < LOGIT_ATOL
    assert result.model.config.text_config.eos_token_id == 999
    pixel_values, input_ids = tiny_inputs()
    with torch.no_grad():
        expected = source(input_ids=input_ids, pixel_values=pixel_values)
        ours = result.model(input_ids=input_ids, pixel_values=pixel_values)
    torch.testing.assert_close(ours.logits_per_image, expected.logits_per_image, atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(ours.text_embeds, expected.text_embeds, atol=FEATURE_ATOL, rtol=0)
    assert result.model.logit_scale.item() == source.logit_scale.item()


def test_transformers_directory_tokenizer_is_taken_and_cli_writes_it(tmp_path: Path) -> None:
    source = tiny_transformers_clip(999, 998)
    source.save_pretrained(tmp_path / "hf")
    clip_tokenizer_from_bpe(FIXTURES / "clip_vit" / BPE, model_max_length=16).save_pretrained(tmp_path / "hf")
    assert run_cli(main, ["--checkpoint", str(tmp_path / "hf"), "--output", str(tmp_path / "out"), "--verify"]) == 0
    processor = AutoProcessor.from_pretrained(str(tmp_path / "out"))
    encoded = processor(text=["a photo of a cat."], images=[torch.zeros(30, 40, 3, dtype=torch.uint8).numpy()])
    assert encoded["input_ids"][0][:2] == [998, 320] and len(encoded["input_ids"][0]) == 16
    assert encoded["pixel_values"][0].shape == (3, 24, 24)


def test_transformers_directory_rejects_original_config_and_other_models(tmp_path: Path) -> None:
    tiny_transformers_clip(999, 998).save_pretrained(tmp_path / "hf")
    with pytest.raises(ConversionError, match="--original-config applies to OpenAI-layout"):
        convert_clip_checkpoint(tmp_path / "hf", original_config={"transformer_heads": 2})
    with pytest.raises(ConversionError, match="pass the CLIPModel directory"):
        convert_clip_checkpoint(tmp_path / "hf" / "model.safetensors")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConversionError, match="model of type 'bert'"):
        convert_clip_checkpoint(tmp_path / "bert")
    with pytest.raises(ConversionError, match="without config.json"):
        convert_clip_checkpoint(tmp_path)


# --------------------------------------------------------------------------------------------------- error paths


@pytest.fixture
def vit_state_dict() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "clip_vit" / "checkpoint.pt", weights_only=True)


cli_error = functools.partial(converter_error, main)


def test_error_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "Checkpoint not found" in cli_error(tmp_path, capsys, tmp_path / "nope.pt")


def test_error_unknown_containers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "random.bin").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    assert "Unknown container" in cli_error(tmp_path, capsys, tmp_path / "random.bin")
    torch.save(["not", "a", "state", "dict"], tmp_path / "list.pt")
    assert "holds a list" in cli_error(tmp_path, capsys, tmp_path / "list.pt")


def test_error_missing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], vit_state_dict: dict) -> None:
    del vit_state_dict["ln_final.bias"]
    torch.save(vit_state_dict, tmp_path / "ckpt.pt")
    message = cli_error(tmp_path, capsys, tmp_path / "ckpt.pt")
    assert "target keys that no source key fills (1): text_model.transformer.norm_final.bias" in message


def test_error_missing_part_of_a_fused_tensor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state_dict = torch.load(FIXTURES / "clip_resnet" / "checkpoint.pt", weights_only=True)
    del state_dict["visual.attnpool.v_proj.bias"]
    torch.save(state_dict, tmp_path / "ckpt.pt")
    config = FIXTURES / "clip_resnet" / "original_config.json"
    message = cli_error(tmp_path, capsys, tmp_path / "ckpt.pt", "--original-config", str(config))
    assert "vision_model.attnpool.attn.kv.bias" in message and "lacks ['v_proj']" in message


def test_error_extra_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], vit_state_dict: dict) -> None:
    vit_state_dict["visual.extra_head.weight"] = torch.zeros(3)
    torch.save(vit_state_dict, tmp_path / "ckpt.pt")
    message = cli_error(tmp_path, capsys, tmp_path / "ckpt.pt")
    assert "unexpected source keys that no rule consumes (1): visual.extra_head.weight" in message


def test_error_shape_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str], vit_state_dict: dict) -> None:
    vit_state_dict["visual.ln_post.weight"] = torch.ones(65)
    torch.save(vit_state_dict, tmp_path / "ckpt.pt")
    message = cli_error(tmp_path, capsys, tmp_path / "ckpt.pt")
    assert "vision_model.transformer.norm_post.weight (from visual.ln_post.weight): expected [64], got [65]" in message


def test_error_config_that_contradicts_the_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def with_config() -> str:
        config = str(tmp_path / "config.json")
        return cli_error(tmp_path, capsys, FIXTURES / "clip_vit" / "checkpoint.pt", "--original-config", config)

    (tmp_path / "config.json").write_text(json.dumps({"vision_layers": 3}))
    message = with_config()
    assert "target keys that no source key fills" in message and "encoder.layers.2." in message
    (tmp_path / "config.json").write_text(json.dumps({"transformer_heads": 2, "vision_dropout": 0.1}))
    message = with_config()
    assert "unknown keys ['vision_dropout']" in message
    (tmp_path / "config.json").write_text(json.dumps({"transformer_heads": 3}))
    message = with_config()
    assert "width 64 cannot be split into 3 attention heads" in message
    (tmp_path / "config.json").write_text(json.dumps({"image_resolution": 36}))
    message = with_config()
    assert "configuration is invalid" in message and "image_size 36 is not a multiple of patch_size 8" in message


def test_error_tokenizer_missing_or_of_another_vocabulary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = FIXTURES / "clip_vit" / "checkpoint.pt"
    assert "Tokenizer not found" in cli_error(tmp_path, capsys, checkpoint, "--tokenizer", str(tmp_path / "bpe.txt.gz"))
    merges = gzip.decompress((FIXTURES / "clip_vit" / BPE).read_bytes()).decode().split("\n")
    short = merges[:101]  # header + 100 merges: 512 + 100 + 2 = 614 tokens
    (tmp_path / "short.txt").write_text("\n".join(short))
    message = cli_error(tmp_path, capsys, checkpoint, "--tokenizer", str(tmp_path / "short.txt"))
    assert "tokenizer has 614 tokens but the checkpoint's vocabulary has 1000" in message


def test_error_existing_output_and_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    arguments = ["--checkpoint", str(FIXTURES / "clip_vit" / "checkpoint.pt"), "--output", str(output)]
    status = run_cli(main, arguments)
    assert status == 1 and "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert [path.name for path in output.iterdir()] == ["keep.txt"]
    status = run_cli(main, [*arguments, "--overwrite"])  # a folder no converter wrote is never replaced
    assert status == 1 and "was not written by a converter" in capsys.readouterr().err
    assert [path.name for path in output.iterdir()] == ["keep.txt"]
    (output / "keep.txt").unlink()
    assert run_cli(main, arguments) == 0 and (output / "conversion.json").is_file()
    assert run_cli(main, arguments) == 1 and "pass --overwrite" in capsys.readouterr().err
    assert run_cli(main, [*arguments, "--overwrite"]) == 0 and (output / "model.safetensors").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
