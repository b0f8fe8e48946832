"""FSDP through the stock Trainer (``--fsdp``, FSDP2) on 2 gloo CPU processes trains exactly as DDP does, for CLIP,
ALBEF and BLIP: the same loss at every step and, after training, the same weights (momentum towers and queues
included), each process holding half of every parameter; checkpoints resume exactly under FSDP, the final model is one
consolidated safetensors file with the keys and shapes of a DDP run and loads with ``AutoModel``."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel, TrainingArguments

from hf_vlp.integrations.compat import enable_fsdp_on_cpu
from hf_vlp.models.albef import VlpAlbefForPretraining
from hf_vlp.utils.sharding import (
    VECTORIZED_ATTRIBUTE,
    local_parameter_fraction,
    peak_rss_mib,
    savable_state_dict,
    vectorize_scalar_parameters,
)

from tests.helpers.tiny_models import tiny_albef_config

ROOT = Path(__file__).resolve().parents[2]
PROCESSES, PER_DEVICE = 2, 8
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(PROCESSES)]
# accelerate's own FSDP switch (FSDP2, sharded checkpoints by default), without --fsdp on the command line
ACCELERATE_FSDP = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(PROCESSES),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                   "--use_fsdp", "--fsdp_version", "2"]


def _train(
    architecture: str, output: Path, *extra: str, steps: int = 2, launcher: list[str] = TORCHRUN
) -> subprocess.CompletedProcess:
    arguments = [architecture, "--dataset", "synthetic-shapes:n=256", "--per-device-train-batch-size", str(PER_DEVICE),
                 "--max-steps", str(steps), "--logging-steps", "1", "--seed", "1", "--output-dir", str(output), *extra]
    # CUDA_VISIBLE_DEVICES="": the CPU path is what is tested, also on a machine with a GPU
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([*launcher, "-m", "hf_vlp.cli", "train", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=900, env=environment)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run


def _losses(output: Path) -> list[float]:
    history = json.loads((output / "metrics.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def _assert_same_model(got: Path, expected: Path) -> None:
    expected_weights, weights = load_file(expected / "model.safetensors"), load_file(got / "model.safetensors")
    assert {name: tensor.shape for name, tensor in weights.items()} == {
        name: tensor.shape for name, tensor in expected_weights.items()
    }
    for name, tensor in expected_weights.items():
        torch.testing.assert_close(weights[name], tensor, atol=2e-5, rtol=1e-4, msg=name)


def _assert_sharded(run: subprocess.CompletedProcess, output: Path) -> None:
    assert f"FSDP2 over {PROCESSES} processes" in run.stdout
    memory = json.loads((output / "metrics.json").read_text())["memory"]
    assert memory["sharding"] == "fsdp" and len(memory["peak_rss_mib"]) == PROCESSES
    # every process held half of the parameters (plain DDP would hold all of them)
    assert memory["parameter_share"] == pytest.approx([1 / PROCESSES] * PROCESSES, abs=0.02)
    assert "FSDP: parameters held per process 50%, 50%" in run.stdout
    assert "returned a view tensor" not in run.stderr and "find_unused_parameters" not in run.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """DDP and FSDP runs of each architecture: (output folder, the launch's output). CLIP and ALBEF use
    ``torchrun ... --fsdp`` (consolidated checkpoints), BLIP ``accelerate launch --use_fsdp`` (sharded ones)."""
    root, runs = tmp_path_factory.mktemp("fsdp"), {}
    for architecture in ("clip", "blip", "albef"):
        if architecture == "clip":  # evaluated before and after
            extra, steps = ["--eval-max-samples", "32", "--save-strategy", "no"], 2
        else:  # 4 steps with checkpoints every 2, to resume the FSDP run from its checkpoint-2
            extra, steps = ["--skip-eval", "--save-steps", "2"], 4
        output = root / f"{architecture}-ddp"
        runs[f"{architecture}-ddp"] = output, _train(architecture, output, *extra, steps=steps)
        output = root / f"{architecture}-fsdp"
        if architecture == "blip":
            run = _train(architecture, output, *extra, steps=steps, launcher=ACCELERATE_FSDP)
        else:
            run = _train(architecture, output, *extra, "--fsdp", steps=steps)
        runs[f"{architecture}-fsdp"] = output, run
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["clip", "albef", "blip"])
def test_fsdp_trains_as_ddp_does_with_half_the_parameters_per_process(runs, architecture):
    (ddp, ddp_run), (fsdp, run) = runs[f"{architecture}-ddp"], runs[f"{architecture}-fsdp"]
    _assert_sharded(run, fsdp)
    assert "find_unused_parameters" not in ddp_run.stderr  # pre-training uses every parameter; DDP is told so
    assert len(_losses(fsdp)) == (2 if architecture == "clip" else 4)
    assert _losses(fsdp) == pytest.approx(_losses(ddp), abs=1e-4)
    _assert_same_model(fsdp, ddp)  # momentum towers, feature queues and their pointers included
    assert json.loads((ddp / "metrics.json").read_text())["memory"]["parameter_share"] == [1.0, 1.0]
    # the consolidated model loads with AutoModel, every key used
    model, info = AutoModel.from_pretrained(fsdp, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


@pytest.mark.slow
def test_evaluation_after_fsdp_training_scores_the_consolidated_model(runs):
    ddp = json.loads((runs["clip-ddp"][0] / "metrics.json").read_text())
    fsdp = json.loads((runs["clip-fsdp"][0] / "metrics.json").read_text())
    assert fsdp["after"] == pytest.approx(ddp["after"], abs=1e-6)
    assert fsdp["after"] != fsdp["before"]


@pytest.mark.slow
@pytest.mark.parametrize(("architecture", "checkpoint_weights"), [("albef", "pytorch_model_fsdp.bin"),
                                                                  ("blip", "pytorch_model_fsdp_0")])
def test_an_fsdp_checkpoint_resumes_exactly(runs, tmp_path, architecture, checkpoint_weights):
    """A consolidated (``--fsdp``: FULL_STATE_DICT) and a sharded (accelerate's default SHARDED_STATE_DICT)
    checkpoint both resume to the uninterrupted run's losses and weights."""
    full = runs[f"{architecture}-fsdp"][0]
    assert (full / "checkpoint-2" / ".complete").is_file()
    assert (full / "checkpoint-2" / checkpoint_weights).exists()
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    launcher = ACCELERATE_FSDP if architecture == "blip" else TORCHRUN
    flags = [] if architecture == "blip" else ["--fsdp"]
    run = _train(architecture, resumed, "--skip-eval", "--save-steps", "2", *flags, "--resume-from-checkpoint", "last",
                 steps=4, launcher=launcher)
    _assert_sharded(run, resumed)
    assert _losses(resumed) == pytest.approx(_losses(full), abs=1e-6)
    _assert_same_model(resumed, full)


# ------------------------------------------------------------------------------------------------ in one process


def test_scalar_parameters_are_vectorized_for_fsdp_and_saved_back_as_scalars(tmp_path):
    torch.manual_seed(0)
    model = VlpAlbefForPretraining(tiny_albef_config())
    model.init_momentum()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert before["temp"].dim() == 0
    assert vectorize_scalar_parameters(model) == ["temp"]
    assert getattr(model, VECTORIZED_ATTRIBUTE) == ("temp",)
    assert model.temp.shape == (1,) and model.temp.requires_grad and isinstance(model.temp, nn.Parameter)
    assert [name for name, param in model.named_parameters() if param.dim() == 0] == []

    model.save_pretrained(tmp_path / "saved")
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    assert saved["temp"].shape == () and saved["temp"] == before["temp"]
    reloaded = VlpAlbefForPretraining.from_pretrained(tmp_path / "saved")
    assert reloaded.temp.shape == () and reloaded.temp == before["temp"]


def test_a_gathered_state_dict_is_saved_without_tied_copies(tmp_path):
    torch.manual_seed(0)
    model = VlpAlbefForPretraining(tiny_albef_config())
    model.init_momentum()
    tied = model.all_tied_weights_keys
    assert tied, "the MLM decoder is tied to the word embeddings"
    gathered = {name: tensor.clone() for name, tensor in model.state_dict().items()}  # separate tensors, as FSDP's
    assert set(tied) <= set(gathered)
    kept = savable_state_dict(model, gathered)
    assert set(kept) == set(gathered) - set(tied)
    model.save_pretrained(tmp_path / "gathered", state_dict=gathered)
    model.save_pretrained(tmp_path / "own")
    assert set(load_file(tmp_path / "gathered" / "model.safetensors")) == set(
        load_file(tmp_path / "own" / "model.safetensors")
    )


def test_fsdp_on_cpu_is_only_arranged_for_a_sharded_multi_process_run():
    one_process = TrainingArguments(output_dir="unused", use_cpu=True, fsdp=True, report_to="none")
    assert enable_fsdp_on_cpu(one_process) is False  # nothing to shard over
    assert enable_fsdp_on_cpu(TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")) is False


def test_sharding_measurements():
    model = VlpAlbefForPretraining(tiny_albef_config())
    assert local_parameter_fraction(model) == 1.0  # unsharded: every element is local
    assert 50 < peak_rss_mib() < 1024 * 1024  # MiB, not KiB or bytes
