"""The packaged ``evaluate`` metric modules: VQAv2 answer normalisation and leave-one-out accuracy checked by hand,
recall@K of a small matrix, the COCO caption scores agreeing with pycocoevalcap's scorers, and every module loading
offline from a fresh cache, two processes at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from setuptools import find_packages

from hf_vlp.evaluation import (
    METRIC_NAMES,
    load_metric,
    metric_path,
    normalize_vqa_answer,
    recall_metrics,
    retrieval_recall,
    vqa_score,
)
from hf_vlp.evaluation.captioning import caption_metrics, coco_caption_scores, ptb_tokenize
from hf_vlp.evaluation.vqa import majority_answer
from hf_vlp.evaluation.vqa_answers import CONTRACTIONS

# ------------------------------------------------------------------------------------------------------ VQA


@pytest.mark.parametrize(
    ("answer", "normalised"),
    [
        ("Two", "2"),  # number words become digits
        ("ten", "10"),
        ("none", "0"),  # the official map reads "none" as zero
        ("a dog", "dog"),  # articles dropped
        ("The Dog's bone", "dog's bone"),
        ("yes.", "yes"),  # a period not followed by a digit is deleted
        ("3.5", "3.5"),
        ("u.s.", "us"),
        ("1,000", "1000"),  # a comma between digits: every mark is deleted
        ("black, white", "black white"),  # a mark next to a space is deleted
        ("t-shirt", "t shirt"),  # any other mark becomes a space
        ("yes !", "yes"),
        ("(red)", "red"),
        ("dont", "don't"),  # contractions get their apostrophe back
        ("whats up?", "what's up"),
        ("it's", "it's"),  # the apostrophe is no punctuation...
        ("its", "its"),  # ... and "its" is a word of its own: no entry in the official table
        ("  left\tside\n", "left side"),
    ],
)
def test_official_answer_normalisation(answer: str, normalised: str) -> None:
    assert normalize_vqa_answer(answer) == normalised


def test_the_contraction_table_holds_the_official_facts() -> None:
    assert CONTRACTIONS["dont"] == "don't" and CONTRACTIONS["yall'd've"] == "y'all'd've"
    assert CONTRACTIONS["somebody'd"] == "somebodyd"  # backwards in the official table, kept
    assert "its" not in CONTRACTIONS and "im" not in CONTRACTIONS  # "Im" is capitalised there: it never applies
    assert len(CONTRACTIONS) == 114


@pytest.mark.parametrize(("matching", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_ten_answers_average_the_ten_leave_one_out_subsets(matching: int, expected: float) -> None:
    answers = ["red"] * matching + ["blue"] * (10 - matching)
    assert vqa_score("red", answers) == pytest.approx(expected)
    assert vqa_score("Red.", answers) == pytest.approx(expected)  # normalised before matching


def test_fewer_answers() -> None:
    assert vqa_score("Two", "2") == 1.0 and vqa_score("the dog", ["dog"]) == 1.0  # exact after normalisation
    assert vqa_score("dog", "cat") == 0.0
    assert vqa_score("red", ["red", "red"]) == 1.0 and vqa_score("red", ["red", "blue"]) == 0.5  # threshold n - 1
    assert vqa_score("red", ["red", "red", "blue"]) == pytest.approx(2 / 3)
    assert vqa_score("red", ["red", "red", "red", "blue"]) == pytest.approx(0.75)  # from four answers: official
    with pytest.raises(ValueError, match="at least one ground-truth answer"):
        vqa_score("red", [])


def test_the_vqa_module_averages_the_questions_in_batches() -> None:
    predictions = ["Two", "a dog", "yes", "left"]
    references = [["2"] * 10, ["dog"] * 2 + ["cat"] * 8, ["yes"] * 3 + ["no"] * 7, ["right"] * 10]
    expected = sum(vqa_score(p, r) for p, r in zip(predictions, references)) / 4
    assert expected == pytest.approx((1.0 + 0.6 + 0.9 + 0.0) / 4)
    metric = load_metric("vqa_accuracy")
    assert metric.compute(predictions=predictions, references=references) == {"vqa_accuracy": pytest.approx(expected)}
    metric.add_batch(predictions=predictions[:2], references=references[:2])
    metric.add_batch(predictions=predictions[2:], references=references[2:])
    assert metric.compute()["vqa_accuracy"] == pytest.approx(expected)
    single = load_metric("vqa_accuracy").compute(predictions=["Two", "cat"], references=["2", "dog"])
    assert single == {"vqa_accuracy": 0.5}  # one answer per question, as plain strings


def test_the_majority_answer_counts_normalised_answers() -> None:
    assert majority_answer(["Two", "2", ["two", "3"], "yes"]) == "2"


# ------------------------------------------------------------------------------------------------ retrieval

# 3 images, 4 texts: texts 0, 1 describe image 0, text 2 image 1, text 3 image 2
I2T = torch.tensor([[0.1, 0.9, 0.3, 0.2], [0.8, 0.1, 0.2, 0.0], [0.5, 0.4, 0.6, 0.7]])
CAPTIONS = [[0, 1], [2], [3]]
TEXT_TO_IMAGE = [0, 0, 1, 2]


def test_recall_at_k_of_a_small_matrix_by_hand() -> None:
    # image ranks: image 0's best caption (0.9) is first -> 0; image 1's (0.2) has 0.8 above -> 1; image 2's
    # (0.7) is first -> 0. text ranks (columns): text 0 -> image 0 scores 0.1 < 0.8, 0.5 -> 2; text 1 -> 0;
    # text 2 -> image 1 scores 0.2 < 0.3, 0.6 -> 2; text 3 -> 0
    result = load_metric("retrieval_recall").compute(predictions=I2T.tolist(), references=CAPTIONS, ks=[1, 2, 3])
    expected = {"i2t_r1": 2 / 3, "i2t_r2": 1.0, "i2t_r3": 1.0, "t2i_r1": 0.5, "t2i_r2": 0.5, "t2i_r3": 1.0}
    expected["mean_recall"] = sum(expected.values()) / 6
    assert result == pytest.approx(expected)
    by_ranks = load_metric("retrieval_recall", "ranks").compute(
        predictions=[0, 1, 0, 2, 0, 2, 0], references=["i2t"] * 3 + ["t2i"] * 4, ks=[1, 2, 3]
    )
    assert by_ranks == pytest.approx(expected)
    assert recall_metrics(torch.tensor([0, 1, 0]), torch.tensor([2, 0, 2, 0]), [1, 2, 3]) == pytest.approx(expected)


def test_separate_text_to_image_scores_a_prefix_and_ties_against_the_query() -> None:
    result = load_metric("retrieval_recall").compute(
        predictions=I2T.tolist(), references=CAPTIONS, text_to_image_scores=torch.eye(3)[TEXT_TO_IMAGE], ks=[1],
        prefix="itm_",
    )
    assert result["itm_t2i_r1"] == 1.0 and result["itm_i2t_r1"] == pytest.approx(2 / 3)
    tied = load_metric("retrieval_recall").compute(predictions=[[1.0, 1.0], [1.0, 1.0]], references=[[0], [1]], ks=[1])
    assert tied == {"i2t_r1": 0.0, "t2i_r1": 0.0, "mean_recall": 0.0}


def test_the_module_matches_the_chunked_dual_encoder_recall() -> None:
    generator = torch.Generator().manual_seed(0)
    images, texts = torch.randn(6, 8, generator=generator), torch.randn(10, 8, generator=generator)
    text_to_image = [0, 0, 1, 2, 2, 2, 3, 4, 5, 5]
    chunked = retrieval_recall(images, texts, text_to_image, ks=(1, 3), chunk_size=4)
    scores = torch.nn.functional.normalize(images, dim=-1) @ torch.nn.functional.normalize(texts, dim=-1).T
    captions = [[j for j, image in enumerate(text_to_image) if image == i] for i in range(6)]
    assert load_metric("retrieval_recall").compute(predictions=scores.tolist(), references=captions, ks=[1, 3]) == (
        pytest.approx(chunked)
    )


@pytest.mark.parametrize(
    ("references", "match"),
    [
        ([[0, 1], [1], [3]], "listed for image 1 and another one"),
        ([[0], [2], [3]], r"Texts \[1\] belong to no image"),
        ([[0, 1], [2], [7]], r"text indices in \[0, 4\)"),
    ],
)
def test_bad_caption_lists_raise(references: list[list[int]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_metric("retrieval_recall").compute(predictions=I2T.tolist(), references=references)


def test_bad_retrieval_inputs_raise() -> None:
    with pytest.raises(ValueError, match="configurations 'scores'"):
        load_metric("retrieval_recall", "matrix")
    with pytest.raises(ValueError, match="'i2t' or 't2i'"):
        load_metric("retrieval_recall", "ranks").compute(predictions=[0, 1], references=["i2t", "image"])
    with pytest.raises(ValueError, match="No t2i queries"):
        load_metric("retrieval_recall", "ranks").compute(predictions=[0, 1], references=["i2t", "i2t"])
    with pytest.raises(ValueError, match=r"text_to_image_scores must be \[texts, images\]"):
        load_metric("retrieval_recall").compute(predictions=I2T.tolist(), references=CAPTIONS,
                                                text_to_image_scores=I2T)


# ----------------------------------------------------------------------------------------------- captioning

PREDICTIONS = ["a dog runs on the grass", "two cats sleep on a red sofa", "a man rides a bike"]
REFERENCES = [
    ["a dog runs in the grass", "the dog is running"],
    ["two cats are sleeping on a sofa", "cats on a red couch"],
    ["a man riding a bicycle", "someone rides a bike down the road"],
]


def test_caption_scores_agree_with_the_coco_scorers() -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    results = {i: [ptb_tokenize(caption)] for i, caption in enumerate(PREDICTIONS)}
    truths = {i: [ptb_tokenize(caption) for caption in refs] for i, refs in enumerate(REFERENCES)}
    bleu, _ = Bleu(4).compute_score(truths, results, verbose=0)
    cider, _ = Cider().compute_score(truths, results)
    expected = {**{f"Bleu_{n}": score for n, score in enumerate(bleu, 1)}, "CIDEr": cider}
    module = load_metric("coco_caption").compute(predictions=PREDICTIONS, references=REFERENCES)
    assert module == pytest.approx(expected, abs=1e-12)
    assert caption_metrics(PREDICTIONS, REFERENCES) == module == coco_caption_scores(PREDICTIONS, REFERENCES)


# --------------------------------------------------------------------------------------------------- loading


def test_every_module_is_a_package_folder_that_ships_in_the_wheel() -> None:
    packages = set(find_packages(str(metric_path("vqa_accuracy").parents[2]), include=["hf_vlp", "hf_vlp.*"]))
    for name in METRIC_NAMES:
        assert (metric_path(name) / f"{name}.py").is_file()
        assert f"hf_vlp.metrics.{name}" in packages
    with pytest.raises(ValueError, match="Unknown hf_vlp metric 'bleu'"):
        metric_path("bleu")


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import evaluate
    from hf_vlp.evaluation import METRIC_NAMES, metric_path
    inputs = {
        "vqa_accuracy": dict(predictions=["Two"], references=[["2"] * 10]),
        "retrieval_recall": dict(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[[0], [1]], ks=[1]),
        "coco_caption": dict(predictions=["a dog runs", "a cat"], references=[["a dog runs"], ["a cat"]]),
    }
    results = {}
    for name in METRIC_NAMES:
        metric = evaluate.load(str(metric_path(name)), keep_in_memory=True)
        results[name] = metric.compute(**inputs[name])
    cached = os.path.join(os.environ["HF_HOME"], "modules", "evaluate_modules", "metrics")
    copies = sorted(name for name in os.listdir(cached) if os.path.isdir(os.path.join(cached, name)))
    print("RESULT " + json.dumps({"results": results, "cached": copies}))
    """
)


@pytest.mark.slow
def test_modules_load_offline_from_a_fresh_cache_in_two_processes_at_once(tmp_path) -> None:
    environment = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_EVALUATE_OFFLINE": "1",
                   "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for name in ("HF_MODULES_CACHE", "HF_METRICS_CACHE", "HF_DATASETS_CACHE", "XDG_CACHE_HOME"):
        environment.pop(name, None)
    processes = [
        subprocess.Popen([sys.executable, "-c", OFFLINE_SCRIPT], env=environment, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        report = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
        assert report["cached"] == sorted(METRIC_NAMES)
        results = report["results"]
        assert results["vqa_accuracy"] == {"vqa_accuracy": 1.0}
        assert results["retrieval_recall"] == {"i2t_r1": 1.0, "t2i_r1": 1.0, "mean_recall": 1.0}
        assert results["coco_caption"]["Bleu_1"] == pytest.approx(1.0, abs=1e-6)
