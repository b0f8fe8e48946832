"""``conversion/convert_coca.py``: open_clip CoCa -> hf_vlp and back (the coca fixture: open_clip 3.3.0's CoCa with
random weights). Parity of the converted model with every recorded tensor is tests/models/coca/test_modeling_coca.py's;
here: the config mapping, strict key accounting, refusals, ``--verify`` (both references), containers, the round trip
through open_clip itself and the command line."""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor

from conversion import convert_coca
from conversion.coca_reference import CAPTION_LOGITS, open_clip_available, plain_outputs
from conversion.common import ConversionError, Rename, check_family, checkpoint_family, map_state_dict_with_splits
from conversion.convert_coca import coca_config, convert_coca_checkpoint, export_open_clip, open_clip_model_cfg
from conversion.rules import coca_rules
from hf_vlp import cli
from hf_vlp.training.recipes import PACKAGED_BPE
from hf_vlp.models.coca import VlpCocaConfig, VlpCocaForConditionalGeneration, VlpCocaModel, VlpCocaProcessor
from tests.conversion.helpers import converter_error
from tests.helpers.coca import FIXTURE_BPE, FIXTURE_CHECKPOINT, OPEN_CLIP_CONFIG, converted_fixture, tiny_coca_config
from tests.helpers.fixtures import fixture_dir, fixture_tensors, model_from_state

FIXTURE = fixture_dir("coca")
MODEL_CFG = json.loads((FIXTURE / "original_config.json").read_text())
cli_error = functools.partial(converter_error, convert_coca.main)
pytestmark = pytest.mark.usefixtures("one_thread")
needs_open_clip = pytest.mark.skipif(not open_clip_available(), reason="open_clip (the original) is not installed")


@functools.cache
def original_state() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURE_CHECKPOINT, weights_only=True)


