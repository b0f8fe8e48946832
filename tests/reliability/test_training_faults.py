"""Fault injection for ``hf-vlp train`` / ``hf-vlp evaluate`` (issue 11): interrupted checkpoint saves, re-used output
folders, truncated shards and files, datasets too small for a batch, short batches with momentum queues, bad input
that used to end in a traceback, and bad samples counted across epochs and DataLoader workers.

Each test is named after the item it covers. Runs are tiny and in-process (``hf_vlp.cli.main``) except the one that
kills a training process with SIGKILL in the middle of a checkpoint save.
"""

import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hf_vlp.cli import main
from hf_vlp.training.data import BadSampleCounter, load_image_text_dataset

ROOT = Path(__file__).resolve().parents[2]
COMPLETE_MARKER = ".complete"  # hf_vlp.training.checkpoints.COMPLETE_MARKER, written last into a saved checkpoint
QUIET = ["--skip-eval", "--disable-tqdm", "true", "--report-to", "none"]
# 64 rows, batches of 8, checkpoints every 2 steps: a run of 4 steps leaves checkpoint-2 and checkpoint-4
CLIP_RUN = ["train", "clip", "--dataset", "synthetic-shapes:n=64", "--per-device-train-batch-size", "8",
            "--save-steps", "2", "--logging-steps", "1", *QUIET]


def _error_line(capsys) -> str:
    """The single ``hf-vlp`` error line printed (asserting there is exactly one and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hf-vlp")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory) -> Path:
    """A finished 4-step CLIP run with complete checkpoint-2 and checkpoint-4 (copy it before damaging it)."""
    output = tmp_path_factory.mktemp("clip-run") / "run"
    assert main([*CLIP_RUN, "--max-steps", "4", "--output-dir", str(output)]) == 0
    assert (output / "checkpoint-2" / COMPLETE_MARKER).is_file() and (output / "checkpoint-4" / COMPLETE_MARKER).is_file()
    return output


def _copy(run: Path, tmp_path: Path, name: str = "run") -> Path:
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


def _png(value: int, size: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------- 2: incomplete checkpoints and resume


def _fake_checkpoint(folder: Path, step: int, complete: bool) -> Path:
    from hf_vlp.training.checkpoints import mark_complete

    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(4)}, checkpoint / "model.safetensors")
    torch.save({"state": {}}, checkpoint / "optimizer.pt")
    if complete:
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        mark_complete(checkpoint, step)
    return checkpoint


def test_item2_resume_last_skips_incomplete_checkpoints_with_a_warning(tmp_path, caplog):
    from hf_vlp.training.checkpoints import resolve_resume_checkpoint

    output = tmp_path / "out"
    intact = _fake_checkpoint(output, 2, complete=True)
    _fake_checkpoint(output, 4, complete=False)  # killed after the weights: no trainer_state.json, no marker
    rewritten = _fake_checkpoint(output, 6, complete=True)
    os.truncate(rewritten / "optimizer.pt", 10)  # a later full disk / damage: sizes no longer match the marker
    with caplog.at_level(logging.WARNING):
        assert resolve_resume_checkpoint("last", str(output)) == str(intact)
    warned = caplog.text
    assert "checkpoint-4" in warned and "no .complete marker" in warned
    assert "checkpoint-6" in warned and "optimizer.pt" in warned and "resuming from" in warned

    # folders written before the marker existed are judged by their files: trainer_state.json is written last
    legacy = tmp_path / "legacy"
    old = _fake_checkpoint(legacy, 2, complete=True)
    (old / COMPLETE_MARKER).unlink()
    _fake_checkpoint(legacy, 4, complete=False)
    assert resolve_resume_checkpoint("last", str(legacy)) == str(old)

    nothing = tmp_path / "nothing"
    _fake_checkpoint(nothing, 4, complete=False)
    with pytest.raises(ValueError, match=r"no complete checkpoint in .*checkpoint-4"):
        resolve_resume_checkpoint("last", str(nothing))


_KILL_DURING_SAVE = """
import os, signal, sys
import torch
save = torch.save
def killing_save(obj, f, *args, **kwargs):
    save(obj, f, *args, **kwargs)
    if str(f).endswith(os.path.join("checkpoint-4", "optimizer.pt")):  # half the file is on disk: kill -9 now
        data = open(f, "rb").read()
        open(f, "wb").write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = killing_save
