"""The built-in synthetic-shapes dataset: determinism, speed, and labels that agree with the drawn pixels."""

import random
import re
import time
from collections import Counter, deque

import datasets
import numpy as np
import pytest

from hf_vlp import synthetic
from hf_vlp.synthetic import (
    CAPTIONS_PER_IMAGE,
    COLOURS,
    SYNTHETIC_CLASS_NAMES,
    VE_LABELS,
    VQA_ANSWERS,
    build_synthetic_dataset,
    build_synthetic_split,
    make_entailment_example,
    synthetic_vocabulary,
    zero_shot_prompts,
)


def _pixels(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _foreground(pixels):
    background = pixels[0, 0]  # corners lie in the margin no region reaches
    return np.any(pixels != background, axis=-1)


def _components(mask):
    """4-connected components of a boolean mask, as lists of (y, x) pixels (independent of the generator)."""
    seen = np.zeros_like(mask)
    components = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        components.append(pixels)
    return components


def _nearest_colour(rgb):
    return min(COLOURS, key=lambda name: float(np.sum((np.asarray(COLOURS[name]) - rgb) ** 2)))


def _check_scene_pixels(image, scene, image_size):
    pixels = _pixels(image)
    mask = _foreground(pixels)
    assert _nearest_colour(pixels[mask].mean(axis=0)) == scene["colour"]
    components = _components(mask)
    assert len(components) == scene["count"]
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() / image_size, ys.mean() / image_size
    expected_side = {"left": cx < 0.5, "right": cx > 0.5, "top": cy < 0.5, "bottom": cy > 0.5}
    if scene["position"] == "centre":
        assert abs(cy - 0.5) < 0.1
    else:
        assert expected_side[scene["position"]]
    extents = [max(np.ptp([p[0] for p in comp]), np.ptp([p[1] for p in comp])) + 1 for comp in components]
    target = synthetic.SIZES[scene["size"]] * image_size
    assert all(abs(extent - target) <= 0.2 * target + 1 for extent in extents), (extents, target)


def test_same_seed_gives_identical_samples_and_prefix_property():
    first = build_synthetic_split("train", 12, image_size=32, seed=3)
    second = build_synthetic_split("train", 12, image_size=32, seed=3)
    longer = build_synthetic_split("train", 20, image_size=32, seed=3)
    assert first["caption"] == second["caption"] == longer["caption"][:12]
    for a, b in zip(first["image"], second["image"]):
        np.testing.assert_array_equal(_pixels(a), _pixels(b))


def test_different_split_or_seed_gives_different_samples():
    train = build_synthetic_split("train", 30, image_size=32, seed=0)
    validation = build_synthetic_split("validation", 30, image_size=32, seed=0)
    other_seed = build_synthetic_split("train", 30, image_size=32, seed=1)
    assert train["caption"] != validation["caption"]
    assert train["caption"] != other_seed["caption"]
    assert not np.array_equal(_pixels(train[0]["image"]), _pixels(other_seed[0]["image"]))


def test_generation_is_fast_and_has_both_splits():
    start = time.perf_counter()
    dataset = build_synthetic_dataset(num_train=2000, num_validation=200, image_size=64, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"2,200 samples took {elapsed:.1f}s"
    assert set(dataset) == {"train", "validation"}
    assert dataset.num_rows == {"train": 2000, "validation": 200}
    assert isinstance(dataset["train"].features["image"], datasets.Image)
    assert dataset["train"].features["label"].names == list(SYNTHETIC_CLASS_NAMES)
    # every class occurs, roughly uniformly (24 classes, 2,000 samples)
    counts = Counter(dataset["train"]["label"])
    assert len(counts) == len(SYNTHETIC_CLASS_NAMES)
    assert min(counts.values()) > 2000 / len(SYNTHETIC_CLASS_NAMES) / 2


def test_validation_split_can_be_left_out_and_image_size_is_honoured():
    dataset = build_synthetic_dataset(num_train=3, num_validation=0, image_size=96)
    assert list(dataset) == ["train"]
    assert dataset["train"][0]["image"].size == (96, 96)
    assert dataset["train"][0]["image"].mode == "RGB"


def test_captions_and_labels_agree_with_the_drawn_pixels():
    image_size = 64
    split = build_synthetic_split("train", 150, image_size=image_size, seed=5)
    for row in split:
        _check_scene_pixels(row["image"], row, image_size)
        assert SYNTHETIC_CLASS_NAMES[row["label"]] == f"{row['colour']} {row['shape']}"
        caption = row["caption"]
        assert row["colour"] in caption and row["size"] in caption
        assert row["shape"] in caption  # "circle" is inside "circles" too
        count_word = {1: "a", 2: "two", 3: "three"}[row["count"]]
        assert caption.startswith(count_word + " ")
        assert caption == row["captions"][0] and len(set(row["captions"])) == len(row["captions"]) >= 3
        assert all(row["colour"] in variant for variant in row["captions"])


def test_vqa_answers_follow_the_scene():
    split = build_synthetic_split("train", 300, image_size=32, seed=2, task="vqa")
    seen_types = Counter()
    for row in split:
        kind, question, answer = row["question_type"], row["question"], row["answer"]
        seen_types[kind] += 1
        assert VQA_ANSWERS[row["answer_label"]] == answer
        if kind == "exists":
            asked = re.fullmatch(r"is there a (.+)\?", question).group(1).split()
            colour = next((word for word in asked if word in COLOURS), None)
            shape = next((word for word in asked if word in synthetic.SHAPES), None)
            truth = (colour in (None, row["colour"])) and (shape in (None, row["shape"]))
            assert answer == ("yes" if truth else "no"), question
        else:
            attribute = {"colour": "colour", "shape": "shape", "position": "position", "size": "size"}.get(kind)
            expected = str(row["count"]) if kind == "count" else row[attribute]
            assert answer == expected, (question, answer)
    assert set(seen_types) == set(synthetic.VQA_QUESTION_TYPES)
    yes_no = Counter(row["answer"] for row in split if row["question_type"] == "exists")
    assert yes_no["yes"] > 5 and yes_no["no"] > 5


def _statement_truth(statement, left, right):
    """An independent reading of the NLVR statement text."""
    patterns = [
        (r"the left image has more shapes than the right image", lambda: left["count"] > right["count"]),
        (r"the right image has more shapes than the left image", lambda: right["count"] > left["count"]),
        (r"both images show the same number of shapes", lambda: left["count"] == right["count"]),
        (r"the shapes in both images have the same colour", lambda: left["colour"] == right["colour"]),
        (r"the shapes in the left image are larger than the shapes in the right image",
         lambda: (left["size"], right["size"]) == ("large", "small")),
    ]
    for pattern, truth in patterns:
        if re.fullmatch(pattern, statement):
            return truth()
    if match := re.fullmatch(r"both images contain a (\w+) shape", statement):
        return left["colour"] == right["colour"] == match.group(1)
    if match := re.fullmatch(r"both images contain at least one (\w+)", statement):
        return left["shape"] == right["shape"] == match.group(1)
    if match := re.fullmatch(r"exactly one image contains a (\w+) (\w+)", statement):
        wanted = match.groups()
        return ((left["colour"], left["shape"]) == wanted) != ((right["colour"], right["shape"]) == wanted)
    if match := re.fullmatch(r"there are (\d) shapes in total", statement):
        return left["count"] + right["count"] == int(match.group(1))
    if match := re.fullmatch(r"the shapes are (.+) in both images", statement):
        phrase = {"on the left": "left", "on the right": "right", "at the top": "top", "at the bottom": "bottom",
                  "in the centre": "centre"}[match.group(1)]
        return left["position"] == right["position"] == phrase
    raise AssertionError(f"unrecognised statement {statement!r}")


def test_nlvr_labels_follow_the_image_pair():
    split = build_synthetic_split("train", 200, image_size=64, seed=4, task="nlvr")
    for row in split:
        assert row["nlvr_label"] == _statement_truth(row["statement"], row["left"], row["right"]), row["statement"]
    for row in split.select(range(20)):
        _check_scene_pixels(row["image_left"], row["left"], 64)
        _check_scene_pixels(row["image_right"], row["right"], 64)
    share_true = np.mean(split["nlvr_label"])
    assert 0.35 < share_true < 0.65
    assert set(split["statement_type"]) == set(synthetic.NLVR_STATEMENT_TYPES)


def test_dataset_round_trips_through_save_to_disk(tmp_path):
    dataset = build_synthetic_dataset(num_train=4, num_validation=2, image_size=32)
    dataset.save_to_disk(tmp_path / "shapes")
    reloaded = datasets.load_from_disk(str(tmp_path / "shapes"))
    assert reloaded["train"]["caption"] == dataset["train"]["caption"]
    np.testing.assert_array_equal(_pixels(reloaded["train"][1]["image"]), _pixels(dataset["train"][1]["image"]))


def test_zero_shot_prompts_cover_every_class():
    prompts = zero_shot_prompts()
    assert len(prompts) == len(SYNTHETIC_CLASS_NAMES) == len(set(SYNTHETIC_CLASS_NAMES))
    assert all(len(per_class) == len(synthetic.ZERO_SHOT_TEMPLATES) for per_class in prompts)
    assert prompts[SYNTHETIC_CLASS_NAMES.index("red circle")][1] == "a photo of a red circle."
    assert len(VQA_ANSWERS) == len(set(VQA_ANSWERS))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task": "grounding"}, "Unknown synthetic task"),
        ({"split": "dev"}, "Unknown split"),
        ({"image_size": 8}, "at least 16"),
        ({"num_samples": 0}, "at least 1"),
    ],
)
def test_bad_arguments_are_rejected_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_synthetic_split(**kwargs)


