"""The built-in synthetic image-text dataset ``synthetic-shapes``.

Each image shows one to three identical shapes (one colour, one kind, one size) placed in one region of a
plain light background. Everything a head can be trained on derives from that small scene description:
captions, a class label (colour + shape), image-caption pairs sharing an image id (retrieval), VQA
question/answer pairs, NLVR-style statements over an image pair and SNLI-VE-style hypotheses labelled
entailment / neutral / contradiction. Generation is deterministic: sample ``i`` of a split depends only on
``(seed, split, i)``, so a smaller dataset is a prefix of a larger one, and train/validation/test never share a
random stream.

The signal is deliberately strong (saturated colours, no overlap, 24 classes) so that a tiny model trained
for a couple of minutes on CPU beats chance by a wide margin, which is the end-to-end proof that training works.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import datasets
from PIL import Image, ImageDraw

SYNTHETIC_DATASET_NAME = "synthetic-shapes"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 205, 0),
    "purple": (140, 40, 180),
    "orange": (250, 130, 0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SIZES: dict[str, float] = {"small": 0.16, "large": 0.25}  # shape extent as a fraction of the image side
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
COUNTS: tuple[int, ...] = (1, 2, 3)

SYNTHETIC_CLASS_NAMES: tuple[str, ...] = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)

VQA_ANSWERS: tuple[str, ...] = (
    *COLOURS,
    *SHAPES,
    *(str(count) for count in COUNTS),
    "yes",
    "no",
    *POSITIONS,
    *SIZES,
)
VQA_QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "exists", "position", "size")
NLVR_STATEMENT_TYPES: tuple[str, ...] = (
    "more_left",
    "more_right",
    "same_count",
    "both_colour",
    "both_shape",
    "exactly_one_class",
    "left_larger",
    "total_count",
    "same_colour",
    "same_position",
)
VE_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
VE_HYPOTHESIS_TYPES: tuple[str, ...] = ("true_claim", "false_claim", "unverifiable", "absent_subject")
TASKS: tuple[str, ...] = ("caption", "retrieval", "vqa", "nlvr", "snli-ve")
CAPTIONS_PER_IMAGE = 5  # rows per image of the "retrieval" task, one per caption variant
SPLITS: tuple[str, ...] = ("train", "validation", "test")

ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a {}.",
    "a photo of a {}.",
    "a drawing of a {}.",
    "a picture of a small {}.",
    "a picture of a large {}.",
)

_COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
_POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
# Region of the image (x0, y0, x1, y1 as fractions) each position places its shapes in; shapes are laid out in
# equal slots along the region's long side, so they never overlap. The centre band widens with the count
# (see `_region`); the gaps between the regions keep every position unambiguous.
_REGIONS = {
    "left": (0.04, 0.04, 0.46, 0.96),
    "right": (0.54, 0.04, 0.96, 0.96),
    "top": (0.04, 0.04, 0.96, 0.46),
    "bottom": (0.04, 0.54, 0.96, 0.96),
    "centre": (0.35, 0.34, 0.65, 0.66),
}
_SLOT_MARGIN = 0.025  # fraction of the image side
_COLOUR_JITTER = 15
_MIN_IMAGE_SIZE = 16


@dataclass(frozen=True)
class SyntheticScene:
    """What one synthetic image shows: ``count`` identical shapes in one region."""

    colour: str
    shape: str
    size: str
    position: str
    count: int

    @property
    def class_name(self) -> str:
        """The primary class, colour + shape (e.g. ``"red circle"``)."""
        return f"{self.colour} {self.shape}"

    @property
    def label(self) -> int:
        """Index of :attr:`class_name` in :data:`SYNTHETIC_CLASS_NAMES`."""
        return SYNTHETIC_CLASS_NAMES.index(self.class_name)

    @property
    def caption(self) -> str:
        """The canonical caption, e.g. ``"two small red circles on the left"``."""
        return scene_captions(self)[0]


def sample_scene(rng: random.Random) -> SyntheticScene:
    """Draw a scene uniformly over colours, shapes, sizes, positions and counts."""
    return SyntheticScene(
        colour=rng.choice(list(COLOURS)),
        shape=rng.choice(SHAPES),
        size=rng.choice(list(SIZES)),
        position=rng.choice(POSITIONS),
        count=rng.choice(COUNTS),
    )


def _shape_noun(scene: SyntheticScene) -> str:
    return scene.shape if scene.count == 1 else _PLURALS[scene.shape]


def scene_captions(scene: SyntheticScene) -> list[str]:
    """Caption variants for a scene; the first is the canonical one."""
    noun = _shape_noun(scene)
    count_word = "a" if scene.count == 1 else _COUNT_WORDS[scene.count]
    where = _POSITION_PHRASES[scene.position]
    big_word = {"small": "little", "large": "big"}[scene.size]
    verb = "is" if scene.count == 1 else "are"
    canonical = f"{count_word} {scene.size} {scene.colour} {noun} {where}"
    return [
        canonical,
        f"a picture of {canonical}",
        f"there {verb} {_COUNT_WORDS[scene.count]} {big_word} {scene.colour} {noun} {where} of the image",
        f"{scene.size} {scene.colour} {noun} {where}",
        f"{_COUNT_WORDS[scene.count]} {scene.colour} {noun} on a grey background, {where}",
    ]


def _region(scene: SyntheticScene) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = _REGIONS[scene.position]
    if scene.position == "centre":
        half_width = min(0.46, (x1 - x0) * scene.count / 2)
        x0, x1 = 0.5 - half_width, 0.5 + half_width
    return x0, y0, x1, y1


def _shape_centres(
    scene: SyntheticScene, image_size: int, extent: float, rng: random.Random
) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = (value * image_size for value in _region(scene))
    horizontal = (x1 - x0) >= (y1 - y0)
    long_start, long_end = (x0, x1) if horizontal else (y0, y1)
    short_start, short_end = (y0, y1) if horizontal else (x0, x1)
    slot = (long_end - long_start) / scene.count
    # Keep a margin on each side of a slot so shapes in neighbouring slots never touch, even after rounding.
    long_jitter = max(0.0, (slot - extent) / 2 - _SLOT_MARGIN * image_size)
    short_jitter = max(0.0, (short_end - short_start - extent) / 2)
    short_centre = (short_start + short_end) / 2
    centres = []
    for index in range(scene.count):
        along = long_start + slot * (index + 0.5) + rng.uniform(-long_jitter, long_jitter)
        across = short_centre + rng.uniform(-short_jitter, short_jitter)
        centres.append((along, across) if horizontal else (across, along))
    return centres


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, extent: float, fill: tuple[int, int, int]
) -> None:
    half = extent / 2
    if shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif shape == "square":
        side = half * 0.85  # a slightly smaller square has about the visual weight of the circle
        draw.rectangle((cx - side, cy - side, cx + side, cy + side), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    elif shape == "cross":
        arm = extent / 6
        draw.rectangle((cx - arm, cy - half, cx + arm, cy + half), fill=fill)
        draw.rectangle((cx - half, cy - arm, cx + half, cy + arm), fill=fill)
    else:
        raise ValueError(f"Unknown shape {shape!r}; expected one of {list(SHAPES)}.")


def render_scene(scene: SyntheticScene, image_size: int = 64, rng: random.Random | None = None) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``image_size`` x ``image_size`` pixels.

    ``rng`` varies the light background tone, a small colour jitter and the placement inside the region.
    """
    _check_image_size(image_size)
    rng = rng or random.Random(0)
    tone = rng.randint(205, 240)
    background = tuple(min(255, max(0, tone + rng.randint(-6, 6))) for _ in range(3))
    base = COLOURS[scene.colour]
    fill = tuple(min(255, max(0, channel + rng.randint(-_COLOUR_JITTER, _COLOUR_JITTER))) for channel in base)
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    extent = SIZES[scene.size] * image_size
    for cx, cy in _shape_centres(scene, image_size, extent, rng):
        _draw_shape(draw, scene.shape, cx, cy, extent, fill)
    return image


