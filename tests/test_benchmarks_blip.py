"""``benchmarks/bench_blip.py`` runs end to end in ``--smoke`` mode: equal caption ids, a throughput ratio per
attention kernel, JSON written (no timing assertion); plus its argument checks and prompt layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from benchmarks.bench_blip import CLS_TOKEN_ID, DECODING, SEP_TOKEN_ID, main, parse_args, prompt_ids

RATIO_LINE = re.compile(
    r"^ratio smoke caption ours-(?P<kernel>\w+) hf_vlp/transformers images/s = (?P<value>\d+\.\d+) \(", re.M
)


@pytest.mark.slow
def test_bench_blip_smoke(tmp_path: Path, capsys) -> None:
    json_path = tmp_path / "blip.json"
    threads = torch.get_num_threads()
    try:  # in-process (no second import of torch/transformers); --threads changes the process-wide setting
        payload = main(["--smoke", "--ours-attn", "sdpa", "eager", "--threads", "1", "--json", str(json_path)])
    finally:
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    ratios = {match["kernel"]: float(match["value"]) for match in RATIO_LINE.finditer(stdout)}
    assert set(ratios) == {"sdpa", "eager"} and all(value > 0 for value in ratios.values()), stdout
    assert "[smoke] fp32 caption ids equal: (2, 20)" in stdout
    written = json.loads(json_path.read_text())
    assert written["benchmark"] == "bench_blip" and written["machine"]["device"] == "cpu"
    for result in payload["results"]:
        assert result["ids_equal_fp32"] and result["ids_equal_in_timed_dtype"]
        assert result["decoding"] == DECODING == {"num_beams": 3, "max_length": 20, "min_length": 5}
        rates = result["images_per_second"]
        assert set(rates) == {"hf_vlp", "transformers"} and all(rate > 0 for rate in rates.values())


def test_parse_args_defaults_and_errors() -> None:
    cpu = parse_args([])
    assert (cpu.preset, cpu.batch, cpu.rounds, cpu.ours_attn, cpu.dtype) == ("small", 4, 5, ["sdpa"], "fp32")
    smoke = parse_args(["--smoke"])
    assert (smoke.preset, smoke.batch, smoke.rounds) == ("smoke", 2, 1)
    with pytest.raises(SystemExit):
        parse_args(["--batch", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--preset", "huge"])


def test_prompt_is_a_processor_row_per_image() -> None:
    prompt = prompt_ids(3)
    assert prompt.shape == (3, 5) and (prompt[:, 0] == CLS_TOKEN_ID).all() and (prompt[:, -1] == SEP_TOKEN_ID).all()
