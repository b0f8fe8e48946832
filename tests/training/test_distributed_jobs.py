"""Several processes are one job: ``torchrun`` and ``accelerate launch`` start ``hf-vlp train`` on the CPU without
any backend flag, and the processes form one gloo group, split the global batch, train as one process on that batch
would, and only rank 0 evaluates and writes; a launch that would not form a group is refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainingArguments

from hf_vlp.training.runner import check_one_job, distributed_defaults, launched_processes

ROOT = Path(__file__).resolve().parents[2]
PER_DEVICE, PROCESSES, STEPS = 8, 2, 3
JOB = ["train", "clip", "--dataset", "synthetic-shapes:n=512", "--skip-eval", "--logging-steps", "1",
       "--max-steps", str(STEPS), "--save-steps", str(STEPS), "--seed", "1"]

# Runs hf_vlp.cli under an audit hook that records every file or folder this process creates or writes below
# $SPY_OUTPUT_DIR into $SPY_LOG/writes-rank<RANK>.json: Python-level writes (json, cards, plots, folders); files
# written by native code (safetensors, torch.save) are not seen.
SPY = '''
import atexit, json, os, sys
output, log = os.path.realpath(os.environ["SPY_OUTPUT_DIR"]), os.environ["SPY_LOG"]
writes = []
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def _under_output(path):
    if not isinstance(path, (str, bytes, os.PathLike)):
        return None
    path = os.path.realpath(os.fsdecode(path))
    return os.path.relpath(path, output) if path == output or path.startswith(output + os.sep) else None

def hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
    elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "shutil.copyfile"):
        path, writing = args[0], True
    else:
        return
    relative = _under_output(path) if writing else None
    if relative is not None:
        writes.append(relative)

atexit.register(lambda: open(os.path.join(log, "writes-rank%s.json" % os.environ.get("RANK", "0")), "w").write(
    json.dumps(writes)))
sys.addaudithook(hook)
from hf_vlp.cli import main
sys.exit(main(sys.argv[1:]))
'''


def _environment(**extra: str) -> dict:
    # CUDA_VISIBLE_DEVICES="": the CPU defaults are what is tested, also on a machine with a GPU
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), **extra}


def _run(launcher: list[str], output: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    spy = tmp_path / "spy.py"
    spy.write_text(SPY)
    log = tmp_path / f"log-{output.name}"
    log.mkdir()
    run = subprocess.run(
        [*launcher, str(spy), *JOB, "--output-dir", str(output), *extra], cwd=ROOT, capture_output=True, text=True,
        timeout=600, env=_environment(SPY_OUTPUT_DIR=str(output), SPY_LOG=str(log)),
    )
    writes = {path.stem.removeprefix("writes-"): json.loads(path.read_text()) for path in log.glob("writes-rank*.json")}
    return run, writes


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """One process on the global batch (2 x 8), for the launchers' runs to equal."""
    tmp_path = tmp_path_factory.mktemp("single")
    output = tmp_path / "single"
    run, writes = _run([sys.executable], output, tmp_path, "--per-device-train-batch-size", str(PER_DEVICE * PROCESSES))
    assert run.returncode == 0, run.stderr[-3000:]
    return output, writes


def _assert_one_job(run: subprocess.CompletedProcess, writes: dict, output: Path, single: Path) -> None:
    assert run.returncode == 0, run.stderr[-3000:]
    # one job: one report, one training bar, one batch line with the global batch
    assert run.stdout.count("saved model, processor") == 1 and run.stdout.count("train loss") == 1, run.stdout
    assert f"global batch {PER_DEVICE * PROCESSES} = {PER_DEVICE} per device x {PROCESSES} processes (gloo on cpu)" in (
        run.stdout
    )
    assert run.stderr.count(f"0/{STEPS} [") == 1, run.stderr[-3000:]
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in run.stderr
    # rank 0 writes the folder; rank 1 only its own RNG state into the checkpoint (the Trainer's, for an exact resume)
    assert set(writes) == {"rank0", "rank1"}
    assert {"metrics.json", "config.json", "README.md", "loss_curve.png"} <= set(writes["rank0"]), writes["rank0"]
    checkpoint = f"checkpoint-{STEPS}"
    assert set(writes["rank1"]) <= {checkpoint, f"{checkpoint}/rng_state_1.pth"}, writes["rank1"]
    assert (output / checkpoint / "rng_state_1.pth").is_file()
    assert sorted(p.name for p in output.iterdir()) == sorted(p.name for p in single.iterdir())
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["processes"] == PROCESSES and metrics["global_train_batch_size"] == PER_DEVICE * PROCESSES
    state = json.loads((output / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    assert state["train_batch_size"] == PER_DEVICE and state["global_step"] == STEPS
    # the same training as one process on the global batch: losses and weights
    expected = json.loads((single / "metrics.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in metrics["log_history"] if "loss" in entry]
    assert len(losses) == STEPS
    assert losses == pytest.approx([entry["loss"] for entry in expected if "loss" in entry], abs=1e-4)
    single_weights, weights = load_file(single / "model.safetensors"), load_file(output / "model.safetensors")
    for name in single_weights:
        torch.testing.assert_close(weights[name], single_weights[name], atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_torchrun_without_a_backend_flag_is_one_job(tmp_path, one_process_run):
    single, _ = one_process_run
    output = tmp_path / "torchrun"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(PROCESSES)]
    run, writes = _run(launcher, output, tmp_path, "--per-device-train-batch-size", str(PER_DEVICE))
    _assert_one_job(run, writes, output, single)


@pytest.mark.slow
def test_accelerate_launch_on_the_cpu_is_one_job(tmp_path, one_process_run):
    """accelerate starts several CPU processes with --multi_gpu (its torchrun launcher); --cpu --num_processes N
    starts one process (several only through MPI), which hf-vlp refuses with the working command."""
    single, _ = one_process_run
    output = tmp_path / "accelerate"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(PROCESSES),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    run, writes = _run(launcher, output, tmp_path, "--per-device-train-batch-size", str(PER_DEVICE))
    _assert_one_job(run, writes, output, single)

    refused = tmp_path / "refused"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(PROCESSES),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    run, writes = _run(launcher, refused, tmp_path, "--per-device-train-batch-size", str(PER_DEVICE))
    assert run.returncode != 0
    assert "started this one process only" in run.stderr and "--multi_gpu --num_processes N" in run.stderr
    assert not refused.exists() and writes == {"rank0": []}


def test_launch_defaults_and_the_one_job_check():
    assert launched_processes({}) == 1 and launched_processes({"WORLD_SIZE": "4"}) == 4
    assert launched_processes({"OMPI_COMM_WORLD_SIZE": "3"}) == 3
    assert distributed_defaults({}) == {}
    on_cpu = distributed_defaults({"WORLD_SIZE": "2"})
    if torch.cuda.is_available():
        assert on_cpu == {}  # accelerate picks nccl itself
    else:
        assert on_cpu == {"use_cpu": True, "ddp_backend": "gloo"}

    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")  # one process: no group
    check_one_job(args, {})
    with pytest.raises(ValueError, match="started 2 processes, but they did not form one process group"):
        check_one_job(args, {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    accelerate_cpu = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with pytest.raises(ValueError, match=r"accelerate launch --multi_gpu --num_processes N"):
        check_one_job(args, accelerate_cpu)
    check_one_job(args, {"ACCELERATE_USE_CPU": "True"})  # accelerate launch --cpu of one process