def state(**changes: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The fixture's open_clip state dict with keys replaced, added or (``None``) removed (dots as ``__``)."""
    edited = dict(original_state())
    for name, tensor in changes.items():
        key = name.replace("__", ".")
        if tensor is None:
            del edited[key]
        else:
            edited[key] = tensor
    return edited


def save(tmp_path: Path, tensors: dict[str, torch.Tensor], name: str = "coca.pt") -> Path:
    torch.save(tensors, tmp_path / name)
    return tmp_path / name


def edited_cfg(section: str | None, **fields: object) -> dict:
    cfg = copy.deepcopy(MODEL_CFG)
    (cfg[section] if section else cfg).update(fields)
    return cfg


def fixture_model(head: str = "captioning") -> VlpCocaModel:
    return model_from_state(convert_coca.MODEL_CLASSES[head], converted_fixture(head))


# --------------------------------------------------------------------------------------------------- configuration


def test_config_from_the_model_config_the_open_clip_config_and_a_mapping() -> None:
    from_json = coca_config(MODEL_CFG, "test")
    vision, text, decoder = from_json.vision_config, from_json.text_config, from_json.decoder_config
    assert (vision.num_attention_heads, vision.intermediate_size, vision.patch_size) == (2, 192, 8)
    assert (vision.pooler_num_queries, vision.pooler_num_attention_heads, vision.pooler_layout) == (256, 4, "single")
    assert (text.max_position_embeddings, text.num_attention_heads, text.intermediate_size) == (76, 2, 128)
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (998, 999, 0)  # CLIP's BPE: vocab - 2, - 1
    assert (decoder.num_attention_heads, decoder.intermediate_size, from_json.projection_dim) == (2, 128, 32)
    wrapped = convert_coca.read_model_config(OPEN_CLIP_CONFIG, FIXTURE_CHECKPOINT)
    assert wrapped.model_cfg == MODEL_CFG and wrapped.preprocess_cfg["interpolation"] == "bicubic"
    assert open_clip_model_cfg(from_json) == {
        **MODEL_CFG, "vision_cfg": {**MODEL_CFG["vision_cfg"], "mlp_ratio": 4.0, "attn_pooler_queries": 256},
        "text_cfg": {**MODEL_CFG["text_cfg"], "mlp_ratio": 4.0, "pad_id": 0},
        "multimodal_cfg": {key: MODEL_CFG["multimodal_cfg"][key] for key in (
            "context_length", "vocab_size", "width", "heads", "layers"
        )},
    }


@needs_open_clip
@pytest.mark.parametrize("name", convert_coca.OPEN_CLIP_PRESETS)
def test_presets_are_open_clips_model_configs(name: str) -> None:
    """The preset equals open_clip's own ``model_configs/<name>.json`` mapped, and maps back to the same config."""
    import open_clip

    shipped = json.loads((Path(open_clip.__file__).parent / "model_configs" / f"{name}.json").read_text())
    preset = VlpCocaConfig.from_preset(name)
    assert coca_config(shipped, name).to_dict() == preset.to_dict()
    assert coca_config(open_clip_model_cfg(preset), name).to_dict() == preset.to_dict()
    assert convert_coca.read_model_config(name, FIXTURE_CHECKPOINT).model_cfg == open_clip_model_cfg(preset)


@pytest.mark.parametrize(
    ("section", "fields", "message"),
    [
        ("vision_cfg", {"attentional_pool": "parallel"}, "untested work-in-progress layout"),
        ("vision_cfg", {"attentional_pool": "cascade"}, "untested work-in-progress layout"),
        ("vision_cfg", {"attentional_pool": False}, "Convert CLIP with conversion/convert_clip.py"),
        ("text_cfg", {"embed_cls": False}, "embed_cls = False (a text tower without CoCa's appended class token)"),
        (None, {"quick_gelu": True}, "quick_gelu = True (QuickGELU"),
        ("text_cfg", {"hf_model_name": "roberta-base"}, "a Hugging Face text tower"),
        ("vision_cfg", {"ls_init_value": 0.1}, "vision_cfg.ls_init_value = 0.1 (layer scale)"),
        ("multimodal_cfg", {"ls_init_value": 0.1}, "multimodal_cfg.ls_init_value"),
        (None, {"embed_dim": 64}, "the three must be equal"),
        ("vision_cfg", {"image_size": [32, 48]}, "not square"),
        ("vision_cfg", {"layers": [1, 1, 1, 1]}, "ModifiedResNet"),
        ("vision_cfg", {"width": "48"}, "'vision_cfg.width' must be a positive integer"),
        ("text_cfg", {"attn_mask": True}, "fields open_clip 3.3's CoCa does not know: ['attn_mask']"),
        (None, {"init_logit_bias": -10.0}, "a SigLIP-style logit bias"),
        (None, {"pad_id": 1}, "one pad id"),
        ("multimodal_cfg", {"context_length": 40}, "decoder mask must cover the text"),
    ],
)
def test_configs_it_cannot_represent_are_refused(section: str | None, fields: dict, message: str) -> None:
    with pytest.raises(ConversionError, match=f"^test: .*{re.escape(message)}"):
        coca_config(edited_cfg(section, **fields), "test")


def test_a_clip_config_is_named() -> None:
    """open_clip's defaults are CLIP's: without embed_cls the config describes CLIP, not CoCa."""
    cfg = copy.deepcopy(MODEL_CFG)
    del cfg["text_cfg"]["embed_cls"]
    with pytest.raises(ConversionError, match="embed_cls is 'absent'.*Is this a CLIP config"):
        coca_config(cfg, "test")


def test_ignored_open_clip_fields_are_accepted() -> None:
    """Fields open_clip's CoCa does not read (the decoder's MLP ratio, heads of an unused pooler, ...) convert."""
    cfg = edited_cfg("multimodal_cfg", mlp_ratio=2, dim_head=16, n_queries=8, act_kwargs={"approximate": "tanh"})
    cfg["custom_text"] = True
    assert coca_config(cfg, "test").to_dict() == coca_config(MODEL_CFG, "test").to_dict()


def test_export_refuses_what_open_clip_cannot_hold() -> None:
    with pytest.raises(ConversionError, match="pooler_layout 'parallel'"):
        open_clip_model_cfg(tiny_coca_config(vision={"pooler_layout": "parallel"}))
    with pytest.raises(ConversionError, match="hidden_act 'quick_gelu'.*decoder intermediate_size 48"):
        open_clip_model_cfg(tiny_coca_config(text={"hidden_act": "quick_gelu"}, decoder={"intermediate_size": 48}))
    with pytest.raises(ConversionError, match="VlpCocaModel holds no multimodal decoder"):
        export_open_clip(fixture_model("model"))


# --------------------------------------------------------------------------------------------------- mapping


def test_every_key_is_accounted_for_and_the_heads_differ_by_the_decoder() -> None:
    assert checkpoint_family(original_state())[0] == "coca"
    captioning, dual = converted_fixture("captioning")[1], converted_fixture("model")[1]
    assert set(dual) == {key for key in captioning if not key.startswith(("text_decoder.", "lm_head."))}
    assert all(torch.equal(dual[key], captioning[key]) for key in dual)
    mapped = map_state_dict_with_splits(original_state(), coca_rules(decoder=False))
    assert set(mapped.dropped) == {key for key in original_state() if key.startswith("text_decoder.")}
    pooler = "vision_model.attentional_pooler.attn."
    original = original_state()
    assert torch.equal(captioning[pooler + "kv.weight"], torch.cat([
        original["visual.attn_pool.attn.k_proj_weight"], original["visual.attn_pool.attn.v_proj_weight"]
    ]))
    assert torch.equal(captioning["lm_head.weight"], original["text_decoder.text_projection"].t())


def test_unknown_missing_and_misshapen_keys_fail_with_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ("--model-config", str(OPEN_CLIP_CONFIG))
    error = cli_error(tmp_path, capsys, save(tmp_path, state(visual__extra=torch.zeros(2)), "extra.pt"), *config)
    assert "unexpected source keys that no rule consumes (1): visual.extra" in error
    error = cli_error(tmp_path, capsys, save(tmp_path, state(text__ln_final__bias=None), "missing.pt"), *config)
    assert "target keys that no source key fills (1): text_model.transformer.norm_final.bias" in error
    uneven = torch.zeros(97, 32)
    name = "text_decoder__cross_attn__1__attn__in_proj_weight"
    error = cli_error(tmp_path, capsys, save(tmp_path, state(**{name: uneven}), "uneven.pt"), *config)
    assert "do not split into their parts (1): text_decoder.cross_attn.1.attn.in_proj_weight [97, 32]" in error
    wide = edited_cfg("vision_cfg", width=64, head_width=32)
    (tmp_path / "wide.json").write_text(json.dumps(wide))
    error = cli_error(tmp_path, capsys, FIXTURE_CHECKPOINT, "--model-config", str(tmp_path / "wide.json"))
    assert "shape mismatches" in error and "vision_model.transformer.patch_embed.weight" in error


def test_inputs_that_are_not_a_coca_checkpoint_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = fixture_dir("clip_vit") / "checkpoint.pt"
    assert "looks like a CLIP checkpoint" in cli_error(tmp_path, capsys, clip, "--model-config", "coca_ViT-B-32")
    with pytest.raises(ConversionError, match="looks like a CoCa checkpoint .* hf-vlp convert coca"):
        check_family(original_state(), "clip", FIXTURE_CHECKPOINT)
    alone = save(tmp_path, original_state(), "alone.pt")  # no open_clip_config.json beside it
    assert "No model config for alone.pt: attention head counts" in cli_error(tmp_path, capsys, alone)
    assert "neither a JSON file nor a preset" in cli_error(tmp_path, capsys, FIXTURE_CHECKPOINT, "--model-config", "x")
    error = cli_error(tmp_path, capsys, FIXTURE_CHECKPOINT, "--model-config", str(OPEN_CLIP_CONFIG), "--bpe",
                      str(PACKAGED_BPE))
    assert "but the checkpoint's vocabulary has 1000" in error


def test_a_training_checkpoint_with_ddp_prefixes(tmp_path: Path) -> None:
    """open_clip's ``epoch_N.pt``: ``{"epoch", "name", "state_dict", "optimizer"}`` with ``module.`` keys (and the
    ``[1]`` logit scale of ``nonscalar_logit_scale``)."""
    scale = original_state()["logit_scale"].reshape(1)
    weights = {f"module.{key}": value for key, value in state(logit_scale=scale).items()}
    optimizer = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "coca-run", "state_dict": weights, "optimizer": optimizer}, path)
    result = convert_coca_checkpoint(path, model_config=FIXTURE / "original_config.json",
                                     bpe=FIXTURE_BPE, head="model")
    assert isinstance(result.model, VlpCocaModel) and result.head == "model"
    expected = converted_fixture("model")[1]
    assert all(torch.equal(value, expected[key]) for key, value in result.model.state_dict().items())


