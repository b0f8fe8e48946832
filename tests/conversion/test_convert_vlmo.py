"""VLMo converter: parity of every tensor the original code produced for its fixture, the containers of the releases,
head selection per release subset, size inference (relative and absolute variants), the index-tensor check, strict
key accounting, ``--verify``, the written folder and both command lines."""

from __future__ import annotations

import functools
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoProcessor

import conversion.convert_vlmo as convert_vlmo
from conversion.common import ConversionError, run_cli
from conversion.convert_vlmo import convert_vlmo_checkpoint, main, vlmo_config
from hf_vlp import cli
from hf_vlp.models.vlmo import (
    VlpVlmoConfig,
    VlpVlmoForImageTextRetrieval,
    VlpVlmoForMaskedLM,
    VlpVlmoForPretraining,
    VlpVlmoForQuestionAnswering,
    VlpVlmoForVisualReasoning,
    VlpVlmoModel,
    VlpVlmoProcessor,
)
from hf_vlp.modules.relative_position import relative_position_index
from tests.conversion.helpers import converter_error
from tests.helpers.fixtures import fixture_dir, fixture_tensors, model_from_state
from tests.helpers.vlmo import FIXTURE_CHECKPOINT as CHECKPOINT
from tests.helpers.vlmo import ORIGINAL_CONFIG as CONFIG
from tests.helpers.vlmo import converted_fixture, fixture_vocab

ROOT = Path(__file__).resolve().parents[2]
FEATURE_ATOL, LOGIT_ATOL = 1e-5, 1e-4
TEXT_LENGTH = 12
HEAD_MODULES = ("mlm_score", "itm_score", "itc_image_proj", "itc_text_proj", "logit_scale", "itc_vl_image_proj",
                "itc_vl_text_proj", "logit_vl_scale", "vqa_classifier", "nlvr2_classifier")
INDEX_TENSORS = ("relative_position_index", "text_relative_position_index", "text_imag_relative_position_index",
                 "text_embeddings.position_ids")
DEAD = {"text_embeddings.position_embeddings.weight", *INDEX_TENSORS}  # dropped from every relative-position model

cli_error = functools.partial(converter_error, main)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def converted(head: str) -> torch.nn.Module:
    """A fresh model of the fixture converted to ``head`` (the conversion is cached per head)."""
    model_class = convert_vlmo.MODEL_CLASSES[head]
    return model_from_state(model_class, converted_fixture(head))


def original_state() -> dict[str, torch.Tensor]:
    return torch.load(CHECKPOINT, weights_only=True)["state_dict"]


def keep(state: dict[str, torch.Tensor], *modules: str) -> dict[str, torch.Tensor]:
    """``state`` without the head modules other than ``modules`` (a release's subset)."""
    dropped = tuple(module for module in HEAD_MODULES if module not in modules)
    return {key: value for key, value in state.items() if not key.startswith(dropped)}


def save(tmp_path: Path, state: dict[str, torch.Tensor], name: str = "vlmo.pt", rows: int = 2) -> Path:
    """``state`` as a released file holds it: a bare state dict, ``rows`` modality rows."""
    state = dict(state, **{"token_type_embeddings.weight": state["token_type_embeddings.weight"][:rows].clone()})
    torch.save(state, tmp_path / name)
    return tmp_path / name


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, name: str) -> None:
    difference = float((actual.float().reshape(expected.shape) - expected.float()).abs().max())
    assert difference <= atol, f"{name}: max |diff| {difference:.3g} > {atol:g}"


# --------------------------------------------------------------------------------------------------- fixture parity