# ---------------------------------------------------------------------------------------------- VQA


def make_vqa_pair(scene: SyntheticScene, rng: random.Random) -> tuple[str, str, str]:
    """A ``(question_type, question, answer)`` about ``scene``; yes/no questions are balanced."""
    question_type = rng.choice(VQA_QUESTION_TYPES)
    noun = _PLURALS[scene.shape]
    if question_type == "colour":
        question = rng.choice(
            ["what colour are the shapes?", f"what colour is the {scene.shape}?", f"what is the colour of the {noun}?"]
        )
        return question_type, question, scene.colour
    if question_type == "shape":
        question = rng.choice(
            [
                "what shape is shown?",
                "what kind of shape is in the image?",
                f"what shape are the {scene.colour} objects?",
            ]
        )
        return question_type, question, scene.shape
    if question_type == "count":
        question = rng.choice(
            [
                "how many shapes are there?",
                f"how many {scene.colour} {noun} are there?",
                f"how many {noun} are in the image?",
            ]
        )
        return question_type, question, str(scene.count)
    if question_type == "position":
        question = rng.choice(
            [
                "where are the shapes?",
                f"where is the {scene.colour} {scene.shape}?",
                "in which part of the image are the shapes?",
            ]
        )
        return question_type, question, scene.position
    if question_type == "size":
        question = rng.choice(
            ["are the shapes small or large?", f"is the {scene.shape} small or large?", "how big are the shapes?"]
        )
        return question_type, question, scene.size
    # "exists": ask about the true attributes or about a different colour and/or shape.
    answer_yes = rng.random() < 0.5
    asked = rng.choice(["colour", "shape", "both"])
    colour, shape = scene.colour, scene.shape
    if not answer_yes:
        change_colour = asked == "colour" or (asked == "both" and rng.random() < 0.5)
        if change_colour:
            colour = rng.choice([c for c in COLOURS if c != scene.colour])
        else:
            shape = rng.choice([s for s in SHAPES if s != scene.shape])
    if asked == "colour":
        question = f"is there a {colour} shape?"
    elif asked == "shape":
        question = f"is there a {shape}?"
    else:
        question = f"is there a {colour} {shape}?"
    return question_type, question, "yes" if answer_yes else "no"