# --------------------------------------------------------------------------------------------------- verify


def test_the_plain_reference_reproduces_the_recorded_originals() -> None:
    """Without open_clip, --verify runs coca_reference's plain forward: it reproduces what open_clip recorded."""
    inputs, outputs = fixture_tensors("coca")
    reference = plain_outputs(original_state(), MODEL_CFG, inputs)
    recorded = {"text_tokens": "text_token_embs", CAPTION_LOGITS: "caption_logits"}
    for name, value in reference.items():
        torch.testing.assert_close(value.float(), outputs[recorded.get(name, name)], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("use_open_clip", [False, pytest.param(True, marks=needs_open_clip)])
def test_verify_against_both_references(use_open_clip: bool) -> None:
    result = convert_coca_checkpoint(FIXTURE_CHECKPOINT, model_config=MODEL_CFG, bpe=FIXTURE_BPE, head="captioning",
                                     verify=True, use_open_clip=use_open_clip)
    assert ("open_clip's own CoCa" in result.verified_against) == use_open_clip
    assert set(result.differences) == {"image_features", "image_tokens", "text_features", "text_tokens",
                                       "logits_per_image", CAPTION_LOGITS}
    assert max(result.differences.values()) < 1e-10  # float64 on both sides
    assert result.model.dtype == torch.float32


def test_verify_catches_a_corrupted_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A projection left untransposed (square, so every shape still fits): --verify fails and nothing is written."""
    rules = convert_coca.coca_rules

    def untransposed(decoder: bool, **options: bool) -> list:
        return [rule for rule in rules(decoder, **options) if getattr(rule, "pattern", "") != r"visual\.proj"] + [
            Rename(r"visual\.proj", "visual_projection.weight")
        ]

    monkeypatch.setattr(convert_coca, "coca_rules", untransposed)
    error = cli_error(tmp_path, capsys, FIXTURE_CHECKPOINT, "--model-config", str(OPEN_CLIP_CONFIG), "--verify")
    assert "Verification against" in error and "image_features" in error and "caption_logits" not in error


# --------------------------------------------------------------------------------------------------- open_clip


@needs_open_clip
def test_round_trip_through_open_clip(tmp_path: Path) -> None:
    """The export loads strictly into open_clip (its own ``local-dir:`` loader) and computes what ours does; open_clip's
    state dict converts back to ours exactly; its key set and tensors are the original checkpoint's."""
    import open_clip

    model = fixture_model()
    exported = export_open_clip(model, tmp_path / "open_clip")
    files = sorted(path.name for path in (tmp_path / "open_clip").iterdir())
    assert files == ["conversion.json", "open_clip_config.json", "open_clip_model.safetensors",
                     "open_clip_pytorch_model.bin"]
    original = original_state()
    binary = torch.load(tmp_path / "open_clip" / "open_clip_pytorch_model.bin", weights_only=True)
    for saved in (binary, load_file(tmp_path / "open_clip" / "open_clip_model.safetensors")):
        assert set(saved) == set(original)
        assert all(saved[key].dtype == torch.float32 and torch.equal(saved[key], original[key]) for key in original)

    theirs = open_clip.create_model(f"local-dir:{tmp_path / 'open_clip'}").eval()
    assert {key: value.shape for key, value in theirs.state_dict().items()} == {
        key: value.shape for key, value in binary.items()
    }
    inputs, _ = fixture_tensors("coca")
    pixel_values, input_ids = inputs["pixel_values"], inputs["input_ids"]
    with torch.no_grad():
        ours = model(pixel_values=pixel_values, input_ids=input_ids)
        image, image_tokens = theirs._encode_image(pixel_values, normalize=False)
        text, _ = theirs._encode_text(input_ids, normalize=False)
        torch.testing.assert_close(image, model.get_image_features(pixel_values).pooler_output, atol=1e-5, rtol=0)
        torch.testing.assert_close(image_tokens, ours.image_tokens, atol=1e-5, rtol=0)
        torch.testing.assert_close(text, model.get_text_features(input_ids).pooler_output, atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs(pixel_values, input_ids)["logits"], ours.logits[:, :-1], atol=1e-4, rtol=0)

    torch.save(theirs.state_dict(), tmp_path / "theirs.bin")
    back = convert_coca_checkpoint(tmp_path / "theirs.bin", model_config=exported.open_clip_config)
    assert back.model.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in back.model.state_dict().items())