def test_every_fixture_tensor_is_reproduced_by_the_converted_heads() -> None:
    """Every output the original code saved, from the heads converted out of the one all-heads checkpoint."""
    inputs, expected = fixture_tensors("vlmo")
    ids, mask, pixels = inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]
    ours: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        model = converted("model")
        dual = model(input_ids=ids, pixel_values=pixels, attention_mask=mask)
        fused = model.encode_fused(ids, mask, pixels).last_hidden_state
        ours.update(
            image_feats=dual.vision_model_output.last_hidden_state, text_feats=dual.text_model_output.last_hidden_state,
            image_embeds_itc=dual.image_embeds, text_embeds_itc=dual.text_embeds,
            itc_logits_per_image=dual.logits_per_image, itc_logits_per_text=dual.logits_per_text,
            itc_logit_scale_exp=model.logit_scale.exp(), fused_text_feats=fused[:, :TEXT_LENGTH],
            fused_image_feats=fused[:, TEXT_LENGTH:], fused_cls_hidden=fused[:, 0],
            fused_pooled=model.encode_fused(ids, mask, pixels).pooler_output,
        )
        pretraining = converted("pretraining")
        out = pretraining(ids, pixels, mask, mlm_input_ids=inputs["mlm_input_ids"], mlm_labels=inputs["mlm_labels"],
                          generator=torch.Generator().manual_seed(0))
        ours.update(
            image_embeds_itc_vl=out.vl_image_embeds, text_embeds_itc_vl=out.vl_text_embeds, itc_loss=out.loss_itc,
            itc_vl_logits_per_image=out.vl_logits_per_image, itc_vl_logit_scale_exp=pretraining.logit_vl_scale.exp(),
            itm_logits=out.itm_logits[: len(ids)], mlm_logits=out.mlm_logits, mlm_loss=0.25 * out.loss_mlm,
        )
        vqa = converted("vqa")(ids, mask, pixels, labels=inputs["vqa_targets"])
        nlvr2 = converted("nlvr2")(ids, mask, pixels, pixel_values_2=inputs["pixel_values_2"],
                                   labels=inputs["nlvr2_labels"])
        ours.update(vqa_logits=vqa.logits, vqa_loss=vqa.loss, nlvr2_logits=nlvr2.logits, nlvr2_loss=nlvr2.loss)
        ours["retrieval_scores"] = converted("retrieval").rank(pixels, ids, mask).similarities
        masked_lm = converted("masked_lm")(inputs["mlm_input_ids"], mask, pixels, labels=inputs["mlm_labels"])
    features = {name for name in expected if "feats" in name or "embeds" in name or name == "fused_pooled"}
    for name, tensor in ours.items():
        assert_close(tensor, expected[name], FEATURE_ATOL if name in features else LOGIT_ATOL, name)
    assert set(ours) == set(expected)
    assert_close(masked_lm.logits, expected["mlm_logits"], LOGIT_ATOL, "masked_lm mlm_logits")


def test_config_comes_from_the_shapes_and_the_original_config() -> None:
    config = VlpVlmoConfig.from_dict(converted_fixture("vqa")[0])
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (
        32, 4, 4, 128
    )
    assert (config.vl_ffn_start_layer, config.image_size, config.patch_size, config.max_text_length) == (2, 32, 8, 12)
    assert (config.relative_position_text_length, config.vocab_size, config.num_labels) == (196, 100, 10)
    assert (config.layer_scale_init_value, config.layer_norm_eps, config.position_embedding_type) == (
        0.1, 1e-6, "relative"
    )
    assert (config.pad_token_id, config.cls_token_id, config.sep_token_id, config.mask_token_id) == (0, 1, 2, 3)
    reasoning = converted("nlvr2")
    rows = original_state()["token_type_embeddings.weight"]
    assert torch.equal(reasoning.second_image_modality_embedding.detach(), rows[2])
    assert torch.equal(reasoning.vlmo.modality_embeddings.weight.detach(), rows[:2])
    assert reasoning.config.id2label == {0: "False", 1: "True"}


def test_the_released_containers_give_the_same_tensors(tmp_path: Path) -> None:
    """Bare state dict (the released .pt, converted from the shapes alone), Lightning, DeepSpeed (``module.``
    prefixes) and ``{'model': ...}``."""
    state = original_state()
    containers = {
        "bare.pt": state, "lightning.ckpt": {"state_dict": state, "epoch": 0},
        "deepspeed.pt": {"module": {f"module.{key}": value for key, value in state.items()}},
        "model.pth": {"model": state},
    }
    reference = converted_fixture("vqa")[1]
    for name, content in containers.items():
        torch.save(content, tmp_path / name)
        result = convert_vlmo_checkpoint(tmp_path / name, head="vqa")
        assert result.model.config.max_text_length == TEXT_LENGTH and result.model.config.image_size == 32, name
        converted_state = result.model.state_dict()
        assert set(converted_state) == set(reference), name
        assert all(torch.equal(converted_state[key], reference[key]) for key in reference), name


# --------------------------------------------------------------------------------------------------- heads