# --------------------------------------------------------------------------------------------- NLVR


@dataclass(frozen=True)
class NlvrStatement:
    """A statement about an image pair: its type, its free parameter (colour, shape, class, count or position)."""

    statement_type: str
    parameter: str = ""

    def text(self) -> str:
        """The statement as a sentence."""
        templates: dict[str, Callable[[str], str]] = {
            "more_left": lambda _: "the left image has more shapes than the right image",
            "more_right": lambda _: "the right image has more shapes than the left image",
            "same_count": lambda _: "both images show the same number of shapes",
            "both_colour": lambda p: f"both images contain a {p} shape",
            "both_shape": lambda p: f"both images contain at least one {p}",
            "exactly_one_class": lambda p: f"exactly one image contains a {p}",
            "left_larger": lambda _: "the shapes in the left image are larger than the shapes in the right image",
            "total_count": lambda p: f"there are {p} shapes in total",
            "same_colour": lambda _: "the shapes in both images have the same colour",
            "same_position": lambda p: f"the shapes are {_POSITION_PHRASES[p]} in both images",
        }
        return templates[self.statement_type](self.parameter)

    def is_true(self, left: SyntheticScene, right: SyntheticScene) -> bool:
        """Whether the statement holds for the pair ``(left, right)``."""
        kind, parameter = self.statement_type, self.parameter
        if kind == "more_left":
            return left.count > right.count
        if kind == "more_right":
            return right.count > left.count
        if kind == "same_count":
            return left.count == right.count
        if kind == "both_colour":
            return left.colour == parameter and right.colour == parameter
        if kind == "both_shape":
            return left.shape == parameter and right.shape == parameter
        if kind == "exactly_one_class":
            return (left.class_name == parameter) != (right.class_name == parameter)
        if kind == "left_larger":
            return left.size == "large" and right.size == "small"
        if kind == "total_count":
            return left.count + right.count == int(parameter)
        if kind == "same_colour":
            return left.colour == right.colour
        if kind == "same_position":
            return left.position == parameter and right.position == parameter
        raise ValueError(f"Unknown NLVR statement type {kind!r}; expected one of {list(NLVR_STATEMENT_TYPES)}.")


def _statement_parameter(kind: str, left: SyntheticScene, right: SyntheticScene, rng: random.Random) -> str:
    # Half of the time the parameter comes from the pair itself, so true statements are reachable quickly.
    from_pair = rng.random() < 0.5
    scene = rng.choice([left, right])
    if kind == "both_colour":
        return scene.colour if from_pair else rng.choice(list(COLOURS))
    if kind == "both_shape":
        return scene.shape if from_pair else rng.choice(SHAPES)
    if kind == "exactly_one_class":
        return scene.class_name if from_pair else rng.choice(SYNTHETIC_CLASS_NAMES)
    if kind == "total_count":
        return str(left.count + right.count if from_pair else rng.randint(2, 6))
    if kind == "same_position":
        return scene.position if from_pair else rng.choice(POSITIONS)
    return ""