@needs_open_clip
def test_pooler_of_equal_widths_round_trips(tmp_path: Path) -> None:
    """With the vision width equal to embed_dim, open_clip's pooler stores one ``in_proj_weight``: it converts, verifies
    against open_clip and exports back to the same keys."""
    import open_clip

    cfg = edited_cfg("vision_cfg", width=32, head_width=16)
    torch.manual_seed(0)
    theirs = open_clip.CoCa(**{key: value for key, value in cfg.items() if key != "custom_text"}).eval()
    torch.nn.init.normal_(theirs.text_decoder.text_projection, std=0.2)  # open_clip leaves it uninitialised
    weights = theirs.state_dict()
    assert "visual.attn_pool.attn.in_proj_weight" in weights
    path = save(tmp_path, weights)
    result = convert_coca_checkpoint(path, model_config=cfg, verify=True, use_open_clip=True)
    assert max(result.differences.values()) < 1e-10
    exported = export_open_clip(result.model).state_dict
    assert set(exported) == set(weights) and all(torch.equal(exported[key], weights[key]) for key in weights)


def test_export_writes_only_where_it_may(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError, match="exists and is not empty"):
        export_open_clip(fixture_model(), taken, overwrite=False)
    with pytest.raises(ConversionError, match="was not written by a converter"):
        export_open_clip(fixture_model(), taken, overwrite=True)
    assert [path.name for path in taken.iterdir()] == ["notes.txt"]