@pytest.mark.parametrize(
    ("modules", "rows", "model_class", "fresh"),
    [
        (("mlm_score", "itm_score", "itc_", "logit_scale", "logit_vl_scale"), 2, VlpVlmoForPretraining, ()),
        (("vqa_classifier",), 2, VlpVlmoForQuestionAnswering, ("vlmo.image_projection.weight", "vlmo.logit_scale")),
        (("nlvr2_classifier",), 3, VlpVlmoForVisualReasoning, ("vlmo.text_projection.weight",)),
        (("itc_image_proj", "itc_text_proj", "logit_scale"), 2, VlpVlmoForImageTextRetrieval, ("itm_head.weight",)),
        ((), 2, VlpVlmoModel, ("image_projection.weight",)),
    ],
    ids=["pretrained", "vqa", "nlvr2", "retrieval", "backbone"],
)
def test_auto_head_follows_the_release(
    modules: tuple[str, ...], rows: int, model_class: type, fresh: tuple[str, ...], tmp_path: Path
) -> None:
    """Each release holds one task's heads: ``auto`` writes that task's class; what no such release holds (the dual
    encoder's projections of the fine-tuned ones, the retrieval models' ITM head) is initialised fresh and named."""
    state = {key: value for key, value in original_state().items()
             if key.startswith(modules) or not key.startswith(HEAD_MODULES)}
    result = convert_vlmo_checkpoint(save(tmp_path, state, rows=rows))
    assert type(result.model) is model_class
    assert set(result.dropped) == DEAD
    assert set(fresh) <= set(result.initialized)
    reference = converted_fixture(result.head)[1]
    for key, tensor in result.model.state_dict().items():
        assert key in result.initialized or torch.equal(tensor, reference[key]), key


