"""Caption metrics: BLEU-1..4 checked by hand, CIDEr of perfect captions, the PTB-like tokenisation, input errors and
the missing-package message; ``evaluate_captioner`` batching, dataset rows and a converted original BLIP captioner
whose recorded captions it scores."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import PIL.Image
import pytest
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from hf_vlp.evaluation.captioning import caption_images, caption_metrics, evaluate_captioner, ptb_tokenize

needs_scorers = pytest.mark.skipif(
    importlib.util.find_spec("pycocoevalcap") is None,
    reason="the scorers come from pycocoevalcap (pip install pycocoevalcap)",
)

CAPTION_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "originals" / "blip_caption"
DISTINCT_CAPTIONS = ["a dog runs on the grass", "two cats play with a red ball", "a man rides a horse in the park"]


# ---------------------------------------------------------------------------------------------------- metrics


@needs_scorers
def test_a_hand_checked_sentence() -> None:
    # unigrams: a dog runs the grass match, "on" not -> 5/6; bigrams: a-dog, dog-runs, the-grass -> 3/5;
    # trigrams: a-dog-runs -> 1/4; no 4-gram matches; the closest reference length is 6 = the prediction's: no penalty
    metrics = caption_metrics(["a dog runs on the grass"], [["a dog runs in the grass", "the dog is running"]])
    assert metrics["Bleu_1"] == pytest.approx(5 / 6)
    assert metrics["Bleu_2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert metrics["Bleu_3"] == pytest.approx(0.5)  # (5/6 * 3/5 * 1/4) ** (1/3) = (1/8) ** (1/3)
    assert metrics["Bleu_4"] < 1e-3
    assert metrics["CIDEr"] == 0.0  # one image: every n-gram's idf is log(1 / 1) = 0


@needs_scorers
def test_bleu_is_corpus_level_with_the_brevity_penalty_of_the_closest_lengths() -> None:
    # counts summed over both sentences: unigrams 5 + 2 of 6 + 2, bigrams 3 + 1 of 5 + 1; lengths 8 against 6 + 5
    predictions = ["a dog runs on the grass", "a dog"]
    references = [["a dog runs in the grass", "the dog is running"], ["a dog runs on grass"]]
    penalty = math.exp(1 - 11 / 8)
    metrics = caption_metrics(predictions, references)
    assert metrics["Bleu_1"] == pytest.approx(7 / 8 * penalty)
    assert metrics["Bleu_2"] == pytest.approx(math.sqrt(7 / 8 * 4 / 6) * penalty)


@needs_scorers
def test_perfect_captions_score_bleu_one_and_cider_ten() -> None:
    references = [[caption, "an unrelated reference sentence here"] for caption in DISTINCT_CAPTIONS]
    metrics = caption_metrics(DISTINCT_CAPTIONS, [[caption] for caption in DISTINCT_CAPTIONS])
    assert all(metrics[f"Bleu_{n}"] == pytest.approx(1.0) for n in range(1, 5))
    assert metrics["CIDEr"] == pytest.approx(10.0)  # cosine 1 for every n-gram order, x10
    with_other_references = caption_metrics(DISTINCT_CAPTIONS, references)
    assert with_other_references["Bleu_4"] == pytest.approx(1.0)  # BLEU clips against the best reference
    assert 1.0 < with_other_references["CIDEr"] < 10.0  # CIDEr averages over the references
    rotated = DISTINCT_CAPTIONS[1:] + DISTINCT_CAPTIONS[:1]
    shuffled = caption_metrics(rotated, [[caption] for caption in DISTINCT_CAPTIONS])
    assert shuffled["CIDEr"] < 0.5 and shuffled["Bleu_4"] < 0.01


@needs_scorers
def test_case_punctuation_and_spacing_do_not_change_the_scores() -> None:
    plain = caption_metrics(["a dog runs on the grass"], [["a dog runs in the grass", "the dog is running"]])
    written = caption_metrics(["A dog runs on the grass."], [["A dog runs, in the grass!", "The dog  is running"]])
    assert written == plain


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A man's dog, running (fast)!", "a man 's dog running fast"),
        ("I don't know -- it can't be 3.5 or 1,000...", "i do n't know it ca n't be 3.5 or 1,000"),
        ('A black-and-white photo of "two" dogs\' toys; yes: no?', "a black-and-white photo of two dogs toys yes no"),
        ("They're here\nnow", "they 're here now"),
        ("  ", ""),
    ],
)
def test_ptb_tokenize(text: str, tokens: str) -> None:
    assert ptb_tokenize(text) == tokens


@needs_scorers
@pytest.mark.parametrize(
    ("predictions", "references", "error", "match"),
    [
        (["a dog"], [["a dog"], ["a cat"]], ValueError, "1 predictions but 2 reference lists"),
        ([], [], ValueError, "No predictions"),
        ("a dog", [["a dog"]], TypeError, "list of caption strings"),
        (["a dog"], [[]], ValueError, r"references\[0\] must be a non-empty list"),
        (["a dog"], [[None]], ValueError, r"references\[0\]"),
        (["a dog"], "a dog", TypeError, "one list of reference captions per prediction"),
        ([3], [["a dog"]], TypeError, "captions must be strings"),
    ],
)
def test_bad_inputs_raise(predictions, references, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        caption_metrics(predictions, references)


def test_a_missing_scorer_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycocoevalcap.bleu.bleu", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install pycocoevalcap"):
        caption_metrics(["a dog"], [["a dog"]])
    with pytest.raises(ImportError, match="pip install pycocoevalcap"):  # before any captioning
        evaluate_captioner(StubCaptioner({}), None, ["image 0"], [["a dog"]])


# ---------------------------------------------------------------------------------------------------- evaluate


class StubCaptioner(nn.Module):
    """Captions each image by a lookup table and records the batches and keyword arguments it was called with."""

    def __init__(self, captions: dict[str, str]) -> None:
        super().__init__()
        self.captions = captions
        self.calls: list[tuple[list[str], dict]] = []
        self.modes: list[bool] = []

    def caption(self, images, processor, prompt=None, **generate_kwargs) -> list[str]:
        self.calls.append((list(images), {"prompt": prompt, **generate_kwargs}))
        self.modes.append(self.training)
        return [" " + self.captions[image] for image in images]


@needs_scorers
def test_evaluate_captioner_batches_forwards_settings_and_scores_what_it_generated() -> None:
    images = [f"image {index}" for index in range(5)]
    captions = dict(zip(images, DISTINCT_CAPTIONS + ["a red car on the street", "people sitting at a table"]))
    references = [[captions[image]] if index % 2 else [captions[image], "some other words"]
                  for index, image in enumerate(images)]
    model = StubCaptioner(captions).train()
    metrics = evaluate_captioner(model, "processor", images, references, batch_size=2, prompt="", num_beams=3)
    assert [batch for batch, _ in model.calls] == [images[:2], images[2:4], images[4:]]
    assert all(kwargs == {"prompt": "", "num_beams": 3} for _, kwargs in model.calls)
    assert model.modes == [False] * 3 and model.training  # captioned in eval mode, the training mode restored
    assert metrics == caption_metrics([captions[image] for image in images], references)
    rows = [{"image": image, "captions": refs} for image, refs in zip(images, references)]
    assert evaluate_captioner(StubCaptioner(captions), "processor", rows) == metrics
    single = [{"image": image, "caption": captions[image]} for image in images]  # one reference string per row
    assert evaluate_captioner(StubCaptioner(captions), "processor", single)["Bleu_4"] == pytest.approx(1.0)


@needs_scorers
def test_evaluate_captioner_errors() -> None:
    model = StubCaptioner({"image 0": "a dog"})
    with pytest.raises(ValueError, match="1 predictions but 2 reference lists"):
        evaluate_captioner(model, None, ["image 0"], [["a dog"], ["a cat"]])
    with pytest.raises(ValueError, match="No images"):
        evaluate_captioner(model, None, [], [])
    with pytest.raises(ValueError, match="row 0 needs an image under 'image' and reference captions"):
        evaluate_captioner(model, None, [{"image": "image 0", "answer": "a dog"}])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        evaluate_captioner(model, None, ["image 0"], [["a dog"]], batch_size=0)
    with pytest.raises(ValueError, match="one caption per image"):
        caption_images(model, None, ["image 0"], num_return_sequences=2)
    with pytest.raises(TypeError, match="has no caption"):
        caption_images(nn.Linear(1, 1), None, ["image 0"])
    assert model.calls == []


@needs_scorers
def test_a_converted_original_captioner_is_scored_on_its_recorded_captions() -> None:
    from conversion.convert_blip import convert_blip_checkpoint

    converted = convert_blip_checkpoint(
        CAPTION_FIXTURE / "checkpoint.pth", None, CAPTION_FIXTURE / "original_config.json",
        CAPTION_FIXTURE / "vocab.txt", head="caption",
    )
    with safe_open(str(CAPTION_FIXTURE / "outputs.safetensors"), "pt") as handle:
        recorded = json.loads(handle.metadata()["generated_captions_beam3"])  # the original's COCO decoding
    with safe_open(str(CAPTION_FIXTURE / "inputs.safetensors"), "pt") as handle:
        prompt = handle.metadata()["prompt"]
        references = [[caption[len(prompt) :]] for caption in json.loads(handle.metadata()["captions_with_prompt"])]
    raw = load_file(CAPTION_FIXTURE / "inputs.safetensors")["raw_images_uint8"]
    images = [PIL.Image.fromarray(image.numpy()) for image in raw]
    model, processor = converted.model.eval(), converted.processor
    assert caption_images(model, processor, images, batch_size=1) == recorded
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    assert caption_images(model, processor, pixel_values) == recorded  # a pixel_values tensor works too
    metrics = evaluate_captioner(model, processor, images, references, batch_size=1)
    assert metrics == caption_metrics(recorded, references)
    assert set(metrics) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"}
    perfect = evaluate_captioner(model, processor, images, [[caption] for caption in recorded])
    assert perfect["Bleu_4"] == pytest.approx(1.0)
