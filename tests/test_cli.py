import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor

import hf_vlp  # noqa: F401
from hf_vlp.cli import main

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--dataset", "synthetic-shapes:n=512", "--eval-max-samples", "128", "--logging-steps", "1"]


def _cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hf_vlp.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_main_job_learns_and_writes_every_artifact(tmp_path, capsys):
    output = tmp_path / "clip"
    code = main(["train", "clip", "--output-dir", str(output), "--max-steps", "250", "--dataset", "synthetic-shapes:n=4000",
                 "--eval-max-samples", "480"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "zero_shot_top1" in printed and "before" in printed and "after" in printed
    metrics = json.loads((output / "metrics.json").read_text())
    after, before = metrics["after"], metrics["before"]
    assert after["zero_shot_top1"] >= 3 * after["zero_shot_chance_top1"], after
    assert after["retrieval_mean_recall"] > 3 * before["retrieval_mean_recall"]
    for name in ("model.safetensors", "config.json", "processor_config.json", "README.md", "loss_curve.png", "metrics.png"):
        assert (output / name).is_file(), name
    card = ModelCard.load(output / "README.md")
    assert "zero_shot_top1" in card.text and card.data.eval_results
    model = AutoModel.from_pretrained(output)
    processor = AutoProcessor.from_pretrained(output)
    assert type(model).__name__ == "VlpClipModel" and type(processor).__name__ == "VlpClipProcessor"
    assert model.logit_scale.item() <= torch.log(torch.tensor(100.0)).item() + 1e-6

    code = main(["evaluate", str(output), "--dataset", "synthetic-shapes:n=4000", "--eval-max-samples", "480"])
    assert code == 0
    evaluated = capsys.readouterr().out
    top1_line = next(line for line in evaluated.splitlines() if line.startswith("zero_shot_top1 "))
    assert f"{100 * after['zero_shot_top1']:.2f}%" in top1_line


def test_trainer_arguments_pass_through_and_resume_is_exact(tmp_path):
    common = ["train", "clip", *SMALL, "--skip-eval", "--per-device-train-batch-size", "8", "--max-steps", "8",
              "--save-steps", "4", "--gradient-accumulation-steps", "2"]
    straight = tmp_path / "straight"
    assert _cli(*common, "--output-dir", str(straight)).returncode == 0

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, "-m", "hf_vlp.cli", *common, "--output-dir", str(interrupted)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    checkpoint = interrupted / "checkpoint-4" / ".complete"  # written once the whole checkpoint is on disk
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists()
    for late in ("checkpoint-8", "model.safetensors"):  # the kill may have come after the run finished
        path = interrupted / late
        if path.is_dir():
            import shutil

            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    resumed = _cli(*common, "--output-dir", str(interrupted), "--resume-from-checkpoint", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = load_file(straight / "model.safetensors"), load_file(interrupted / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    state = json.loads((straight / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and len([e for e in state["log_history"] if "loss" in e]) == 8


def test_bad_input_gets_one_clear_line(tmp_path):
    unknown = _cli("train", "vilbert")
    assert unknown.returncode == 2 and "available" in unknown.stderr and "clip" in unknown.stderr
    missing = _cli("train", "clip", "--dataset", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "o"))
    assert missing.returncode == 1
    assert "hf-vlp: error:" in missing.stderr and "nowhere" in missing.stderr and "Traceback" not in missing.stderr
    no_checkpoint = _cli("train", "clip", *SMALL, "--output-dir", str(tmp_path / "empty"), "--resume-from-checkpoint", "last",
                         "--skip-eval")
    assert no_checkpoint.returncode == 1 and "no checkpoint" in no_checkpoint.stderr
    assert _cli("--help").returncode == 0


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    common = ["train", "clip", *SMALL, "--skip-eval", "--max-steps", "3", "--save-strategy", "no",
              "--use-cpu", "--seed", "1"]
    single = tmp_path / "single"
    one = _cli(*common, "--per-device-train-batch-size", "16", "--output-dir", str(single))
    assert one.returncode == 0, one.stderr[-3000:]
    double = tmp_path / "double"
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hf_vlp.cli",
         *common, "--per-device-train-batch-size", "8", "--output-dir", str(double)],  # no --ddp-backend: gloo on CPU
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert two.returncode == 0, two.stderr[-3000:]
    expected, got = load_file(single / "model.safetensors"), load_file(double / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=2e-5, rtol=1e-4, msg=name)
    losses = [json.loads((d / "metrics.json").read_text())["log_history"] for d in (single, double)]
    single_losses = [e["loss"] for e in losses[0] if "loss" in e]
    double_losses = [e["loss"] for e in losses[1] if "loss" in e]
    assert single_losses == pytest.approx(double_losses, abs=1e-4)


def test_train_help_lists_every_task_and_explains_every_job_flag(capsys):
    from dataclasses import fields

    from hf_vlp.training.job import JobArguments
    from hf_vlp.training.tasks import architectures, task_names

    assert main(["train", "--help"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    for architecture in architectures():
        assert f"{architecture}: {', '.join(task_names(architecture))}" in printed, architecture
    for field in fields(JobArguments):
        text = " ".join(field.metadata.get("help", "").split())
        assert text, f"--{field.name.replace('_', '-')} has no help text"
        # (argparse wraps at hyphens too: compare without whitespace; --task's help names the tasks themselves)
        assert text.replace(" ", "") in printed.replace(" ", "") or field.name == "task", field.name
    assert "--task TASK the task to train; each architecture's tasks are listed above" in printed
    assert "torchrun --nproc_per_node N" in printed
    with pytest.raises(SystemExit) as done:
        main(["train", "blip", "--help"])
    assert done.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "blip's task, one of: pretrain, retrieval, caption, vqa, nlvr2 (default: pretrain)" in printed
    assert "--per-device-train-batch-size" in printed  # the TrainingArguments flags too
    assert main(["train"]) == 2 and "hf-vlp train --help" in capsys.readouterr().err


def test_report_prints_fractions_as_percentages_and_cider_as_a_number(tmp_path, capsys):
    from hf_vlp.training.data import BadSampleCounter
    from hf_vlp.evaluation.report import format_metrics_table
    from hf_vlp.training.runner import print_report

    table = format_metrics_table({"before": {"Bleu_4": 0.25, "CIDEr": 0.0874}, "after": {"Bleu_4": 0.5, "CIDEr": 3.4549}})
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:]}
    assert rows == {"Bleu_4": ["25.00%", "50.00%"], "CIDEr": ["0.0874", "3.4549"]}
    recalls = {"r10": 0.3, "r5": 0.2, "r1": 0.1, "mean_recall": 0.2}
    assert [line.split()[0] for line in format_metrics_table({"after": recalls}).splitlines()[2:]] == [
        "mean_recall", "r1", "r5", "r10"
    ]
    print_report({"before": {"CIDEr": 1.5}, "after": {"CIDEr": 3.4549, "accuracy": 0.75}}, tmp_path, BadSampleCounter())
    printed = capsys.readouterr().out
    assert "3.4549" in printed and "345.49%" not in printed and "75.00%" in printed


def test_a_run_prints_one_bar_and_no_library_noise(tmp_path):
    """One training bar; no nested save/load bars, pin-memory warning or special-token rewrite; one truncation
    warning for captions longer than the context, however many batches cut them."""
    folder = tmp_path / "data"
    names = _write_images(folder, 12)
    long_caption = " ".join(["a long caption about a shade of grey"] * 8)
    (folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": name, "caption": f"{long_caption} {i}"}) + "\n" for i, name in enumerate(names))
    )
    output = tmp_path / "out"
    run = _cli("train", "clip", "--dataset", str(folder), "--eval-split", "train", "--eval-max-samples", "8",
               "--max-steps", "2", "--save-steps", "1", "--per-device-train-batch-size", "4", "--output-dir", str(output))
    assert run.returncode == 0, run.stderr[-3000:]
    evaluated = _cli("evaluate", str(output), "--dataset", str(folder), "--eval-split", "train", "--eval-max-samples", "8")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    for noise in ("Writing model shards", "Loading weights", "pin_memory", "PAD/BOS/EOS"):
        assert noise not in run.stderr and noise not in evaluated.stderr, noise
    assert run.stderr.count("0/2 [") == 1, run.stderr  # the training bar, once
    # one bar per evaluation, counting its batches
    for description in ("evaluating before training: 0 batches", "evaluating after training: 0 batches"):
        assert run.stderr.count(description) == 1, run.stderr
    assert evaluated.stderr.count(f"evaluating {output}: 0 batches") == 1, evaluated.stderr
    counted = [int(n) for n in re.findall(r"evaluating after training: (\d+) batches", run.stderr)]
    assert counted[-1] >= 2, run.stderr  # the bar closes on the number of batches it counted (images, then texts)
    # recall@K rows in the order of K
    rows = [line.split()[0] for line in evaluated.stdout.splitlines() if line.startswith("retrieval_i2t_r")]
    assert rows == ["retrieval_i2t_r1", "retrieval_i2t_r5", "retrieval_i2t_r10"], evaluated.stdout
    assert (run.stdout + run.stderr).count("truncated") == 1, run.stderr
    assert "global batch 4 = 4 per device" in run.stdout
    # tokenizer, processor and config pad alike, so the Trainer rewrote nothing
    config = json.loads((output / "config.json").read_text())["text_config"]
    processor = AutoProcessor.from_pretrained(output)
    assert config["pad_token_id"] == processor.pad_token_id == processor.tokenizer.pad_token_id
    assert config["eos_token_id"] == processor.tokenizer.eos_token_id


def _write_images(folder: Path, count: int) -> list[str]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        name = f"img{index}.png"
        Image.fromarray(np.full((40, 40, 3), (index * 37) % 255, dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def test_training_on_an_imagefolder_skips_and_reports_bad_samples(tmp_path):
    folder = tmp_path / "data"
    names = _write_images(folder, 12)
    (folder / "img3.png").write_bytes(b"not a png")
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "caption": f"shade {i}"}) + "\n" for i, n in enumerate(names)))
    output = tmp_path / "out"
    args = ["train", "clip", "--dataset", str(folder), "--eval-split", "train", "--max-steps", "2",
            "--per-device-train-batch-size", "4", "--output-dir", str(output), "--save-strategy", "no"]
    failed = _cli(*args)
    assert failed.returncode == 1 and "img3.png" in failed.stderr and "--skip-bad-samples" in failed.stderr
    skipped = _cli(*args, "--skip-bad-samples")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert "Skipped" in skipped.stdout and "img3.png" in skipped.stdout
    assert json.loads((output / "metrics.json").read_text())["bad_samples"] >= 1


def test_training_streams_webdataset_shards(tmp_path):
    import io
    import tarfile

    images = _write_images(tmp_path / "raw", 16)
    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard}.tar", "w") as archive:
            for index in range(shard * 8, shard * 8 + 8):
                for suffix, payload in (("png", (tmp_path / "raw" / images[index]).read_bytes()), ("txt", f"shade {index}".encode())):
                    info = tarfile.TarInfo(f"sample{index:03d}.{suffix}")
                    info.size = len(payload)
                    archive.addfile(info, io.BytesIO(payload))
    output = tmp_path / "out"
    run = _cli("train", "clip", "--dataset", str(tmp_path / "shard-{0..1}.tar"), "--eval-split", "train",
               "--eval-max-samples", "8", "--max-steps", "2", "--per-device-train-batch-size", "4",
               "--output-dir", str(output), "--save-strategy", "no")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["train"]["train_loss"] > 0 and "retrieval_i2t_r1" in metrics["after"]


def test_fine_tuning_a_converted_model_and_training_a_released_size(tmp_path):
    from conversion.convert_clip import convert_clip_checkpoint

    fixture = ROOT / "tests" / "fixtures" / "originals" / "clip_vit"
    converted = tmp_path / "converted"
    convert_clip_checkpoint(fixture / "checkpoint.pt", output=converted,
                            original_config=json.loads((fixture / "original_config.json").read_text()),
                            tokenizer=fixture / "bpe_simple_vocab_truncated.txt.gz")
    tuned = tmp_path / "tuned"
    run = _cli("train", "clip", "--from-pretrained", str(converted), *SMALL, "--max-steps", "2",
               "--per-device-train-batch-size", "4", "--output-dir", str(tuned), "--save-strategy", "no")
    assert run.returncode == 0, run.stderr[-3000:]
    for noise in ("PAD/BOS/EOS", "Loading weights", "Writing model shards"):
        assert noise not in run.stderr, noise
    before, after = load_file(converted / "model.safetensors"), load_file(tuned / "model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads((tuned / "config.json").read_text())["vision_config"]["image_size"] == 32

    released = tmp_path / "b32"
    run = _cli("train", "clip", "--preset", "ViT-B/32", *SMALL, "--skip-eval", "--max-steps", "1",
               "--per-device-train-batch-size", "2", "--output-dir", str(released), "--save-strategy", "no")
    assert run.returncode == 0, run.stderr[-3000:]
    config = json.loads((released / "config.json").read_text())
    assert config["vision_config"]["hidden_size"] == 768 and config["vision_config"]["patch_size"] == 32


def test_albef_task_and_tower_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "albef", "--task", "caption"]) == 2
    assert "albef has no task 'caption'; its tasks are: pretrain, retrieval, vqa, nlvr2, snli-ve" in capsys.readouterr().err
    assert main(["train", "albef", "--vision-init", str(tmp_path)]) == 2
    assert "--vision-init was given without --text-init" in capsys.readouterr().err
    assert main(["train", "albef", "--vision-init", "a", "--text-init", "b", "--from-pretrained", "c"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 1
    assert "config.json" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "albef: pretrain, retrieval, vqa, nlvr2, snli-ve" in capsys.readouterr().out


def test_albef_from_transformers_towers_on_the_command_line(tmp_path, capsys):
    from transformers import BertConfig, BertForMaskedLM, ViTConfig, ViTModel

    from hf_vlp.training.tokenizers import synthetic_wordpiece_tokenizer

    tokenizer = synthetic_wordpiece_tokenizer()
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                       patch_size=16)).save_pretrained(tmp_path / "vit")
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=40)).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    output = tmp_path / "ve"
    data = ["--dataset", "synthetic-shapes:n=24", "--eval-max-samples", "12"]
    code = main(["train", "albef", "--task", "snli-ve", "--vision-init", str(tmp_path / "vit"), "--text-init",
                 str(tmp_path / "bert"), *data, "--max-steps", "2", "--per-device-train-batch-size", "8",
                 "--output-dir", str(output), "--save-strategy", "no", "--disable-tqdm", "true"])
    assert code == 0
    assert "accuracy_neutral" in capsys.readouterr().out
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["task"] == "snli-ve" and json.loads((output / "config.json").read_text())["architectures"] == [
        "VlpAlbefForVisualEntailment"
    ]
    assert main(["evaluate", str(output), *data]) == 0  # the task comes from the saved model's class
    printed = capsys.readouterr().out
    assert f"{100 * metrics['after']['accuracy']:.2f}%" in next(line for line in printed.splitlines() if line.startswith("accuracy "))