def test_text_only_stage_has_no_vl_ffn(tmp_path: Path) -> None:
    """The second stage's checkpoint (MLM alone, no VL-FFN): a masked-LM model whose unimodal modes are the
    original's, with the VL-FFN start at the depth."""
    state = {key: value for key, value in keep(original_state(), "mlm_score").items() if "_vl." not in key}
    result = convert_vlmo_checkpoint(save(tmp_path, state), head="auto")
    model, (inputs, expected) = result.model, fixture_tensors("vlmo")
    assert isinstance(model, VlpVlmoForMaskedLM) and model.config.vl_ffn_start_layer == 4
    with torch.no_grad():
        text = model.vlmo.encode_text(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state
        image = model.vlmo.encode_image(inputs["pixel_values"]).last_hidden_state
    assert_close(text, expected["text_feats"], FEATURE_ATOL, "text_feats")
    assert_close(image, expected["image_feats"], FEATURE_ATOL, "image_feats")


def test_a_checkpoint_holding_several_tasks_needs_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    error = cli_error(tmp_path, capsys, CHECKPOINT)
    assert "holds the heads of several tasks" in error and "--head vqa / nlvr2 / pretraining (or model)" in error
    dropped = convert_vlmo_checkpoint(CHECKPOINT, head="retrieval").dropped
    assert dropped["mlm_score.bias"] == "the MLM head, not part of VlpVlmoForImageTextRetrieval"
    assert "VL-FFN contrast" in dropped["logit_vl_scale"]
    assert "second image" in dropped["token_type_embeddings.weight[2]"]
    assert "checked equal" in dropped["text_imag_relative_position_index"]

    path = save(tmp_path, keep(original_state(), "vqa_classifier"), "vqa.pt")
    error = cli_error(tmp_path, capsys, path, "--head", "pretraining")
    assert "--head pretraining (VlpVlmoForPretraining) needs the MLM head and the ITM head" in error
    assert "(mlm_score.*, itm_score.*, itc_image_proj.* + itc_text_proj.* + logit_scale" in error
    assert "Heads it converts to: vqa, model" in error


# --------------------------------------------------------------------------------------------------- sizes


def absolute_state() -> dict[str, torch.Tensor]:
    """The fixture turned into a VLMo-Base-plus-like checkpoint: absolute image and text positions, no
    relative-position table, no layer scale."""
    state = {key: value for key, value in keep(original_state(), "vqa_classifier").items()
             if "gamma_" not in key and "relative_position" not in key}
    state["transformer.pos_embed"] = 0.5 * torch.randn(1, 17, 32, generator=torch.Generator().manual_seed(3))
    return state


def test_absolute_positions_take_the_head_count_from_the_variant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save(tmp_path, absolute_state(), "absolute.pt")
    error = cli_error(tmp_path, capsys, path)
    assert "head count is not stored" in error and "Pass --variant base_plus" in error
    error = cli_error(tmp_path, capsys, path, "--variant", "base_plus")
    assert "--variant base_plus has width 544, but the checkpoint's is 32" in error
    (tmp_path / "config.json").write_text(json.dumps({"model_arch_kwargs": {"num_heads": 4, "norm_eps": 1e-6}}))
    result = convert_vlmo_checkpoint(path, original_config=tmp_path / "config.json", verify=True)
    config = result.model.config
    assert (config.position_embedding_type, config.layer_scale_init_value, config.num_attention_heads) == (
        "absolute", None, 4
    )
    assert max(result.differences.values()) < FEATURE_ATOL and "vqa_logits" in result.differences
    state = result.model.state_dict()
    assert torch.equal(state["vlmo.image_embeddings.position_embedding"], absolute_state()["transformer.pos_embed"][0])
    assert torch.equal(state["vlmo.text_embeddings.position_embeddings.weight"],
                       original_state()["text_embeddings.position_embeddings.weight"])


def shapes(width: int, depth: int, vl_start: int, heads: int | None) -> dict[str, torch.Tensor]:
    """The shapes of a released pre-trained checkpoint (224 px, patch 16, 40 text tokens) as meta tensors: what the
    configuration is read from."""
    meta = functools.partial(torch.empty, device="meta")
    state = {
        "transformer.cls_token": meta(1, 1, width), "transformer.patch_embed.proj.weight": meta(width, 3, 16, 16),
        "transformer.blocks.0.mlp_imag.fc1.weight": meta(4 * width, width),
        "text_embeddings.word_embeddings.weight": meta(30522, width),
        "text_embeddings.token_type_embeddings.weight": meta(2, width),
        "text_embeddings.position_embeddings.weight": meta(40, width),
        **{f"transformer.blocks.{i}.norm1.weight": meta(width) for i in range(depth)},
        **{f"transformer.blocks.{i}.mlp_vl.fc1.weight": meta(4 * width, width) for i in range(vl_start, depth)},
    }
    if heads is None:
        state["transformer.pos_embed"] = meta(1, 197, width)
    else:
        state["relative_position_bias_table"] = meta(27 * 27 + 5 + 2 * 196, heads * depth)
        state.update({f"transformer.blocks.{i}.gamma_1": meta(width) for i in range(depth)})
    return state


def test_the_released_variants_sizes() -> None:
    base_plus = vlmo_config(shapes(544, 24, 21, None), {"model_arch": "vlmo_base_plus_patch16"}, "model")
    preset = VlpVlmoConfig.from_preset("base_plus")
    assert base_plus.hidden_size // base_plus.num_attention_heads == 34
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vl_ffn_start_layer",
                 "position_embedding_type", "layer_scale_init_value", "image_size", "max_text_length"):
        assert getattr(base_plus, name) == getattr(preset, name), name
    assert (base_plus.cls_token_id, base_plus.mask_token_id) == (101, 103)  # bert-base-uncased's vocabulary size
    large = vlmo_config(shapes(1024, 24, 21, heads=16), {}, "model")  # the head count from the table
    assert (large.num_attention_heads, large.image_size, large.relative_position_text_length) == (16, 224, 196)
    with pytest.raises(ConversionError, match="model_arch 'vlmo_base_patch16' has width 768, but the checkpoint's"):
        vlmo_config(shapes(1024, 24, 21, heads=16), {"model_arch": "vlmo_base_patch16"}, "model")


