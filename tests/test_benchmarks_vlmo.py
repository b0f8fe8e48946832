"""``benchmarks/bench_vlmo.py`` runs end to end in ``--smoke`` mode: the fp32 retrieval checks pass, the two retrieval
ratios and the pre-training ratio are printed with positive values, the JSON is written (no timing assertion); plus
its argument checks and the gallery extrapolation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from benchmarks.bench_vlmo import gallery_seconds, main, parse_args, rerank_pairs

RATIO = r" = (?P<value>\d+\.\d+) \(per-round IQR"
FUSION_LINE = re.compile(r"^ratio smoke retrieval 4x20 attn-sdpa fusion/dual gallery time" + RATIO, re.M)
RERANK_LINE = re.compile(r"^ratio smoke retrieval 4x20 attn-sdpa k=4 rerank/dual gallery time" + RATIO, re.M)
PRETRAIN_LINE = re.compile(r"^ratio smoke pretrain attn-sdpa vlmo/albef samples/s" + RATIO, re.M)


@pytest.mark.slow
def test_bench_vlmo_smoke(tmp_path: Path, capsys) -> None:
    json_path = tmp_path / "vlmo.json"
    threads = torch.get_num_threads()
    try:  # in-process; --threads changes the process-wide setting
        payload = main(["--smoke", "--threads", "1", "--json", str(json_path)])
    finally:
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    lines = [pattern.search(stdout) for pattern in (FUSION_LINE, RERANK_LINE, PRETRAIN_LINE)]
    assert all(lines), stdout
    assert all(float(line["value"]) > 0 for line in lines), stdout
    assert "[smoke] fp32 retrieval checks pass" in stdout and "extrapolated: never run in full" in stdout

    written = json.loads(json_path.read_text())
    assert written["benchmark"] == "bench_vlmo" and written["machine"]["device"] == "cpu"
    (retrieval,) = payload["retrieval"]
    assert retrieval["fused_pairs_gallery"] == 4 * 20 and retrieval["fused_pairs_rerank"] == 4 * 4 + 20 * 4
    assert all(value < 1e-4 for value in retrieval["max_difference_fp32"].values())
    assert retrieval["full_dual_seconds_measured"] > 0 and len(retrieval["raw_seconds"]["fused_pairs"]) == 1
    (pretrain,) = written["pretrain"]
    assert set(pretrain["samples_per_second"]) == {"vlmo", "albef"} and pretrain["batch"] == 2
    assert pretrain["ratio_samples_per_second_vlmo_over_albef"]["median"] > 0
    assert all(torch.isfinite(torch.tensor(list(pretrain["final_loss"].values()))))


def test_parse_args_defaults_and_errors() -> None:
    cpu = parse_args([])
    assert (cpu.preset, cpu.batch, cpu.rounds, cpu.text_length) == ("base", 2, 3, 40)
    assert cpu.parts == ["retrieval", "pretrain"] and (cpu.images, cpu.texts, cpu.k) == (1000, 5000, 16)
    assert (cpu.eval_batch, cpu.fusion_batch, cpu.full_dual) == (4, 4, False)
    smoke = parse_args(["--smoke"])
    assert (smoke.preset, smoke.batch, smoke.rounds, smoke.warmup) == ("smoke", 2, 1, 0)
    assert (smoke.images, smoke.texts, smoke.text_length, smoke.full_dual) == (4, 20, 16, True)
    assert parse_args(["--parts", "retrieval", "--preset", "large"]).preset == "large"
    for bad in (
        ["--batch", "1"],  # ITM needs another pair in the batch
        ["--batch", "3"],  # ALBEF's 65,536-entry queue is not a multiple of 3
        ["--preset", "large"],  # no ALBEF of width 1024 to pre-train against
        ["--text-length", "41"],  # past VLMo's max_text_length
        ["--parts", "retrieval", "--fusion-batch", "0"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_gallery_seconds_scale_per_item_costs_by_the_gallery() -> None:
    counts = ["--images", "10", "--texts", "50", "--k", "4", "--eval-batch", "8", "--fusion-batch", "8"]
    args = parse_args(["--parts", "retrieval", *counts])
    times = {  # two rounds; chunks of 8 items / 8 pairs
        "encode_images": [0.8, 1.6], "encode_texts": [0.4, 0.4], "similarity": [0.5, 0.5],
        "fused_pairs": [1.6, 0.8], "rerank_bookkeeping": [0.25, 0.25],
    }
    gallery = gallery_seconds(times, args)
    assert gallery["dual"] == pytest.approx([10 * 0.1 + 50 * 0.05 + 0.5, 10 * 0.2 + 50 * 0.05 + 0.5])
    assert gallery["fusion"] == pytest.approx([500 * 0.2, 500 * 0.1])
    assert rerank_pairs(10, 50, 4) == 10 * 4 + 50 * 4
    assert gallery["rerank"] == pytest.approx([4.0 + 0.25 + 240 * 0.2, 5.0 + 0.25 + 240 * 0.1])
