"""The shared strict-conversion helpers: containers, key rules, strict loading, atomic output, model cards."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conversion.common import (
    ConversionError,
    Drop,
    Fuse,
    Rename,
    check_differences,
    check_output_dir,
    filter_prefix,
    load_mapped_state_dict,
    map_state_dict,
    max_abs_differences,
    prepare_torchscript_for_cpu,
    read_checkpoint,
    read_transformers_weights,
    run_cli,
    transpose,
    unwrap_state_dict,
    write_output_dir,
)


class TinyTarget(nn.Module):
    """A target with a fused projection, a plain linear, a norm and an integer buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.proj = nn.Linear(4, 3, bias=False)
        self.norm = nn.BatchNorm1d(4)


def tiny_source() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tensors = {f"attn.{part}.{kind}": torch.randn(*(4, 4) if kind == "weight" else (4,), generator=generator)
               for part in ("q", "k", "v") for kind in ("weight", "bias")}
    tensors["head"] = torch.randn(4, 3, generator=generator).half()  # an x @ W matrix, fp16 as in releases
    for name in ("weight", "bias", "running_mean", "running_var"):
        tensors[f"bn.{name}"] = torch.rand(4, generator=generator) + 0.5
    tensors["bn.num_batches_tracked"] = torch.tensor(7)
    tensors["step"] = torch.tensor(3)
    return tensors


TINY_RULES = [
    Fuse(r"attn\.(?P<part>q|k|v)\.(?P<p>weight|bias)", r"qkv.\g<p>", parts=("q", "k", "v")),
    Rename(r"head", "proj.weight", transpose),
    Rename(r"bn\.(.+)", r"norm.\1"),
    Drop(r"step", "training counter"),
]


def test_rules_fuse_in_part_order_transpose_and_drop() -> None:
    source = tiny_source()
    mapped = map_state_dict(source, TINY_RULES)
    expected_qkv = torch.cat([source["attn.q.weight"], source["attn.k.weight"], source["attn.v.weight"]])
    assert torch.equal(mapped.tensors["qkv.weight"], expected_qkv)
    assert mapped.sources["qkv.bias"] == ["attn.q.bias", "attn.k.bias", "attn.v.bias"]
    assert torch.equal(mapped.tensors["proj.weight"], source["head"].t())
    assert mapped.dropped == {"step": "training counter"}

    model = TinyTarget()
    load_mapped_state_dict(model, mapped)
    assert model.proj.weight.dtype == torch.float32
    assert torch.equal(model.proj.weight, source["head"].float().t())
    assert int(model.norm.num_batches_tracked) == 7
    assert torch.equal(model.norm.running_var, source["bn.running_var"])


def test_unclaimed_source_key_is_named() -> None:
    source = {**tiny_source(), "decoder.extra": torch.zeros(2)}
    with pytest.raises(ConversionError, match=r"unexpected source keys.*decoder\.extra"):
        map_state_dict(source, TINY_RULES)


def test_incomplete_fuse_is_named() -> None:
    source = tiny_source()
    del source["attn.k.bias"]
    with pytest.raises(ConversionError, match=r"incomplete fused tensors.*qkv\.bias.*lacks \['k'\]"):
        map_state_dict(source, TINY_RULES)


def test_two_sources_for_one_target_is_an_error() -> None:
    source = {"a.weight": torch.zeros(2), "b.weight": torch.zeros(2)}
    with pytest.raises(ConversionError, match=r"several source keys map to one target.*x <- a\.weight and b\.weight"):
        map_state_dict(source, [Rename(r"[ab]\.weight", "x")])


def test_unfilled_target_and_unknown_target_are_named() -> None:
    source = tiny_source()
    del source["bn.running_mean"]
    source["bn.extra"] = torch.zeros(4)
    mapped = map_state_dict(source, TINY_RULES)
    with pytest.raises(ConversionError) as raised:
        load_mapped_state_dict(TinyTarget(), mapped)
    message = str(raised.value)
    assert "target keys that no source key fills (1): norm.running_mean" in message
    assert "norm.extra (from bn.extra)" in message


