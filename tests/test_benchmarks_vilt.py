"""``benchmarks/bench_vilt.py`` runs end to end in ``--smoke`` mode: logits agree, a throughput ratio per attention
kernel, JSON written (no timing assertion); plus its argument checks and inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from benchmarks.bench_vilt import TEXT_LENGTH, main, parse_args, random_batch

RATIO_LINE = re.compile(
    r"^ratio smoke vqa ours-(?P<kernel>\w+) hf_vlp/transformers samples/s = (?P<value>\d+\.\d+) \(", re.M
)


@pytest.mark.slow
def test_bench_vilt_smoke(tmp_path: Path, capsys) -> None:
    json_path = tmp_path / "vilt.json"
    threads = torch.get_num_threads()
    try:  # in-process; --threads changes the process-wide setting
        payload = main(["--smoke", "--ours-attn", "sdpa", "eager", "--threads", "1", "--json", str(json_path)])
    finally:
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    ratios = {match["kernel"]: float(match["value"]) for match in RATIO_LINE.finditer(stdout)}
    assert set(ratios) == {"sdpa", "eager"} and all(value > 0 for value in ratios.values()), stdout
    assert "[smoke] fp32 VQA logits agree" in stdout
    written = json.loads(json_path.read_text())
    assert written["benchmark"] == "bench_vilt" and written["machine"]["device"] == "cpu"
    for result in payload["results"]:
        assert result["max_logit_difference_fp32"] < 1e-5
        assert set(result["samples_per_second"]) == {"hf_vlp", "transformers"}
        assert result["time_ratio_hf_vlp_over_transformers"] > 0


def test_parse_args_defaults_and_errors() -> None:
    cpu = parse_args([])
    assert (cpu.preset, cpu.batch, cpu.rounds, cpu.ours_attn, cpu.dtype) == ("base", 4, 5, ["sdpa"], "fp32")
    smoke = parse_args(["--smoke"])
    assert (smoke.preset, smoke.batch, smoke.rounds) == ("smoke", 2, 1)
    with pytest.raises(SystemExit):
        parse_args(["--batch", "0"])


def test_inputs_are_full_images_and_forty_token_questions() -> None:
    batch = random_batch("smoke", 3, seed=0)
    assert batch["input_ids"].shape == (3, TEXT_LENGTH) and bool(batch["pixel_mask"].all())
    assert batch["attention_mask"][:, -1].sum() == 0 and bool((batch["input_ids"][batch["attention_mask"] == 0] == 0).all())