from hf_vlp.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_item2_kill_9_during_a_checkpoint_save_then_resume_last_uses_the_intact_one(tmp_path, capsys, caplog):
    arguments = [*CLIP_RUN, "--max-steps", "6"]
    killed = tmp_path / "killed"
    process = subprocess.run(
        [sys.executable, "-c", _KILL_DURING_SAVE, *arguments, "--output-dir", str(killed)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    half_saved = killed / "checkpoint-4"
    assert (half_saved / "model.safetensors").is_file() and not (half_saved / COMPLETE_MARKER).exists()
    assert not (half_saved / "trainer_state.json").exists()

    with caplog.at_level(logging.WARNING):
        assert main([*arguments, "--output-dir", str(killed), "--resume-from-checkpoint", "last"]) == 0
    assert "skipping the incomplete" in caplog.text and str(half_saved) in caplog.text
    assert f"resuming from {killed / 'checkpoint-2'}" in caplog.text
    assert (half_saved / COMPLETE_MARKER).is_file()  # saved again, whole, by the resumed run
    history = json.loads((killed / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "loss" in entry] == [1, 2, 3, 4, 5, 6]  # 1-2 come from checkpoint-2


# ------------------------------------------------------------------------------ 4: re-used output folders


def test_item4_a_non_empty_output_folder_is_refused_and_a_finished_resume_warns(clip_run, tmp_path, capsys, caplog):
    output = _copy(clip_run, tmp_path)
    before = load_file(output / "model.safetensors")
    assert main([*CLIP_RUN, "--max-steps", "2", "--output-dir", str(output)]) == 1
    line = _error_line(capsys)
    assert str(output) in line and "--overwrite-output-dir" in line and "--resume-from-checkpoint" in line
    after = load_file(output / "model.safetensors")
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert (output / "checkpoint-2").is_dir() and (output / "checkpoint-4").is_dir()

    with caplog.at_level(logging.WARNING):
        assert main([*CLIP_RUN, "--max-steps", "4", "--output-dir", str(output), "--resume-from-checkpoint", "last"]) == 0
    assert "checkpoint-4 is at step 4, already >= the run's 4 steps" in caplog.text

    assert main([*CLIP_RUN, "--max-steps", "1", "--save-strategy", "no", "--output-dir", str(output),
                 "--overwrite-output-dir"]) == 0
    assert not list(output.glob("checkpoint-*"))  # the earlier run's checkpoints cannot be resumed by mistake


# ------------------------------------------------------------------------------- 5: truncated shards


def _shard(path: Path, count: int) -> None:
    with tarfile.open(path, "w") as archive:
        for index in range(count):
            for suffix, payload in (("png", _png(index * 7)), ("txt", f"shade {index}".encode())):
                info = tarfile.TarInfo(f"s{index:03d}.{suffix}")
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))


def test_item5_a_truncated_webdataset_shard_is_an_error_or_a_counted_skip(tmp_path):
    _shard(tmp_path / "good.tar", 8)
    _shard(tmp_path / "full.tar", 32)
    data = (tmp_path / "full.tar").read_bytes()
    with tarfile.open(tmp_path / "full.tar") as archive:
        members = archive.getmembers()
    # cut before sample 18 (at a member boundary: datasets silently read 18 samples) or inside its caption
    cuts = {"boundary": (members[36].offset, 18), "inside": (members[37].offset_data + 5, 19)}
    for name, (cut, lost) in cuts.items():
        shard = tmp_path / f"cut-{name}.tar"
        shard.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"shard '.*cut-{name}\.tar' is truncated.*--skip-bad-samples"):
            load_image_text_dataset(str(shard))
        counter = BadSampleCounter()
        spec = str(tmp_path / f"{{good,cut-{name}}}.tar")
        rows = list(load_image_text_dataset(spec, skip_bad_samples=True, bad_samples=counter))
        assert len(rows) == 8 and counter.count == lost  # the cut shard is left out, its samples counted
        assert f"cut-{name}.tar" in counter.summary()


# --------------------------------------------------------------------------- 6: smaller than one batch


def test_item6_a_dataset_smaller_than_one_batch_is_an_error(tmp_path, capsys):
    common = ["train", "clip", "--per-device-train-batch-size", "8", "--max-steps", "2", "--save-strategy", "no", *QUIET]
    assert main([*common, "--dataset", "synthetic-shapes:n=4", "--output-dir", str(tmp_path / "a")]) == 1
    line = _error_line(capsys)
    assert "has 4 sample(s)" in line and "one batch of 8" in line and "--per-device-train-batch-size" in line
    assert not (tmp_path / "a" / "model.safetensors").exists()


# ------------------------------------------------------------------ 8: short last batch and momentum queues


def test_item8_drop_last_false_with_momentum_queues_is_refused_at_train_begin(tmp_path, capsys):
    # synthetic-shapes:n=4 gives 20 pre-training rows: batches of 8 leave a last batch of 4
    arguments = ["train", "albef", "--task", "pretrain", "--dataset", "synthetic-shapes:n=4",
                 "--per-device-train-batch-size", "8", "--num-train-epochs", "2", "--max-steps", "-1",
                 "--save-strategy", "no", "--dataloader-drop-last", "false", *QUIET]
    assert main([*arguments, "--output-dir", str(tmp_path / "short")]) == 1
    line = _error_line(capsys)
    assert "--dataloader-drop-last" in line and "20 training samples" in line and "batch of 4" in line
    assert "image_queue (64)" in line and not (tmp_path / "short" / "model.safetensors").exists()