def test_shape_mismatch_names_key_expected_and_got() -> None:
    source = tiny_source()
    source["head"] = torch.zeros(5, 3)
    mapped = map_state_dict(source, TINY_RULES)
    with pytest.raises(ConversionError, match=r"proj\.weight \(from head\): expected \[3, 4\], got \[3, 5\]"):
        load_mapped_state_dict(TinyTarget(), mapped)


def test_filter_prefix() -> None:
    assert filter_prefix({"a.x": 1, "a.y": 2, "b.x": 3}, "a.") == {"x": 1, "y": 2}


# --------------------------------------------------------------------------------------------------- containers


def test_read_plain_wrapped_and_safetensors(tmp_path: Path) -> None:
    tensors = {"w": torch.arange(3.0), "b": torch.ones(2)}
    torch.save(tensors, tmp_path / "plain.pt")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tensors.items()}}, tmp_path / "wrapped.pt")
    save_file(tensors, tmp_path / "weights.safetensors")
    plain = read_checkpoint(tmp_path / "plain.pt")
    wrapped = read_checkpoint(tmp_path / "wrapped.pt")
    safe = read_checkpoint(tmp_path / "weights.safetensors")
    assert plain.container == "torch" and safe.container == "safetensors"
    for checkpoint in (plain, wrapped, safe):
        assert sorted(checkpoint.state_dict) == ["b", "w"]
        assert torch.equal(checkpoint.state_dict["w"], tensors["w"])
    assert wrapped.extra == {"epoch": 3}


def test_unwrap_rejects_objects_without_a_state_dict() -> None:
    with pytest.raises(ConversionError, match="holds a list"):
        unwrap_state_dict([1, 2])
    with pytest.raises(ConversionError, match=r"no state dict found.*\['epoch', 'optimizer'\]"):
        unwrap_state_dict({"epoch": 1, "optimizer": {}})
    # a prefix is only stripped when every key carries it
    state_dict, _ = unwrap_state_dict({"module.a": torch.zeros(1), "b": torch.zeros(1)})
    assert sorted(state_dict) == ["b", "module.a"]


def test_read_errors_missing_directory_random_bytes_and_pickles(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="Checkpoint not found"):
        read_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(ConversionError, match="is a directory"):
        read_checkpoint(tmp_path)
    (tmp_path / "noise.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConversionError, match="Unknown container"):
        read_checkpoint(tmp_path / "noise.bin")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConversionError, match="Unknown container.*holds a list"):
        read_checkpoint(tmp_path / "list.pt")
    with (tmp_path / "raw.pkl").open("wb") as handle:
        pickle.dump({"w": [1.0, 2.0]}, handle)
    with pytest.raises(ConversionError, match="Unknown container"):
        read_checkpoint(tmp_path / "raw.pkl")


def test_read_transformers_weights_single_sharded_and_bin(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    (tmp_path / "bin").mkdir()
    torch.save(tensors, tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "sharded").mkdir()
    save_file({"a": tensors["a"]}, tmp_path / "sharded" / "model-00001-of-00002.safetensors")
    save_file({"b": tensors["b"]}, tmp_path / "sharded" / "model-00002-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for folder in ("bin", "sharded"):
        read = read_transformers_weights(tmp_path / folder)
        assert sorted(read) == ["a", "b"] and torch.equal(read["b"], tensors["b"])
    (tmp_path / "sharded" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConversionError, match="model-00002-of-00002.safetensors named in .* is missing"):
        read_transformers_weights(tmp_path / "sharded")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="No weights in"):
        read_transformers_weights(tmp_path / "empty")


class HalfCast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.0, 1.0 / 3.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float16) * self.scale.to(torch.float16)