def make_nlvr_example(rng: random.Random) -> tuple[SyntheticScene, SyntheticScene, NlvrStatement, bool]:
    """Sample an image pair and a statement about it whose truth is true or false with equal probability."""
    kind = rng.choice(NLVR_STATEMENT_TYPES)
    target = rng.random() < 0.5
    # Rejection sampling over scene descriptions only (no drawing), so it is cheap; every statement type
    # has both outcomes with probability >= 1/100 per try, so 2,000 tries never run out in practice.
    for _ in range(2000):
        left, right = sample_scene(rng), sample_scene(rng)
        statement = NlvrStatement(kind, _statement_parameter(kind, left, right, rng))
        if statement.is_true(left, right) == target:
            return left, right, statement, target
    raise RuntimeError(f"Could not sample an NLVR pair for statement type {kind!r} with truth {target}.")


# ------------------------------------------------------------------------------------------ SNLI-VE

# Predicates no pixel can confirm or contradict, as (singular, plural) verb phrases: said of the shapes the image
# shows they make a neutral hypothesis; said of shapes the image does not show, a contradiction.
_UNVERIFIABLE_PREDICATES: tuple[tuple[str, str], ...] = (
    ("is made of wood", "are made of wood"),
    ("is made of plastic", "are made of plastic"),
    ("is heavy", "are heavy"),
    ("is brand new", "are brand new"),
    ("is for sale", "are for sale"),
    ("was drawn by a child", "were drawn by a child"),
    ("belongs to a board game", "belong to a board game"),
    ("is wet", "are wet"),
)
_CLAIM_ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "count", "position", "size")


def _attribute_values(attribute: str) -> tuple:
    return {
        "colour": tuple(COLOURS),
        "shape": SHAPES,
        "count": COUNTS,
        "position": POSITIONS,
        "size": tuple(SIZES),
    }[attribute]


def _claim(attribute: str, value: str | int, rng: random.Random) -> str:
    """A sentence the image can verify: the scene's ``attribute`` is ``value``."""
    if attribute == "colour":
        return rng.choice([f"the shapes are {value}", f"there is a {value} shape"])
    if attribute == "shape":
        return rng.choice([f"the image shows {_PLURALS[value]}", f"there is a {value}"])
    if attribute == "count":
        return "there is one shape" if value == 1 else f"there are {_COUNT_WORDS[value]} shapes"
    if attribute == "position":
        return f"the shapes are {_POSITION_PHRASES[value]}"
    return rng.choice([f"the shapes are {value}", f"the image shows {value} shapes"])


def _subject(colour: str, shape: str, count: int, form: str) -> str:
    noun = shape if count == 1 else _PLURALS[shape]
    if form == "colour":
        return f"the {colour} {'shape' if count == 1 else 'shapes'}"
    if form == "shape":
        return f"the {noun}"
    return f"the {colour} {noun}"


def make_entailment_example(scene: SyntheticScene, label: str, rng: random.Random) -> tuple[str, str]:
    """A ``(hypothesis_type, hypothesis)`` about ``scene`` whose SNLI-VE label is ``label``.

    - entailment: a true claim about a visible attribute (colour, shape, count, position, size);
    - neutral: an unverifiable predicate ("... are made of wood") about the shapes the image shows;
    - contradiction: half the time a false claim about a visible attribute, half the time an unverifiable
      predicate about shapes the image does not show (wrong colour and/or shape), which asserts they are there.

    Hypotheses of the unverifiable kind are neutral or contradictions and claims are entailments or
    contradictions, so the text alone narrows the label to two and the image decides between them.
    """
    if label not in VE_LABELS:
        raise ValueError(f"Unknown SNLI-VE label {label!r}; expected one of {list(VE_LABELS)}.")
    if label == "entailment" or (label == "contradiction" and rng.random() < 0.5):
        attribute = rng.choice(_CLAIM_ATTRIBUTES)
        actual = scene.count if attribute == "count" else getattr(scene, attribute)
        if label == "entailment":
            return "true_claim", _claim(attribute, actual, rng)
        wrong = rng.choice([value for value in _attribute_values(attribute) if value != actual])
        return "false_claim", _claim(attribute, wrong, rng)
    singular, plural = rng.choice(_UNVERIFIABLE_PREDICATES)
    predicate = singular if scene.count == 1 else plural
    form = rng.choice(["colour", "shape", "both"])
    colour, shape = scene.colour, scene.shape
    if label == "neutral":
        return "unverifiable", f"{_subject(colour, shape, scene.count, form)} {predicate}"
    change_colour = form == "colour" or (form == "both" and rng.random() < 0.5)
    if change_colour:
        colour = rng.choice([c for c in COLOURS if c != scene.colour])
    else:
        shape = rng.choice([s for s in SHAPES if s != scene.shape])
    return "absent_subject", f"{_subject(colour, shape, scene.count, form)} {predicate}"


