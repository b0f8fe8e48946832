"""Parity of the ALBEF image processor and processor with the original ALBEF preprocessing (albef_pretrain fixture)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData
from safetensors import safe_open
from transformers import AutoTokenizer, BertTokenizer
from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

from hf_vlp.integrations.model_card import template_text
from hf_vlp.models.albef.image_processing_albef import VlpAlbefImageProcessor
from hf_vlp.models.albef.processing_albef import VlpAlbefProcessor, pre_caption, pre_question

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "originals" / "albef_pretrain"
PROCESSOR_LOGGER = "hf_vlp.models.albef.processing_albef"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@pytest.fixture(scope="module")
def fixture_inputs() -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    with safe_open(str(FIXTURE / "inputs.safetensors"), "np") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        strings = {name: json.loads(value) for name, value in handle.metadata().items()}
    return tensors, strings


@pytest.fixture(scope="module")
def special_ids() -> dict[str, int]:
    return json.loads((FIXTURE / "original_config.json").read_text())["_tokenizer"]


def _tokenizer() -> BertTokenizer:
    # transformers 5 takes the vocabulary file as `vocab=`; `vocab_file=` would be ignored
    return BertTokenizer(vocab=str(FIXTURE / "vocab.txt"))


def _processor(**kwargs) -> VlpAlbefProcessor:
    return VlpAlbefProcessor(VlpAlbefImageProcessor(size=32), _tokenizer(), **kwargs)


@pytest.fixture(scope="module")
def image_processor_registered() -> None:
    """Loading a processor needs AutoImageProcessor to know VlpAlbefImageProcessor: importing hf_vlp registers it."""
    assert get_image_processor_class_from_name("VlpAlbefImageProcessor") is VlpAlbefImageProcessor


# ---------------------------------------------------------------- text normalisation


def test_pre_caption_matches_fixture(fixture_inputs):
    _, strings = fixture_inputs
    assert [pre_caption(caption, 30) for caption in strings["raw_captions"]] == strings["captions_after_pre_caption"]


@pytest.mark.parametrize(
    ("caption", "max_words", "expected"),
    [
        ("A Dog, (Sitting) on the GRASS!", 30, "a dog sitting on the grass"),
        ("it's a \"quote\": #1; ~*?", 30, "its a quote 1"),
        ("black-and-white/grey photo", 30, "black and white grey photo"),
        ("<PERSON> riding a horse", 30, "person riding a horse"),
        ("  two   dogs \t\t playing  \n", 30, "two dogs playing"),
        ("one two three four five six", 4, "one two three four"),
        ("one two three", 3, "one two three"),
    ],
)
def test_pre_caption_cases(caption, max_words, expected):
    assert pre_caption(caption, max_words) == expected


@pytest.mark.parametrize(
    ("question", "max_words", "expected"),
    [
        ("What COLOR is the car?", 30, "what color is the car"),
        ("is it black-and-white/grey?", 30, "is it black and white grey"),
        ("  how many  dogs?  ", 30, "  how many  dogs"),  # only trailing spaces go, runs of spaces stay
        ("a  b c d", 3, "a  b"),  # the empty string between two spaces counts as a word, as in the original
        ("<person> here", 30, "<person> here"),
    ],
)
def test_pre_question_cases(question, max_words, expected):
    assert pre_question(question, max_words) == expected


# ---------------------------------------------------------------- text encoding


@pytest.mark.parametrize("return_tensors", ["np", "pt"])
def test_text_matches_original_tokenizer(fixture_inputs, special_ids, return_tensors):
    tensors, strings = fixture_inputs
    encoded = _processor()(text=strings["raw_captions"], return_tensors=return_tensors)
    assert set(encoded) == {"input_ids", "attention_mask"}
    ids = np.asarray(encoded["input_ids"])
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, tensors["input_ids"])
    np.testing.assert_array_equal(np.asarray(encoded["attention_mask"]), tensors["attention_mask"])
    assert (ids[:, 0] == special_ids["cls_token_id"]).all()
    assert not (ids == special_ids["sep_token_id"]).any()
    if return_tensors == "pt":
        assert encoded["input_ids"].dtype == torch.int64


def test_questions_use_pre_question(special_ids):
    processor = _processor()
    question = "How many dogs are there?"
    as_question = processor(text=question, text_kind="question")["input_ids"][0]
    tokens = processor.tokenizer.convert_ids_to_tokens(as_question)
    assert tokens == ["[CLS]", "how", "many", "dog", "##s", "are", "there"]
    assert processor.normalize_text(["a  b c"], text_kind="question", max_words=2) == ["a "]
    assert processor.normalize_text(["a  b c"], text_kind="caption", max_words=2) == ["a b"]


def test_truncation_keeps_cls_and_warns(fixture_inputs, caplog):
    _, strings = fixture_inputs
    full = _processor()(text=strings["raw_captions"])["input_ids"]
    processor = _processor(max_length=5)
    with caplog.at_level(logging.WARNING, logger=PROCESSOR_LOGGER):
        cut = processor(text=strings["raw_captions"])["input_ids"]
    # the original's truncation: [CLS] plus the first max_length - 1 tokens
    assert cut == [row[:5] for row in full]
    warnings = [record.getMessage() for record in caplog.records if record.name == PROCESSOR_LOGGER]
    assert len(warnings) == 1 and "4 of 4 texts" in warnings[0] and "max_length=5" in warnings[0]
    with pytest.raises(ValueError, match="max_length=5"):
        processor(text=strings["raw_captions"], truncation=False)
    assert processor(text="a dog", truncation=False)["input_ids"] == [[2, 5, 9]]


def test_max_words_and_max_length_per_call(fixture_inputs):
    _, strings = fixture_inputs
    processor = _processor()
    three_words = processor(text=strings["raw_captions"][1], max_words=3)["input_ids"][0]
    assert processor.tokenizer.convert_ids_to_tokens(three_words) == ["[CLS]", "two", "cat", "##s", "playing"]
    assert processor(text=strings["raw_captions"][0], max_length=3)["input_ids"][0] == [2, 5, 9]


def test_padding_max_length(fixture_inputs, special_ids):
    tensors, strings = fixture_inputs
    encoded = _processor(max_length=14)(text=strings["raw_captions"], padding="max_length", return_tensors="np")
    assert encoded["input_ids"].shape == (4, 14)
    np.testing.assert_array_equal(encoded["input_ids"][:, :11], tensors["input_ids"])
    assert (encoded["input_ids"][:, 11:] == special_ids["pad_token_id"]).all()
    assert (encoded["attention_mask"][:, 11:] == 0).all()


def test_special_tokens_are_found_by_name():
    words = ["a", "dog", "yes"]
    specials = ["[UNK]", "[MASK]", "[SEP]", "[PAD]", "[CLS]"]  # deliberately not BERT's usual order
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(words + specials)})
    processor = VlpAlbefProcessor(VlpAlbefImageProcessor(size=8), tokenizer)
    cls_id, sep_id, pad_id = (tokenizer.convert_tokens_to_ids(token) for token in ("[CLS]", "[SEP]", "[PAD]"))
    assert (cls_id, sep_id, pad_id) == (7, 5, 6)
    assert processor(text=["a dog", "dog"])["input_ids"] == [[cls_id, 0, 1], [cls_id, 1, pad_id]]
    answers = processor.encode_answers(["yes", "a dog"])["input_ids"]
    assert answers == [[cls_id, 2, sep_id, pad_id], [cls_id, 0, 1, sep_id]]


# ---------------------------------------------------------------- answers


def test_answers_end_with_sep_like_the_original(special_ids):
    processor = _processor(answer_list=["yes", "no", "two", "red ball"])
    encoded = processor.encode_answers(return_tensors="np")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    assert ids.shape == (4, 4)
    lengths = mask.sum(1)
    np.testing.assert_array_equal(lengths, [3, 3, 3, 4])
    assert (ids[:, 0] == special_ids["cls_token_id"]).all()
    assert (ids[np.arange(4), lengths - 1] == special_ids["sep_token_id"]).all()
    # the original appends the text '[SEP]' and lets its tokenizer add [CLS]
    tokenizer = processor.tokenizer
    for row, answer in zip(processor.encode_answers(["red ball", "two"])["input_ids"], ["red ball", "two"]):
        original = [tokenizer.cls_token_id] + tokenizer(answer + "[SEP]", add_special_tokens=False)["input_ids"]
        assert row[: len(original)] == original
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["yes", "no", "two", "red ball"]


# ---------------------------------------------------------------- images


def test_images_match_original_transform(fixture_inputs):
    tensors, _ = fixture_inputs
    raw, expected = tensors["raw_images_uint8"], tensors["pixel_values"]
    image_processor = VlpAlbefImageProcessor(size=32)
    as_batch = image_processor(raw, return_tensors="pt")["pixel_values"]
    assert as_batch.dtype == torch.float32
    np.testing.assert_allclose(as_batch.numpy(), expected, rtol=0, atol=1e-6)
    as_pil = image_processor([PIL.Image.fromarray(image) for image in raw], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(as_pil, expected, rtol=0, atol=1e-6)
    as_chw = [torch.from_numpy(image).permute(2, 0, 1) for image in raw]
    from_tensors = image_processor(as_chw, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(from_tensors, expected, rtol=0, atol=1e-6)


def test_matches_torchvision_original_pipeline_on_modes_and_sizes():
    transforms = pytest.importorskip("torchvision.transforms")
    original = transforms.Compose(
        [
            transforms.Resize((24, 24), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    rng = np.random.default_rng(0)
    images = [
        PIL.Image.fromarray(rng.integers(0, 256, (37, 48, 3), dtype=np.uint8)),
        PIL.Image.fromarray(rng.integers(0, 256, (61, 30), dtype=np.uint8)),
        PIL.Image.fromarray(rng.integers(0, 256, (29, 41, 4), dtype=np.uint8)),
        PIL.Image.fromarray(rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)).convert("P"),
        PIL.Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)),
    ]
    # the original converts to RGB when it opens the image, before any transform
    reference = np.stack([original(image.convert("RGB")).numpy() for image in images])
    ours = VlpAlbefImageProcessor(size=24)(images, return_tensors="np")["pixel_values"]
    assert ours.shape == (5, 3, 24, 24)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


def test_image_processor_defaults_and_round_trip(tmp_path):
    default = VlpAlbefImageProcessor()
    assert (default.size.height, default.size.width) == (256, 256)
    assert not default.do_center_crop
    np.testing.assert_allclose(default.image_mean, CLIP_MEAN)
    np.testing.assert_allclose(default.image_std, CLIP_STD)
    processor = VlpAlbefImageProcessor(size=40)
    processor.save_pretrained(tmp_path)
    loaded = VlpAlbefImageProcessor.from_pretrained(tmp_path)
    assert (loaded.size.height, loaded.size.width) == (40, 40)
    image = np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    pixels = loaded(image, return_tensors="np")["pixel_values"]
    assert pixels.shape == (1, 3, 40, 40)
    np.testing.assert_array_equal(pixels, processor(image, return_tensors="np")["pixel_values"])


def test_bad_images_raise_clear_errors():
    with pytest.raises(ValueError, match="channel axis"):
        VlpAlbefImageProcessor(size=8)(np.zeros((8, 8, 2), dtype=np.uint8))
    with pytest.raises(TypeError, match="Unsupported image type"):
        VlpAlbefImageProcessor(size=8)([None])


# ---------------------------------------------------------------- processor


def test_processor_text_and_images_together(fixture_inputs):
    tensors, strings = fixture_inputs
    batch = _processor()(images=list(tensors["raw_images_uint8"]), text=strings["raw_captions"], return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    np.testing.assert_array_equal(batch["input_ids"].numpy(), tensors["input_ids"])
    np.testing.assert_allclose(batch["pixel_values"].numpy(), tensors["pixel_values"], rtol=0, atol=1e-6)
    assert "token_type_ids" not in _processor().model_input_names


def test_processor_round_trip_keeps_settings(tmp_path, fixture_inputs, image_processor_registered):
    _, strings = fixture_inputs
    processor = _processor(max_length=9, max_words=6, answer_list=["yes", "no", "two"])
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert (saved["max_length"], saved["max_words"], saved["answer_list"]) == (9, 6, ["yes", "no", "two"])

    loaded = VlpAlbefProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded.image_processor, VlpAlbefImageProcessor)
    assert (loaded.max_length, loaded.max_words, loaded.answer_list) == (9, 6, ["yes", "no", "two"])
    assert loaded.encode_answers()["input_ids"] == processor.encode_answers()["input_ids"]
    assert loaded(text=strings["raw_captions"])["input_ids"] == processor(text=strings["raw_captions"])["input_ids"]
    assert AutoTokenizer.from_pretrained(tmp_path).get_vocab() == processor.tokenizer.get_vocab()


def test_processor_without_answer_list_round_trips(tmp_path, image_processor_registered):
    _processor().save_pretrained(tmp_path)
    loaded = VlpAlbefProcessor.from_pretrained(tmp_path)
    assert loaded.answer_list is None
    with pytest.raises(ValueError, match="no answer_list"):
        loaded.encode_answers()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_length": 1}, ValueError, "max_length"),
        ({"max_length": 2.5}, ValueError, "max_length"),
        ({"max_words": 0}, ValueError, "max_words"),
        ({"answer_list": "yes"}, TypeError, "list of strings"),
        ({"answer_list": []}, ValueError, "empty"),
        ({"answer_list": ["yes", " "]}, ValueError, "entry 1"),
    ],
)
def test_bad_processor_settings_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        _processor(**kwargs)


def test_tokenizer_without_words_raises():
    empty = BertTokenizer(vocab_file=str(FIXTURE / "vocab.txt"))  # ignored by transformers 5: specials only
    with pytest.raises(ValueError, match="vocab="):
        VlpAlbefProcessor(VlpAlbefImageProcessor(), empty)


# ---------------------------------------------------------------- model card template


def test_model_card_template_renders_every_field():
    fields = {
        "model_name": "albef-tiny",
        "repo_id": "me/albef-tiny",
        "parameters": "1.2M",
        "provenance": "Converted from ALBEF.pth.",
        "evaluation": "Not evaluated yet.",
        "vision_description": "ViT (2 layers, width 48, patch 8, 32px)",
        "text_description": "4-layer, width-32",
        "embed_dim": 16,
        "fusion_layer": 2,
        "how_to_use": 'processor = AutoProcessor.from_pretrained("me/albef-tiny")',
        "license_text": "BSD-3-Clause, as the ALBEF release.",
        "training_losses": "",
    }
    card = ModelCard.from_template(
        ModelCardData(library_name="transformers", tags=["hf_vlp", "albef"]),
        template_str=template_text("albef"),
        **fields,
    )
    assert "{{" not in card.content
    for value in fields.values():
        assert str(value) in card.text
    assert "Align before Fuse: Vision and Language Representation Learning with Momentum Distillation" in card.text