def test_torchscript_archive_is_read_and_patched_to_float32(tmp_path: Path) -> None:
    traced = torch.jit.trace(HalfCast(), torch.ones(2))
    traced.save(str(tmp_path / "traced.pt"))
    safe = read_checkpoint(tmp_path / "traced.pt")  # tensors only: nothing of the archive runs
    assert safe.container == "torchscript" and safe.module is None
    assert list(safe.state_dict) == ["scale"] and torch.equal(safe.state_dict["scale"], HalfCast().scale.detach())
    checkpoint = read_checkpoint(tmp_path / "traced.pt", trust_torchscript=True)
    assert checkpoint.container == "torchscript" and list(checkpoint.state_dict) == ["scale"]
    assert read_checkpoint(tmp_path / "traced.pt", trust_torchscript=True).module(torch.ones(2)).dtype == torch.float16
    module = prepare_torchscript_for_cpu(checkpoint.module)
    out = module(torch.ones(2))
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([1.0, 1.0 / 3.0]))
    with pytest.raises(ConversionError, match="does not accept"):
        read_checkpoint(tmp_path / "traced.pt", allow_torchscript=False)


class MakesOnCuda(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.ones(2, device=torch.device("cuda"))


def test_cuda_device_constants_become_cpu() -> None:
    scripted = torch.jit.script(MakesOnCuda())
    module = prepare_torchscript_for_cpu(scripted)
    assert torch.equal(module(torch.zeros(2)), torch.ones(2))


# --------------------------------------------------------------------------------------------------- output


def test_write_output_dir_is_atomic(tmp_path: Path) -> None:
    output = tmp_path / "out"

    def failing(directory: Path) -> None:
        (directory / "half.txt").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_output_dir(output, failing)
    assert list(tmp_path.iterdir()) == []

    write_output_dir(output, lambda directory: (directory / "a.txt").write_text("first"))
    assert (output / "a.txt").read_text() == "first"
    with pytest.raises(ConversionError, match="exists and is not empty; pass --overwrite"):
        write_output_dir(output, lambda directory: (directory / "b.txt").write_text("second"))
    with pytest.raises(RuntimeError):
        write_output_dir(output, failing, overwrite=True)
    assert sorted(path.name for path in output.iterdir()) == ["a.txt", "conversion.json"]  # untouched by the failure

    write_output_dir(output, lambda directory: (directory / "b.txt").write_text("second"), overwrite=True)
    assert sorted(path.name for path in output.iterdir()) == ["b.txt", "conversion.json"]
    assert [path.name for path in tmp_path.iterdir()] == ["out"]  # no staging or retired folders left


def test_output_may_be_an_empty_directory_but_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write_output_dir(tmp_path / "empty", lambda directory: (directory / "x").write_text("x"))
    assert (tmp_path / "empty" / "x").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConversionError, match="is not a directory"):
        check_output_dir(tmp_path / "file", overwrite=True)


def test_differences_and_their_check() -> None:
    reference = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}
    differences = max_abs_differences(reference, {"a": torch.tensor([1.0, 2.5]), "b": torch.tensor([0.0])})
    assert differences == {"a": 0.5, "b": 0.0}
    check_differences({"b": 0.0}, 1e-4, "source")
    with pytest.raises(ConversionError, match=r"above 0\.0001 for a 0\.5"):
        check_differences(differences, 1e-4, "source")
    with pytest.raises(ConversionError, match="for c nan"):
        check_differences({"c": math.nan}, 1e-4, "source")
    with pytest.raises(ConversionError, match="shape"):
        max_abs_differences(reference, {"a": torch.zeros(3), "b": torch.zeros(1)})


def test_run_cli_turns_conversion_errors_into_exit_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    def main(argv: object) -> None:
        raise ConversionError("the problem, and the fix")

    assert run_cli(main, []) == 1
    assert "error: the problem, and the fix" in capsys.readouterr().err
    assert run_cli(lambda argv: None, []) == 0