# --------------------------------------------------------------------------------------------------- command line


def test_command_line_both_ways(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """``hf-vlp convert coca`` on the fixture (verified against open_clip when installed), ``--to-open-clip`` back,
    and the exported folder converted again (its open_clip_config.json found next to the weights)."""
    out, exported, back = tmp_path / "coca", tmp_path / "open_clip", tmp_path / "back"
    status = cli.main(["convert", "coca", "--checkpoint", str(FIXTURE_CHECKPOINT), "--model-config",
                       str(OPEN_CLIP_CONFIG), "--bpe", str(FIXTURE_BPE), "--output", str(out), "--verify"])
    assert status == 0, capsys.readouterr().err
    model = VlpCocaForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    expected = converted_fixture("captioning")[1]
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(processor, VlpCocaProcessor)
    inputs, _ = fixture_tensors("coca")
    texts = json.loads((FIXTURE / "fixture_meta.json").read_text())["texts"]
    assert torch.equal(processor(text=texts, return_tensors="pt")["input_ids"], inputs["input_ids"])
    card = (out / "README.md").read_text()
    assert "hf-vlp convert coca --checkpoint" in card and "license: mit" in card
    assert ("open_clip's own CoCa" if open_clip_available() else "plain-torch forward") in card

    status = cli.main(["convert", "coca", "--to-open-clip", "--checkpoint", str(out), "--output", str(exported)])
    assert status == 0, capsys.readouterr().err
    assert json.loads((exported / "open_clip_config.json").read_text())["preprocess_cfg"]["std"][0] == 0.26862954
    assert cli.main(["convert", "coca", "--checkpoint", str(exported), "--output", str(back)]) == 0
    assert "writing the model without a processor" in caplog.text  # 1000 tokens: not CLIP's vocabulary
    model_back = VlpCocaForConditionalGeneration.from_pretrained(back, dtype=torch.float32)
    assert all(torch.equal(value, expected[key]) for key, value in model_back.state_dict().items())
    assert not (back / "tokenizer.json").exists()

    status = cli.main(["convert", "coca", "--to-open-clip", "--checkpoint", str(out), "--output", str(tmp_path / "x"),
                       "--bpe", str(FIXTURE_BPE)])
    assert status == 1 and "--bpe describe an open_clip source" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
