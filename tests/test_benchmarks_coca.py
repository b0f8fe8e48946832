"""``benchmarks/bench_coca.py`` runs end to end in ``--smoke`` mode: greedy and beam caption ids equal to open_clip's
(fp32), the fp32 training losses agree, a throughput ratio per comparison, JSON written (no timing assertion); plus its
argument checks and the open_clip ``generate`` patch being undone."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from benchmarks.bench_coca import BEAM_PEER, GREEDY_PEER, main, open_clip_generate_enabled, parse_args

RATIO = r" = (?P<value>\d+\.\d+) \(per-round IQR"
LINES = {
    "greedy": re.compile(r"^ratio smoke caption-greedy ours-sdpa hf_vlp/open_clip images/s" + RATIO, re.M),
    "beam": re.compile(r"^ratio smoke caption-beam3 ours-sdpa hf_vlp/open_clip_uncached_beam images/s" + RATIO, re.M),
    "train": re.compile(r"^ratio smoke train ours-sdpa hf_vlp/open_clip samples/s" + RATIO, re.M),
}


@pytest.mark.slow
def test_bench_coca_smoke(tmp_path: Path, capsys) -> None:
    json_path = tmp_path / "coca.json"
    threads = torch.get_num_threads()
    try:  # in-process (no second import of torch/transformers); --threads changes the process-wide setting
        payload = main(["--smoke", "--threads", "1", "--json", str(json_path)])
    finally:
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    matches = {name: pattern.search(stdout) for name, pattern in LINES.items()}
    assert all(matches.values()) and all(float(match["value"]) > 0 for match in matches.values()), stdout
    assert "[smoke] fp32 greedy caption ids equal (ours sdpa): (2, 12)" in stdout
    assert "[smoke] fp32 beam3 caption ids equal (ours sdpa): (2, 12)" in stdout

    written = json.loads(json_path.read_text())
    assert written["benchmark"] == "bench_coca" and written["machine"]["device"] == "cpu"
    assert "open_clip" in written["machine"] and "_has_transformers" in written["open_clip_generate_patch"]
    greedy, beam = payload["caption"]
    assert (greedy["decoding"], greedy["peer"], beam["decoding"], beam["peer"]) == (
        "greedy", GREEDY_PEER, "beam", BEAM_PEER
    )
    assert greedy["settings"] == {"num_beams": 1, "do_sample": False, "max_length": 12, "min_length": 5,
                                  "open_clip_seq_len": 12, "open_clip_min_seq_len": 5}
    assert beam["settings"]["num_beams"] == 3 and beam["ours_beam_scoring"] == "transformers"
    for result in (greedy, beam):
        assert result["ids_equal_fp32"] and result["ids_equal_in_timed_dtype"] and result["generated_shape"] == [2, 12]
        assert all(rate > 0 for rate in result["images_per_second"].values())
        assert set(result["images_per_second"]) == {"hf_vlp", result["peer"]}

    (train,) = written["train"]
    assert train["batch"] == 2 and train["text_length"] == 76
    initial = train["initial_losses_fp32"]
    for term in ("contrastive_loss", "caption_loss"):
        assert abs(initial["hf_vlp"][term] - initial["open_clip"][term]) < 1e-4
    assert set(train["samples_per_second"]) == {"hf_vlp", "open_clip"}
    assert all(math.isfinite(loss) for loss in train["final_loss"].values())


def test_parse_args_defaults_and_errors() -> None:
    cpu = parse_args([])
    assert (cpu.preset, cpu.batch, cpu.train_batch, cpu.rounds, cpu.warmup, cpu.dtype) == (
        "coca_ViT-B-32", 2, 4, 3, 1, "fp32"
    )
    assert (cpu.seq_len, cpu.min_len, cpu.beams, cpu.parts, cpu.decoding) == (
        30, 5, 3, ["caption", "train"], ["greedy", "beam"]
    )
    cuda = parse_args(["--device", "cuda"])  # parsing only: no GPU needed
    assert (cuda.batch, cuda.train_batch, cuda.rounds, cuda.warmup, cuda.dtype) == (32, 128, 10, 2, "bf16")
    assert parse_args(["--device", "cuda", "--dtype", "fp32", "--batch", "8"]).batch == 8
    smoke = parse_args(["--smoke"])
    assert (smoke.preset, smoke.batch, smoke.train_batch, smoke.rounds, smoke.warmup, smoke.seq_len) == (
        "smoke", 2, 2, 1, 0, 12
    )
    for bad in (
        ["--beams", "1"],  # greedy is its own comparison
        ["--seq-len", "5"],  # open_clip asserts seq_len > min_seq_len
        ["--seq-len", "77"],  # past the 76-token context
        ["--train-batch", "1"],  # a contrastive batch needs two pairs
        ["--preset", "coca_ViT-L-14"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_open_clip_generate_patch_is_undone() -> None:
    from open_clip import coca_model

    before = coca_model._has_transformers, coca_model.GENERATION_TYPES["top_k"]
    with open_clip_generate_enabled():
        assert coca_model._has_transformers and coca_model.GENERATION_TYPES["top_k"] is not None
    assert (coca_model._has_transformers, coca_model.GENERATION_TYPES["top_k"]) == before
