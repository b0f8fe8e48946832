"""Zero-shot classification and batched embedding, checked on a toy dual encoder whose scores are known exactly."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from hf_vlp.evaluation import (
    build_zero_shot_classifier,
    class_prompts,
    embed_images,
    embed_texts,
    zero_shot_accuracy,
)

COLOUR_WORDS = {"red": 1, "green": 2, "blue": 3}
UNKNOWN_ID, PAD_ID = 4, 0
FILLER_WEIGHT = 0.3  # every non-colour word adds FILLER_WEIGHT along the 4th axis

# Off-primary colours so that every image has a strict ranking of the three classes (no ties).
RED, GREEN, BLUE = (255, 60, 20), (20, 255, 60), (60, 20, 255)


class ToyProcessor:
    """Word-level tokenizer and a to-tensor image processor; logs calls to check batching."""

    def __init__(self, prompt_template: str | None = None, with_format_labels: bool = False) -> None:
        self.log: list[tuple[str, int]] = []
        if prompt_template is not None:
            self.prompt_template = prompt_template
        if with_format_labels:
            self.format_labels = lambda labels: [f"a {label} thing" for label in labels]

    def __call__(self, text=None, images=None, return_tensors="pt", padding=False):
        assert return_tensors == "pt"
        if images is not None:
            self.log.append(("images", len(images)))
            pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images])
            return {"pixel_values": torch.from_numpy(pixels).permute(0, 3, 1, 2)}
        self.log.append(("text", len(text)))
        ids = [[COLOUR_WORDS.get(w, UNKNOWN_ID) for w in t.lower().replace(".", " ").split()] for t in text]
        if not padding and len({len(i) for i in ids}) > 1:
            raise ValueError("texts of different lengths need padding=True")
        length = max(len(i) for i in ids)
        input_ids = torch.tensor([i + [PAD_ID] * (length - len(i)) for i in ids])
        return {"input_ids": input_ids, "attention_mask": (input_ids != PAD_ID).long()}


class ToyDualEncoder(nn.Module):
    """Image feature = 2 x mean RGB (4th axis 0); text feature = sum of word vectors (colour words one-hot in RGB)."""

    def __init__(self) -> None:
        super().__init__()
        table = torch.zeros(5, 4)
        table[1, 0] = table[2, 1] = table[3, 2] = 1.0
        table[UNKNOWN_ID, 3] = FILLER_WEIGHT
        self.word_vectors = nn.Embedding.from_pretrained(table)
        self.modes_seen: list[bool] = []

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.modes_seen.append(self.training)
        rgb = pixel_values.mean(dim=(2, 3)) * 2.0
        return torch.cat([rgb, torch.zeros_like(rgb[:, :1])], dim=1)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.modes_seen.append(self.training)
        vectors = self.word_vectors(input_ids)
        if attention_mask is not None:
            vectors = vectors * attention_mask[..., None]
        return vectors.sum(dim=1)


def solid(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (2, 2), colour)


@pytest.fixture
def colour_set() -> tuple[list[Image.Image], list[int]]:
    images = [solid(RED)] * 4 + [solid(GREEN)] * 3 + [solid(BLUE)] * 3
    labels = [0] * 4 + [1] * 3 + [2] * 3  # indices into ["red", "green", "blue"]
    return images, labels


def test_perfect_classifier_scores_one(colour_set):
    images, labels = colour_set
    metrics = zero_shot_accuracy(ToyDualEncoder(), ToyProcessor(), images, labels, ["red", "green", "blue"])
    assert metrics == {"top1": 1.0, "top5": 1.0, "chance_top1": 1 / 3, "chance_top5": 1.0}


def test_shuffled_class_names_give_the_exact_known_accuracy(colour_set):
    # Class order red, blue, green against labels written for red, green, blue: only red stays right at top-1;
    # green images rank (green, blue, red) so their label "blue" is 2nd; blue images' label "green" is 3rd.
    images, labels = colour_set
    metrics = zero_shot_accuracy(
        ToyDualEncoder(), ToyProcessor(), images, labels, ["red", "blue", "green"], topk=(1, 2, 5)
    )
    assert metrics["top1"] == pytest.approx(0.4)
    assert metrics["top2"] == pytest.approx(0.7)
    assert metrics["top5"] == 1.0  # clipped to 3 classes
    assert metrics["chance_top2"] == pytest.approx(2 / 3)


def test_labels_may_be_class_names(colour_set):
    images, labels = colour_set
    names = ["red", "green", "blue"]
    by_name = zero_shot_accuracy(ToyDualEncoder(), ToyProcessor(), images, [names[i] for i in labels], names)
    assert by_name["top1"] == 1.0


def test_templates_are_averaged_after_normalising_each_prompt():
    classifier = build_zero_shot_classifier(
        ToyDualEncoder(), ToyProcessor(), ["red", "green"], templates=["a photo of a {}.", "{}"]
    )
    # "a photo of a red." = red + 4 filler words; "red" = red alone. Normalise each, average, normalise.
    with_filler = torch.tensor([1.0, 0.0, 0.0, 4 * FILLER_WEIGHT])
    with_filler = with_filler / with_filler.norm()
    alone = torch.tensor([1.0, 0.0, 0.0, 0.0])
    expected_red = (with_filler + alone) / (with_filler + alone).norm()
    assert classifier.shape == (2, 4)
    assert torch.allclose(classifier[0], expected_red, atol=1e-6)
    assert torch.allclose(classifier[1], expected_red[[1, 0, 2, 3]], atol=1e-6)
    assert torch.allclose(classifier.norm(dim=-1), torch.ones(2))


def test_all_prompts_are_encoded_once_in_batches(colour_set):
    images, labels = colour_set
    processor = ToyProcessor()
    templates = ["a {}", "the {} one", "{}"]
    zero_shot_accuracy(
        ToyDualEncoder(), processor, images, labels, ["red", "green", "blue"], templates, batch_size=4,
        text_batch_size=4,
    )
    text_calls = [n for kind, n in processor.log if kind == "text"]
    image_calls = [n for kind, n in processor.log if kind == "images"]
    assert text_calls == [4, 4, 1]  # 9 prompts, one pass
    assert image_calls == [4, 4, 2]


def test_images_are_read_lazily_one_batch_at_a_time(colour_set):
    images, labels = colour_set
    processor = ToyProcessor()

    def image_stream():
        for image in images:
            processor.log.append(("read", 1))
            yield image

    zero_shot_accuracy(ToyDualEncoder(), processor, image_stream(), labels, ["red", "green", "blue"], batch_size=3)
    unprocessed = 0
    for kind, n in processor.log:
        if kind == "read":
            unprocessed += 1
            assert unprocessed <= 3, "more images were read than one batch before processing"
        elif kind == "images":
            unprocessed -= n
    assert unprocessed == 0


def test_datasets_column_input_is_supported(colour_set):
    images, labels = colour_set
    dataset = datasets.Dataset.from_dict({"image": images, "label": labels}).cast_column("image", datasets.Image())
    metrics = zero_shot_accuracy(
        ToyDualEncoder(), ToyProcessor(), dataset["image"], dataset["label"], ["red", "green", "blue"], batch_size=4
    )
    assert metrics["top1"] == 1.0


def test_processor_prompt_template_and_format_labels_are_used():
    model, names = ToyDualEncoder(), ["red", "green", "blue"]
    explicit = build_zero_shot_classifier(model, ToyProcessor(), names, templates=["a {} thing"])
    from_template = build_zero_shot_classifier(model, ToyProcessor(prompt_template="a {} thing"), names)
    from_format = build_zero_shot_classifier(model, ToyProcessor(with_format_labels=True), names)
    default = build_zero_shot_classifier(model, ToyProcessor(), names)
    assert torch.allclose(explicit, from_template) and torch.allclose(explicit, from_format)
    assert not torch.allclose(explicit, default)  # 1 filler word vs "a photo of a" = 4
    assert class_prompts(ToyProcessor(with_format_labels=True), names, templates=["{}!"])[0] == ["red!"]


def test_callable_templates(colour_set):
    prompts = class_prompts(None, ["red", "blue"], templates=[lambda c: f"itsa {c}", "{} photo"])
    assert prompts == [["itsa red", "red photo"], ["itsa blue", "blue photo"]]


def test_eval_mode_is_used_and_training_mode_restored(colour_set):
    images, labels = colour_set
    model = ToyDualEncoder().train()
    zero_shot_accuracy(model, ToyProcessor(), images, labels, ["red", "green", "blue"])
    assert model.modes_seen and not any(model.modes_seen)
    assert model.training


def test_embeddings_are_normalised_and_batch_size_independent(colour_set):
    images, _ = colour_set
    model = ToyDualEncoder()
    small_batches = embed_images(model, ToyProcessor(), images, batch_size=3)
    one_batch = embed_images(model, ToyProcessor(), images, batch_size=64)
    assert small_batches.shape == (10, 4) and small_batches.dtype == torch.float32
    assert torch.allclose(small_batches, one_batch)
    assert torch.allclose(small_batches.norm(dim=-1), torch.ones(10))
    texts = embed_texts(model, ToyProcessor(), ["red", "a green thing", "blue"], batch_size=2)
    assert torch.allclose(texts[1], torch.tensor([0.0, 1.0, 0.0, 2 * FILLER_WEIGHT]) / math.hypot(1, 0.6))


def test_pixel_values_tensor_needs_no_processor(colour_set):
    images, _ = colour_set
    pixel_values = ToyProcessor()(images=images)["pixel_values"]
    model = ToyDualEncoder()
    from_tensor = embed_images(model, None, pixel_values, batch_size=4)
    assert torch.allclose(from_tensor, embed_images(model, ToyProcessor(), images))


def test_works_with_transformers_clip_model_outputs():
    # transformers 5 CLIP returns a ModelOutput whose pooler_output holds the projected features.
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"vocab_size": 8, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 8, "eos_token_id": 3},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 8, "patch_size": 4},
        projection_dim=8,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    pixel_values = torch.randn(3, 3, 8, 8)
    texts = ["red blue", "green", "blue red green"]
    encoded = ToyProcessor()(text=texts, padding=True)
    reference = model(pixel_values=pixel_values, **encoded)
    assert torch.allclose(embed_images(model, None, pixel_values, batch_size=2), reference.image_embeds, atol=1e-5)
    assert torch.allclose(embed_texts(model, ToyProcessor(), texts, batch_size=2), reference.text_embeds, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"templates": ["a photo"]}, ValueError, "placeholder"),
        ({"labels": [0, 1, 5] + [0] * 7}, ValueError, r"\[0, 3\)"),
        ({"labels": [0] * 11}, ValueError, "11 labels"),
        ({"labels": [0] * 9}, ValueError, "more images than labels"),
        ({"topk": (0,)}, ValueError, "topk"),
        ({"class_names": []}, ValueError, "class_names"),
    ],
)
def test_bad_input_is_rejected_clearly(colour_set, kwargs, error, match):
    images, labels = colour_set
    arguments = {"labels": labels, "class_names": ["red", "green", "blue"], **kwargs}
    with pytest.raises(error, match=match):
        zero_shot_accuracy(ToyDualEncoder(), ToyProcessor(), images, **arguments)


def test_non_dual_encoder_and_single_inputs_are_rejected(colour_set):
    images, _ = colour_set
    with pytest.raises(TypeError, match="get_image_features"):
        embed_images(nn.Linear(2, 2), ToyProcessor(), images)
    with pytest.raises(TypeError, match="single string"):
        embed_texts(ToyDualEncoder(), ToyProcessor(), "red")
    with pytest.raises(TypeError, match="single image"):
        embed_images(ToyDualEncoder(), ToyProcessor(), images[0])