def test_retrieval_rows_share_the_image_and_its_id_across_caption_variants():
    split = build_synthetic_split("train", 6, image_size=32, seed=1, task="retrieval")
    captions = build_synthetic_split("train", 6, image_size=32, seed=1, task="caption")
    assert split.num_rows == 6 * CAPTIONS_PER_IMAGE
    assert split["image_id"] == [index for index in range(6) for _ in range(CAPTIONS_PER_IMAGE)]
    for index in range(6):
        rows = split.select(range(index * CAPTIONS_PER_IMAGE, (index + 1) * CAPTIONS_PER_IMAGE))
        assert rows["caption"] == captions[index]["captions"]  # every variant once, canonical first
        for row in rows:
            np.testing.assert_array_equal(_pixels(row["image"]), _pixels(captions[index]["image"]))
    # a longer split starts with the same images (prefix property, counted in images)
    longer = build_synthetic_split("train", 9, image_size=32, seed=1, task="retrieval")
    assert longer["caption"][: split.num_rows] == split["caption"]


def _hypothesis_label(hypothesis, scene):
    """An independent reading of an SNLI-VE hypothesis against the scene (a dict of its attributes)."""
    count_words = {"one": 1, "two": 2, "three": 3}
    plural = {"circles": "circle", "squares": "square", "triangles": "triangle", "crosses": "cross"}
    positions = {"on the left": "left", "on the right": "right", "at the top": "top", "at the bottom": "bottom",
                 "in the centre": "centre"}
    checks = [
        (r"the shapes are (red|green|blue|yellow|purple|orange)", lambda m: scene["colour"] == m.group(1)),
        (r"there is a (red|green|blue|yellow|purple|orange) shape", lambda m: scene["colour"] == m.group(1)),
        (r"the image shows (\w+)", lambda m: scene["shape"] == plural[m.group(1)]),
        (r"there is a (circle|square|triangle|cross)", lambda m: scene["shape"] == m.group(1)),
        (r"there is one shape", lambda m: scene["count"] == 1),
        (r"there are (two|three) shapes", lambda m: scene["count"] == count_words[m.group(1)]),
        (r"the shapes are (on the left|on the right|at the top|at the bottom|in the centre)",
         lambda m: scene["position"] == positions[m.group(1)]),
        (r"the shapes are (small|large)", lambda m: scene["size"] == m.group(1)),
        (r"the image shows (small|large) shapes", lambda m: scene["size"] == m.group(1)),
    ]
    for pattern, holds in checks:
        if match := re.fullmatch(pattern, hypothesis):
            return "entailment" if holds(match) else "contradiction"
    subject = re.fullmatch(r"the (.+?) (is|are|was|were|belongs|belong) .+", hypothesis)
    assert subject, hypothesis
    words = subject.group(1).split()
    colour = next((word for word in words if word in COLOURS), None)
    shape = next((plural.get(word, word) for word in words if plural.get(word, word) in synthetic.SHAPES), None)
    shown = colour in (None, scene["colour"]) and shape in (None, scene["shape"])
    return "neutral" if shown else "contradiction"