# ------------------------------------------------------------------------------- 10: one-line errors


def test_item10_queue_size_truncated_files_and_wrong_model_type_are_one_line_errors(clip_run, tmp_path, capsys):
    assert main(["train", "albef", "--task", "pretrain", "--queue-size", "0", "--output-dir", str(tmp_path / "q")]) == 2
    assert "--queue-size must be a positive" in capsys.readouterr().err

    saved = _copy(clip_run, tmp_path, "saved")
    evaluate = ["--dataset", "synthetic-shapes:n=16", "--eval-max-samples", "8"]
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    assert main(["evaluate", str(saved), *evaluate]) == 1
    assert "model_type 'bert'" in _error_line(capsys)
    (saved / "config.json").write_text(json.dumps(config))
    os.truncate(saved / "model.safetensors", 5000)
    assert main(["evaluate", str(saved), *evaluate]) == 1
    assert "model.safetensors is truncated" in _error_line(capsys)

    for name in ("model.safetensors", "optimizer.pt"):
        output = _copy(clip_run, tmp_path, name)
        os.truncate(output / "checkpoint-4" / name, 3000)
        checkpoint = output / "checkpoint-4"
        assert main([*CLIP_RUN, "--max-steps", "6", "--output-dir", str(output), "--resume-from-checkpoint",
                     str(checkpoint)]) == 1
        line = _error_line(capsys)
        assert f"{checkpoint / name} is truncated" in line
        assert f"earlier checkpoint {output / 'checkpoint-2'} is intact" in line


# ------------------------------------------------------------------------ 11: messages that name the cause


def test_item11_non_utf8_tables_truncated_rng_state_and_foreign_checkpoints_are_named(clip_run, tmp_path, capsys):
    common = ["--per-device-train-batch-size", "2", "--max-steps", "1", "--save-strategy", "no", *QUIET]
    table = tmp_path / "table"
    table.mkdir()
    (table / "a.png").write_bytes(_png(10))
    (table / "captions.csv").write_bytes("file_name,caption\na.png,a red square\na.png,caf\xe9 noir\n".encode("latin-1"))
    assert main(["train", "clip", "--dataset", str(table), *common, "--output-dir", str(tmp_path / "o1")]) == 1
    line = _error_line(capsys)
    assert str(table / "captions.csv") in line and "line 3" in line and "UTF-8" in line
    folder = tmp_path / "imagefolder"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png(10))
    (folder / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "caption": "caf\xe9"}\n')
    assert main(["train", "clip", "--dataset", str(folder), *common, "--output-dir", str(tmp_path / "o2")]) == 1
    line = _error_line(capsys)
    assert str(folder / "metadata.jsonl") in line and "line 1" in line

    output = _copy(clip_run, tmp_path, "rng")
    os.truncate(output / "checkpoint-4" / "rng_state.pth", 0)
    checkpoint = output / "checkpoint-4"
    assert main([*CLIP_RUN, "--max-steps", "6", "--output-dir", str(output), "--resume-from-checkpoint",
                 str(checkpoint)]) == 1
    line = _error_line(capsys)
    assert "rng_state.pth is truncated" in line and "Errno" not in line

    output = _copy(clip_run, tmp_path, "foreign")
    assert main(["train", "albef", "--task", "pretrain", "--dataset", "synthetic-shapes:n=8", *common,
                 "--output-dir", str(output), "--resume-from-checkpoint", "last"]) == 1
    line = _error_line(capsys)
    assert "another architecture (VlpClipModel" in line and "VlpAlbefForPretraining" in line


# ---------------------------------------------------------------- 13: bad samples across epochs and workers


@pytest.mark.parametrize("workers", [0, 2])
def test_item13_bad_samples_are_counted_once_across_epochs_and_workers(tmp_path, capsys, workers):
    table = tmp_path / "table"
    table.mkdir()
    rows = ["file_name,caption"]
    for index in range(8):
        (table / f"img{index}.png").write_bytes(b"not a png" if index == 3 else _png(index * 30))
        rows.append(f"img{index}.png,shade {index}")
    (table / "captions.csv").write_text("\n".join(rows) + "\n")
    output = tmp_path / "out"
    assert main(["train", "clip", "--dataset", str(table), "--skip-bad-samples", "--per-device-train-batch-size", "4",
                 "--num-train-epochs", "3", "--max-steps", "-1", "--save-strategy", "no",
                 "--dataloader-num-workers", str(workers), "--output-dir", str(output), *QUIET]) == 0
    assert "Skipped 1 bad sample(s)" in capsys.readouterr().out
    assert json.loads((output / "metrics.json").read_text())["bad_samples"] == 1