def other_geometry(depth: int = 3, vl_start: int = 2, heads: int = 2, width: int = 24) -> dict[str, torch.Tensor]:
    """A bare VQA checkpoint of another geometry than the fixture's (patch 16, 48 px: a 3x3 grid; 10 text tokens; text
    rows for 32 tokens, as the hidden fixture's max_text_len_of_initckpt 64 is not 196), with random weights."""
    generator = torch.Generator().manual_seed(5)

    def random(*shape: int, base: float = 0.0) -> torch.Tensor:
        return base + 0.3 * torch.randn(shape, generator=generator)

    shapes = {"norm1": [width], "norm2_text": [width], "norm2_imag": [width], "attn.proj": [width, width],
              "mlp_text.fc1": [4 * width, width], "mlp_text.fc2": [width, 4 * width]}
    shapes.update({"mlp_imag.fc1": shapes["mlp_text.fc1"], "mlp_imag.fc2": shapes["mlp_text.fc2"]})
    vl = {"norm2_vl": [width], "mlp_vl.fc1": shapes["mlp_text.fc1"], "mlp_vl.fc2": shapes["mlp_text.fc2"]}
    state = {
        "relative_position_bias_table": random(25 + 5 + 2 * 32, heads * depth),
        "relative_position_index": relative_position_index((3, 3)),
        "transformer.cls_token": random(1, 1, width), "transformer.patch_embed.proj.weight": random(width, 3, 16, 16),
        "transformer.patch_embed.proj.bias": random(width), "transformer.norm.weight": random(width, base=1),
        "transformer.norm.bias": random(width), "text_embeddings.word_embeddings.weight": random(50, width),
        "text_embeddings.position_embeddings.weight": random(10, width),
        "token_type_embeddings.weight": random(2, width),
        "text_embeddings.token_type_embeddings.weight": random(2, width), "pooler.dense.weight": random(width, width),
        "text_embeddings.LayerNorm.weight": random(width, base=1), "text_embeddings.LayerNorm.bias": random(width),
        "pooler.dense.bias": random(width), "vqa_classifier.0.weight": random(2 * width, width),
        "vqa_classifier.0.bias": random(2 * width), "vqa_classifier.1.weight": random(2 * width, base=1),
        "vqa_classifier.1.bias": random(2 * width), "vqa_classifier.3.weight": random(5, 2 * width),
        "vqa_classifier.3.bias": random(5),
    }
    for index in range(depth):
        block = f"transformer.blocks.{index}."
        modules = {**shapes, **(vl if index >= vl_start else {})}
        state.update({f"{block}{name}.weight": random(*shape, base=name.startswith("norm"))
                      for name, shape in modules.items()})
        state.update({f"{block}{name}.bias": random(shape[0]) for name, shape in modules.items()})
        state.update({block + name: random(width, base=0.3) for name in ("gamma_1", "gamma_2")})
        state.update({block + name: random(width) for name in ("attn.q_bias", "attn.v_bias")})
        state[block + "attn.qkv.weight"] = random(3 * width, width)
    return state


def test_a_bare_file_of_another_geometry_converts_from_its_shapes(tmp_path: Path) -> None:
    """No config: the grid comes from the stored image index once the releases' 196 text rows do not fit the table,
    the text rows from what is left; the verification against the BEiT layers holds."""
    torch.save(other_geometry(), tmp_path / "vqa.pt")
    result = convert_vlmo_checkpoint(tmp_path / "vqa.pt", verify=True)
    config = result.model.config
    assert (config.image_size, config.relative_position_text_length, config.max_text_length) == (48, 32, 10)
    assert (config.num_attention_heads, config.vl_ffn_start_layer, config.num_labels) == (2, 2, 5)
    assert max(result.differences.values()) < FEATURE_ATOL and "vlmo.logit_scale" in result.initialized


def test_index_tensors_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = original_state()
    state["text_relative_position_index"] = state["text_relative_position_index"].clone()
    state["text_relative_position_index"][3, 5] += 1
    error = cli_error(tmp_path, capsys, save(tmp_path, state, "index.pt"), "--head", "vqa")
    assert "text_relative_position_index differs at 1 positions" in error and "sizes were inferred wrongly" in error
    (tmp_path / "config.json").write_text(json.dumps({"max_text_len": 8}))  # a wrong text length
    state = {key: value for key, value in original_state().items() if not key.startswith("text_embeddings.position")}
    error = cli_error(tmp_path, capsys, save(tmp_path, state, "short.pt"), "--head", "vqa", "--original-config",
                      str(tmp_path / "config.json"))
    assert "text_relative_position_index has shape [12, 12] where the model's is [8, 8]" in error


# --------------------------------------------------------------------------------------------------- errors


def test_unknown_and_missing_keys_fail_with_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = original_state()
    state["transformer.blocks.0.attn.extra.weight"] = torch.zeros(2)
    error = cli_error(tmp_path, capsys, save(tmp_path, state, "unknown.pt", rows=3), "--head", "vqa")
    assert "unexpected source keys that no rule consumes (1): transformer.blocks.0.attn.extra.weight" in error
    state = original_state()
    del state["transformer.blocks.1.mlp_text.fc2.bias"]
    error = cli_error(tmp_path, capsys, save(tmp_path, state, "missing.pt", rows=3), "--head", "vqa")
    assert "target keys that no source key fills (1): vlmo.encoder.layers.1.mlp.text.fc2.bias" in error


