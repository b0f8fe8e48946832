"""``benchmarks/bench_albef.py`` runs end to end in ``--smoke`` mode and prints its result lines (no timing
assertion), plus its argument checks and random-batch layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks.bench_albef import (
    CLS_TOKEN_ID,
    SEP_TOKEN_ID,
    albef_config,
    parse_args,
    random_albef_batch,
)
from tests.helpers.benchmarks import run_smoke

PRETRAIN_LINE = re.compile(r"^pretrain smoke samples/s = (?P<rate>\d+\.\d+) \(step \d+ ms", re.M)
MEMORY_LINE = re.compile(
    r"^pretrain smoke peak memory MiB = (?P<mib>-?\d+) \((?P<kind>[^)]+)\); loss (?P<loss>\S+)$", re.M
)
RETRIEVAL_LINE = re.compile(
    r"^retrieval smoke gallery 6x15 k=4: encode_images_s = (?P<images>\d+\.\d+), "
    r"encode_texts_s = (?P<texts>\d+\.\d+), "
    r"itc_similarity_s = (?P<itc>\d+\.\d+), itm_rerank_s = (?P<itm>\d+\.\d+), total_s = (?P<total>\d+\.\d+) "
    r"\((?P<pairs>\d+) ITM pairs",
    re.M,
)


@pytest.mark.slow
def test_bench_albef_smoke(tmp_path: Path) -> None:
    json_path = tmp_path / "albef.json"
    stdout = run_smoke("bench_albef.py", json_path)
    pretrain, memory = PRETRAIN_LINE.search(stdout), MEMORY_LINE.search(stdout)
    retrieval = RETRIEVAL_LINE.search(stdout)
    assert pretrain and memory and retrieval, stdout
    assert float(pretrain["rate"]) > 0
    assert memory["kind"] == "peak RSS growth over the steps"
    assert float(memory["loss"]) > 0
    assert int(retrieval["pairs"]) == 6 * 4 + 15 * 4  # every image and every text re-ranks k=4 candidates
    assert float(retrieval["total"]) >= float(retrieval["images"]) + float(retrieval["texts"])

    payload = json.loads(json_path.read_text())
    assert payload["benchmark"] == "bench_albef"
    assert payload["pretrain"]["preset"] == "smoke" and len(payload["pretrain"]["raw_seconds"]) == 2
    pretrain_result = payload["pretrain"]
    assert pretrain_result["samples_per_second"] == pytest.approx(2e3 / pretrain_result["step_ms"]["median"])
    assert payload["retrieval"]["score_matrices_s"] >= payload["retrieval"]["itm_rerank_s"]
    assert payload["machine"]["device"] == "cpu"


def test_parse_args_defaults_and_errors() -> None:
    cpu = parse_args([])
    assert (cpu.pretrain_preset, cpu.preset, cpu.batch, cpu.queue_size, cpu.rounds) == ("base", "small", 2, 64, 3)
    assert (cpu.images, cpu.texts, cpu.k) == (1000, 5000, 16)
    with pytest.raises(SystemExit):
        parse_args(["--batch", "3", "--queue-size", "64"])  # the queue must be a multiple of the batch
    with pytest.raises(SystemExit):
        parse_args(["--batch", "1", "--queue-size", "8"])


def test_random_batch_is_cls_tokens_sep_then_padding() -> None:
    config = albef_config("smoke", queue_size=8)
    assert (config.text_config.cls_token_id, config.queue_size) == (CLS_TOKEN_ID, 8)
    pixel_values, input_ids, attention_mask = random_albef_batch(config, batch=5, text_length=12, seed=3)
    assert pixel_values.shape == (5, 3, 32, 32) and input_ids.shape == attention_mask.shape == (5, 12)
    assert (input_ids[:, 0] == CLS_TOKEN_ID).all()
    for row, mask in zip(input_ids, attention_mask):
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()
        assert row[length - 1] == SEP_TOKEN_ID and (row[length:] == 0).all()
        assert not (row[1 : length - 1] == SEP_TOKEN_ID).any()
    with pytest.raises(SystemExit, match="text-length"):
        random_albef_batch(config, batch=2, text_length=100, seed=0)
    with pytest.raises(SystemExit, match="unknown preset"):
        albef_config("huge", queue_size=8)