# ------------------------------------------------------------------------------------------ vocabulary


def synthetic_vocabulary() -> list[str]:
    """Every word any synthetic text (caption, question, answer, statement, hypothesis) can contain, sorted.

    Used to build a small WordPiece vocabulary for tiny text towers trained on ``synthetic-shapes``; found by
    enumerating every scene and drawing each text generator many times (deterministically).
    """
    texts: list[str] = list(VQA_ANSWERS)
    scenes = [
        SyntheticScene(colour, shape, size, position, count)
        for colour in COLOURS
        for shape in SHAPES
        for size in SIZES
        for position in POSITIONS
        for count in COUNTS
    ]
    for index, scene in enumerate(scenes):
        texts += scene_captions(scene)
        rng = random.Random(f"{SYNTHETIC_DATASET_NAME}/vocabulary/{index}")
        for _ in range(12):
            texts.append(make_vqa_pair(scene, rng)[1])
            texts += [make_entailment_example(scene, label, rng)[1] for label in VE_LABELS]
    parameters = {
        "both_colour": list(COLOURS),
        "both_shape": list(SHAPES),
        "exactly_one_class": list(SYNTHETIC_CLASS_NAMES),
        "total_count": [str(total) for total in range(2, 7)],
        "same_position": list(POSITIONS),
    }
    for kind in NLVR_STATEMENT_TYPES:
        texts += [NlvrStatement(kind, parameter).text() for parameter in parameters.get(kind, [""])]
    return sorted({word for text in texts for word in re.findall(r"[a-z0-9]+", text.lower())})


# ------------------------------------------------------------------------------------------ datasets


def _scene_rng(seed: int, split: str, index: int, stream: str) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, so they are stable across processes and platforms.
    return random.Random(f"{SYNTHETIC_DATASET_NAME}/{seed}/{split}/{index}/{stream}")


def _scene_features() -> dict[str, datasets.Value]:
    return {
        "colour": datasets.Value("string"),
        "shape": datasets.Value("string"),
        "size": datasets.Value("string"),
        "position": datasets.Value("string"),
        "count": datasets.Value("int32"),
    }


def synthetic_features(task: str = "caption") -> datasets.Features:
    """The ``datasets.Features`` of a synthetic split for ``task``."""
    _check_task(task)
    class_label = datasets.ClassLabel(names=list(SYNTHETIC_CLASS_NAMES))
    if task == "nlvr":
        scene = _scene_features()
        return datasets.Features(
            {
                "image_left": datasets.Image(),
                "image_right": datasets.Image(),
                "statement": datasets.Value("string"),
                "nlvr_label": datasets.Value("bool"),
                "statement_type": datasets.Value("string"),
                "left": scene,
                "right": scene,
            }
        )
    features = {
        "image": datasets.Image(),
        "caption": datasets.Value("string"),
        "captions": datasets.List(datasets.Value("string")),
        "label": class_label,
        **_scene_features(),
    }
    if task == "retrieval":
        features["image_id"] = datasets.Value("int64")
    if task == "vqa":
        features.update(
            {
                "question": datasets.Value("string"),
                "answer": datasets.Value("string"),
                "answer_label": datasets.ClassLabel(names=list(VQA_ANSWERS)),
                "question_type": datasets.Value("string"),
            }
        )
    if task == "snli-ve":
        features.update(
            {
                "hypothesis": datasets.Value("string"),
                "gold_label": datasets.Value("string"),
                "hypothesis_type": datasets.Value("string"),
            }
        )
    return datasets.Features(features)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"Unknown synthetic task {task!r}; expected one of {list(TASKS)}.")


def _check_image_size(image_size: int) -> None:
    if image_size < _MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be at least {_MIN_IMAGE_SIZE} pixels to draw legible shapes, got {image_size}."
        )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} for {SYNTHETIC_DATASET_NAME}; expected one of {list(SPLITS)}.")