def test_other_families_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vilt = fixture_dir("vilt") / "checkpoint.ckpt"
    assert "looks like a ViLT checkpoint" in cli_error(tmp_path, capsys, vilt)
    import conversion.convert_vilt as convert_vilt

    status = run_cli(convert_vilt.main, ["--checkpoint", str(CHECKPOINT), "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert status == 1 and "looks like a VLMo checkpoint" in error
    assert "use conversion/convert_vlmo.py / hf-vlp convert vlmo" in error


def test_answers_name_the_vqa_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({str(i): f"answer {i}" for i in range(10)}))
    result = convert_vlmo_checkpoint(CHECKPOINT, head="vqa", answers=answers)
    assert result.model.config.id2label[7] == "answer 7"
    error = cli_error(tmp_path, capsys, CHECKPOINT, "--head", "nlvr2", "--answers", str(answers))
    assert "--head nlvr2 has no VQA classifier" in error


# --------------------------------------------------------------------------------------------------- verify


def test_verify_fails_when_the_reference_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = convert_vlmo.reference_outputs

    def corrupted(state_dict, *args):
        state = dict(state_dict)
        state["transformer.blocks.1.mlp_text.fc2.bias"] = state["transformer.blocks.1.mlp_text.fc2.bias"] + 0.01
        return reference(state, *args)

    monkeypatch.setattr(convert_vlmo, "reference_outputs", corrupted)
    with pytest.raises(ConversionError, match="Verification against the original tensors .* failed: .*text_feats"):
        convert_vlmo_checkpoint(CHECKPOINT, head="masked_lm", verify=True)


# --------------------------------------------------------------------------------------------------- output and CLI


def test_written_folder_loads_through_the_auto_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "vlmo-pretraining"
    arguments = ["--checkpoint", str(CHECKPOINT), "--output", str(output), "--original-config", str(CONFIG),
                 "--tokenizer", str(fixture_vocab()), "--head", "pretraining", "--verify"]
    assert run_cli(main, arguments) == 0, capsys.readouterr().err
    readme = (output / "README.md").read_text()
    assert "python conversion/convert_vlmo.py --checkpoint" in readme and "license: mit" in readme
    assert "Compared with the original tensors run through transformers' BEiT layers" in readme
    assert "vl_image_embeds" in readme and "mlm_logits" in readme
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == ["VlpVlmoForPretraining"] and config["max_text_length"] == TEXT_LENGTH

    model = AutoModel.from_pretrained(output, dtype=torch.float32).eval()
    assert isinstance(model, VlpVlmoModel)
    inputs, expected = fixture_tensors("vlmo")
    with torch.no_grad():
        pooled = model.get_multimodal_features(inputs["input_ids"], inputs["pixel_values"],
                                               inputs["attention_mask"]).pooler_output
    assert_close(pooled, expected["fused_pooled"], FEATURE_ATOL, "fused_pooled after save/load")
    processor = AutoProcessor.from_pretrained(output)
    assert isinstance(processor, VlpVlmoProcessor) and processor.max_length == TEXT_LENGTH
    assert processor.image_processor.size == {"height": 32, "width": 32}
    encoded = processor(text=["word1 word2"], images=[inputs["raw_images"][0].numpy()], return_tensors="pt")
    assert encoded["input_ids"][0, :4].tolist() == [1, 5 + 1, 5 + 2, 2]
    assert torch.equal(encoded["pixel_values"][0], inputs["pixel_values"][0])


def test_hf_vlp_convert_vlmo_and_the_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save(tmp_path, keep(original_state(), "itc_image_proj", "itc_text_proj", "logit_scale"), "coco.pt")
    status = cli.main(["convert", "vlmo", "--checkpoint", str(path), "--output", str(tmp_path / "retrieval")])
    assert status == 0, capsys.readouterr().err
    written = json.loads((tmp_path / "retrieval" / "config.json").read_text())
    assert written["architectures"] == ["VlpVlmoForImageTextRetrieval"]
    readme = (tmp_path / "retrieval" / "README.md").read_text()
    assert "hf-vlp convert vlmo --checkpoint" in readme
    assert "Initialised fresh, not in the checkpoint: `itm_head.weight`, `itm_head.bias`" in readme

    argv = ["convert_vlmo.py", "--checkpoint", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(ROOT / "conversion" / "convert_vlmo.py"), run_name="__main__")
    assert exited.value.code == 1
    assert "Checkpoint not found" in capsys.readouterr().err and not (tmp_path / "out").exists()