def test_snli_ve_labels_follow_the_scene_and_are_exactly_balanced():
    split = build_synthetic_split("train", 300, image_size=32, seed=3, task="snli-ve")
    assert Counter(split["gold_label"]) == {label: 100 for label in VE_LABELS}
    kinds = Counter()
    for row in split:
        assert _hypothesis_label(row["hypothesis"], row) == row["gold_label"], row["hypothesis"]
        kinds[(row["hypothesis_type"], row["gold_label"])] += 1
    # neutral hypotheses are never claims and claims are never neutral: the text alone cannot settle the label
    assert set(kinds) == {("true_claim", "entailment"), ("unverifiable", "neutral"), ("false_claim", "contradiction"),
                          ("absent_subject", "contradiction")}
    with pytest.raises(ValueError, match="Unknown SNLI-VE label"):
        make_entailment_example(synthetic.SyntheticScene("red", "circle", "small", "left", 1), "maybe", random.Random(0))


def test_vocabulary_covers_every_synthetic_text():
    vocabulary = set(synthetic_vocabulary())
    texts = []
    for task, columns in (("retrieval", ["caption"]), ("vqa", ["question", "answer"]), ("nlvr", ["statement"]),
                          ("snli-ve", ["hypothesis"])):
        split = build_synthetic_split("validation", 200, image_size=16, seed=7, task=task)
        texts += [text for column in columns for text in split[column]]
    words = {word for text in texts for word in re.findall(r"[a-z0-9]+", text.lower())}
    assert words <= vocabulary, sorted(words - vocabulary)
