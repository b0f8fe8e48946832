"""Benchmark scripts: each runs end to end in ``--smoke`` mode and prints its ratio lines (no timing assertion),
plus the shared helpers' arithmetic (summaries, per-round ratios, alternation order, analytic FLOPs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks.common import (
    Summary,
    clip_forward_flops,
    per_round_ratios,
    preset_config,
    random_clip_batch,
    run_alternating,
    tiny_clip_config,
)
from tests.helpers.benchmarks import run_smoke

RATIO_LINE = re.compile(r"^ratio (?P<label>.+) hf_vlp/(?P<other>\w+) (?P<what>[\w/]+) = (?P<value>\d+\.\d+) \(", re.M)


@pytest.mark.slow
def test_bench_clip_smoke(tmp_path: Path) -> None:
    stdout = run_smoke("bench_clip.py", tmp_path / "clip.json")
    lines = {(match["label"], match["other"]): float(match["value"]) for match in RATIO_LINE.finditer(stdout)}
    assert set(lines) == {("smoke forward", "transformers"), ("smoke forward_backward", "transformers")}, stdout
    assert all(value > 0 for value in lines.values())
    payload = json.loads((tmp_path / "clip.json").read_text())
    assert [result["mode"] for result in payload["results"]] == ["forward", "forward_backward"]
    assert all(result["max_abs_logits_diff"] <= 1e-3 for result in payload["results"])


@pytest.mark.slow
def test_bench_train_clip_smoke(tmp_path: Path) -> None:
    stdout = run_smoke("bench_train_clip.py", tmp_path / "train.json")
    others = {match["other"] for match in RATIO_LINE.finditer(stdout) if match["what"] == "samples/s"}
    assert others == {"open_clip", "transformers"}, stdout
    payload = json.loads((tmp_path / "train.json").read_text())
    assert set(payload["results"]) == {"hf_vlp", "open_clip", "transformers"}
    assert abs(payload["initial_losses"]["hf_vlp"] - payload["initial_losses"]["open_clip"]) < 1e-4
    assert all(result["samples_per_second"] > 0 for result in payload["results"].values())


def test_summary_quartiles_and_ratios() -> None:
    summary = Summary.of([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (summary.median, summary.q1, summary.q3, summary.min, summary.max, summary.n) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    assert summary.relative_iqr == pytest.approx(2 / 3)
    assert summary.scaled(1e3).median == 3000.0
    assert per_round_ratios([2.0, 3.0], [1.0, 6.0]) == [2.0, 0.5]
    with pytest.raises(ValueError, match="rounds differ"):
        per_round_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        Summary.of([])


def test_run_alternating_rotates_order_after_warmup() -> None:
    calls: list[str] = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = run_alternating(steps, warmup=1, rounds=3, device=__import__("torch").device("cpu"))
    assert calls == ["a", "b", "c"] + ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_forward_flops_match_open_clip_profile() -> None:
    # open_clip docs/model_profile.csv: ViT-B-32 8.82 + 5.96, ViT-B-16 35.13 + 5.96 GFLOPs per image-text pair
    for preset, image, text in (("ViT-B/32", 8.82, 5.96), ("ViT-B/16", 35.13, 5.96)):
        flops = clip_forward_flops(preset_config(preset))
        assert flops["image"] / 1e9 == pytest.approx(image, abs=0.01)
        assert flops["text"] / 1e9 == pytest.approx(text, abs=0.01)


def test_random_batch_has_one_end_of_text_per_row_and_argmax_finds_it() -> None:
    config = tiny_clip_config()
    pixel_values, input_ids = random_clip_batch(config, batch=6, seed=3)
    eos = config.text_config.eos_token_id
    assert pixel_values.shape == (6, 3, 32, 32)
    assert ((input_ids == eos).sum(dim=1) == 1).all()
    assert (input_ids.argmax(dim=1) == (input_ids == eos).int().argmax(dim=1)).all()