def _caption_row(scene: SyntheticScene) -> dict:
    captions = scene_captions(scene)
    return {"caption": captions[0], "captions": captions, "label": scene.label, **asdict(scene)}


def build_synthetic_split(
    split: str = "train", num_samples: int = 2000, image_size: int = 64, seed: int = 0, task: str = "caption"
) -> datasets.Dataset:
    """Generate one split of ``synthetic-shapes`` for ``task`` (one of :data:`TASKS`).

    Rows of "caption": ``image``, ``caption``, ``captions`` (variants), ``label`` and the scene attributes
    (``colour``, ``shape``, ``size``, ``position``, ``count``). "retrieval" has the same columns plus ``image_id``,
    with :data:`CAPTIONS_PER_IMAGE` rows per image (one per caption variant, in ``caption``) sharing its
    ``image_id``: ``num_samples`` counts images there. "vqa" adds ``question``, ``answer``, ``answer_label``
    (index into :data:`VQA_ANSWERS`) and ``question_type``; "nlvr" rows hold ``image_left``, ``image_right``,
    ``statement``, ``nlvr_label``, ``statement_type`` and the two scenes; "snli-ve" adds ``hypothesis``,
    ``gold_label`` (one of :data:`VE_LABELS`, cycling so the labels are exactly balanced) and ``hypothesis_type``.
    """
    _check_task(task)
    _check_split(split)
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
    _check_image_size(image_size)
    rows = []
    for index in range(num_samples):
        scene_rng = _scene_rng(seed, split, index, "scene")
        if task == "nlvr":
            left, right, statement, truth = make_nlvr_example(_scene_rng(seed, split, index, "nlvr"))
            rows.append(
                {
                    "image_left": render_scene(left, image_size, scene_rng),
                    "image_right": render_scene(right, image_size, scene_rng),
                    "statement": statement.text(),
                    "nlvr_label": truth,
                    "statement_type": statement.statement_type,
                    "left": asdict(left),
                    "right": asdict(right),
                }
            )
            continue
        scene = sample_scene(scene_rng)
        row = {"image": render_scene(scene, image_size, scene_rng), **_caption_row(scene)}
        if task == "retrieval":
            rows += [{**row, "caption": caption, "image_id": index} for caption in row["captions"]]
            continue
        if task == "snli-ve":
            label = VE_LABELS[index % len(VE_LABELS)]
            kind, hypothesis = make_entailment_example(scene, label, _scene_rng(seed, split, index, "snli-ve"))
            row.update(hypothesis=hypothesis, gold_label=label, hypothesis_type=kind)
        if task == "vqa":
            question_type, question, answer = make_vqa_pair(scene, _scene_rng(seed, split, index, "vqa"))
            row.update(
                question=question, answer=answer, answer_label=VQA_ANSWERS.index(answer), question_type=question_type
            )
        rows.append(row)
    features = synthetic_features(task)
    columns = {name: [row[name] for row in rows] for name in features}
    return datasets.Dataset.from_dict(columns, features=features, split=datasets.Split(split))


def build_synthetic_dataset(
    num_train: int = 2000, num_validation: int = 500, image_size: int = 64, seed: int = 0, task: str = "caption"
) -> datasets.DatasetDict:
    """Generate ``synthetic-shapes`` as a ``DatasetDict`` with "train" and "validation" splits.

    The splits use independent random streams derived from ``seed``; ``num_validation=0`` leaves the
    validation split out. Images are stored with the ``datasets.Image`` feature, so the result serialises
    with ``save_to_disk``/``push_to_hub``.
    """
    if num_validation < 0:
        raise ValueError(f"num_validation must be >= 0, got {num_validation}.")
    splits = {"train": build_synthetic_split("train", num_train, image_size, seed, task)}
    if num_validation:
        splits["validation"] = build_synthetic_split("validation", num_validation, image_size, seed, task)
    return datasets.DatasetDict(splits)


def zero_shot_prompts(
    class_names: Sequence[str] = SYNTHETIC_CLASS_NAMES, templates: Sequence[str] = ZERO_SHOT_TEMPLATES
) -> list[list[str]]:
    """Prompts for zero-shot classification: ``prompts[i]`` fills every template with class ``i``."""
    return [[template.format(name) for template in templates] for name in class_names]
