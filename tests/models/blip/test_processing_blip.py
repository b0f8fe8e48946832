"""BLIP image processor and processor against the original BLIP preprocessing recorded in the fixtures."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors import safe_open
from transformers import AutoProcessor, AutoTokenizer, BertTokenizer

from hf_vlp.models.blip import (
    VlpBlipConfig,
    VlpBlipImageProcessor,
    VlpBlipProcessor,
    add_blip_special_tokens,
    blip_special_token_ids,
    pre_caption,
    pre_question,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "originals"
PROCESSOR_LOGGER = "hf_vlp.models.blip.processing_blip"


def fixture(case: str) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    with safe_open(str(FIXTURES / case / "inputs.safetensors"), "np") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        strings = {name: json.loads(value) if value.startswith("[") else value for name, value in handle.metadata().items()}
    return tensors, strings


def special_ids(case: str = "blip_pretrain") -> dict[str, int]:
    return json.loads((FIXTURES / case / "original_config.json").read_text())["_tokenizer"]


def processor(**kwargs) -> VlpBlipProcessor:
    # transformers 5 reads the vocabulary file from `vocab=`
    tokenizer = BertTokenizer(vocab=str(FIXTURES / "blip_pretrain" / "vocab.txt"), do_lower_case=True)
    return VlpBlipProcessor(VlpBlipImageProcessor(size=32), tokenizer, **kwargs)


# ---------------------------------------------------------------- text normalisation


def test_pre_caption_matches_the_fixture() -> None:
    _, strings = fixture("blip_pretrain")
    assert [pre_caption(caption, 30) for caption in strings["raw_captions"]] == strings["captions_after_pre_caption"]


@pytest.mark.parametrize(
    ("caption", "max_words", "expected"),
    [
        ("A Dog, sitting on the GRASS.", 30, "a dog, sitting on the grass"),  # commas stay (unlike ALBEF)
        ('it\'s a "quote": #1; ~*? (yes)!', 30, "it's a quote 1 ? yes"),
        ("black-and-white/grey", 30, "black-and-white/grey"),  # hyphens and slashes stay
        ("  two   dogs \t\t playing  \n", 30, "two dogs playing"),
        ("one two three four five", 3, "one two three"),
    ],
)
def test_pre_caption_cases(caption: str, max_words: int, expected: str) -> None:
    assert pre_caption(caption, max_words) == expected


@pytest.mark.parametrize(
    ("question", "max_words", "expected"),
    [
        ("What color is the car?", 50, "what color is the car?"),
        ("How many dogs (big) are there!.", 50, "how many dogs big are there"),
        ("is it a b c d", 3, "is it a"),
        ("two  spaces ", 50, "two  spaces"),  # no squeezing, as the original
    ],
)
def test_pre_question_cases(question: str, max_words: int, expected: str) -> None:
    assert pre_question(question, max_words) == expected


# ---------------------------------------------------------------- tokenisation


def test_captions_match_the_original_pretraining_ids() -> None:
    tensors, strings = fixture("blip_pretrain")
    batch = processor()(text=strings["raw_captions"], padding="max_length", max_length=30, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}
    np.testing.assert_array_equal(batch["input_ids"].numpy(), tensors["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"].numpy(), tensors["attention_mask"])


def test_prompted_captions_match_the_original_captioner_ids() -> None:
    tensors, strings = fixture("blip_caption")
    raw = [caption[len("a picture of ") :] for caption in strings["captions_with_prompt"]]
    blip = processor()
    batch = blip(text=raw, add_prompt=True, max_length=40, return_tensors="np")
    np.testing.assert_array_equal(batch["input_ids"], tensors["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"], tensors["attention_mask"])
    assert blip.prompt == strings["prompt"] == "a picture of "
    assert blip.prompt_length == int(tensors["prompt_length"]) == 4
    prompt_ids = blip(text=blip.prompt)["input_ids"][0][: blip.prompt_length]  # [CLS] a picture of
    assert prompt_ids[1:] == tensors["prompt_input_ids_for_generate"][0, 1:].tolist()


def test_questions_match_the_original_vqa_ids() -> None:
    tensors, strings = fixture("blip_vqa")
    questions = ["What color is the car?", "How many dogs are there?"]
    assert processor().normalize_text(questions, text_kind="question") == strings["questions_after_pre_question"]
    batch = processor()(text=questions, text_kind="question", return_tensors="np")
    expected = tensors["question_input_ids"].copy()
    expected[:, 0] = special_ids()["cls_token_id"]  # the model, not the processor, puts [ENC] first
    np.testing.assert_array_equal(batch["input_ids"], expected)
    np.testing.assert_array_equal(batch["attention_mask"], tensors["question_attention_mask"])


def test_special_tokens_are_added_as_the_original_and_found_by_name() -> None:
    blip = processor()
    expected = special_ids()
    ids = blip.special_token_ids()
    assert ids == {name: expected[name] for name in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id",
                                                     "bos_token_id")} | {"enc_token_id": expected["enc_token_id"]}
    assert len(blip.tokenizer) == expected["vocab_size_with_added_tokens"]
    assert add_blip_special_tokens(blip.tokenizer) is blip.tokenizer and len(blip.tokenizer) == 66  # idempotent
    # another vocabulary order: ids follow the names, and the config built from them validates
    words = ["hello", "[SEP]", "[PAD]", "world", "[MASK]", "[CLS]", "[UNK]"]
    shuffled = BertTokenizer(vocab={word: index for index, word in enumerate(words)})
    ids = blip_special_token_ids(add_blip_special_tokens(shuffled))
    assert ids == {"pad_token_id": 2, "cls_token_id": 5, "sep_token_id": 1, "mask_token_id": 4, "bos_token_id": 7,
                   "enc_token_id": 8}
    config = VlpBlipConfig(text_config=dict(vocab_size=len(shuffled), hidden_size=16, num_attention_heads=2, **ids))
    assert config.text_config.enc_token_id == 8
    with pytest.raises(ValueError, match="bos_token_id, enc_token_id"):
        blip_special_token_ids(BertTokenizer(vocab={word: index for index, word in enumerate(words)}))


def test_truncation_keeps_sep_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    blip = processor()
    long_caption = " ".join(["dog"] * 40)
    with caplog.at_level(logging.WARNING, logger=PROCESSOR_LOGGER):
        ids = blip(text=[long_caption, "a cat"], max_length=10, max_words=50)["input_ids"]
    assert ids[0] == [2] + [9] * 8 + [3] and ids[1] == [2, 5, 10, 3] + [0] * 6
    assert any("1 of 2 texts were longer than max_length=10" in record.getMessage() for record in caplog.records)
    with pytest.raises(ValueError, match="more than max_length=10"):
        blip(text=long_caption, max_length=10, truncation=False)
    assert len(blip(text=long_caption)["input_ids"][0]) == 32  # max_words=30 first


# ---------------------------------------------------------------- VQA answers


def test_answers_match_the_original_vqa_ids_with_cls_first() -> None:
    tensors, strings = fixture("blip_vqa")
    cls_id = special_ids()["cls_token_id"]
    for name, answers in (("answer", strings["answer_candidates"]),
                          ("train_answer", [a for row in strings["train_answers"] for a in row])):
        encoded = processor().encode_answers(answers, return_tensors="np")
        expected = tensors[f"{name}_input_ids"].copy()
        expected[:, 0] = cls_id  # the model, not the processor, puts [DEC] first (original: tokenizer(...) then [DEC])
        np.testing.assert_array_equal(encoded["input_ids"], expected)
        np.testing.assert_array_equal(encoded["attention_mask"], tensors[f"{name}_attention_mask"])


def test_answers_are_cls_tokens_sep_padded_to_the_longest_and_decode_back() -> None:
    blip = processor(answer_list=["yes", "a dog", "two cats playing"])
    encoded = blip.encode_answers(return_tensors="pt")  # the stored candidates
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    lengths = mask.sum(1)
    assert ids.shape == (3, 6) and lengths.tolist() == [3, 4, 6]  # "cats" is cat ##s
    assert (ids[:, 0] == 2).all() and (ids[torch.arange(3), lengths - 1] == 3).all()
    assert (ids[mask == 0] == 0).all()
    assert blip.batch_decode(ids, skip_special_tokens=True) == ["yes", "a dog", "two cats playing"]
    # not normalised or truncated, as the original; the same ids as the stock tokenizer with padding='longest'
    reference = blip.tokenizer(["Yes!", "a dog"], padding="longest")
    assert blip.encode_answers(["Yes!", "a dog"])["input_ids"] == reference["input_ids"]


def test_answer_list_is_saved_with_the_processor(tmp_path: Path) -> None:
    blip = processor(answer_list=["yes", "no", "two"])
    blip.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["answer_list"] == ["yes", "no", "two"]
    loaded = VlpBlipProcessor.from_pretrained(tmp_path)
    assert loaded.answer_list == ["yes", "no", "two"]
    assert loaded.encode_answers()["input_ids"] == blip.encode_answers()["input_ids"]


def test_processor_without_answer_list_round_trips_and_needs_answers(tmp_path: Path) -> None:
    processor().save_pretrained(tmp_path)
    loaded = VlpBlipProcessor.from_pretrained(tmp_path)
    assert loaded.answer_list is None
    with pytest.raises(ValueError, match="no answer_list: pass `answers`"):
        loaded.encode_answers()
    assert loaded.encode_answers(["no"])["input_ids"] == [[2, 37, 3]]


# ---------------------------------------------------------------- images


def test_images_match_the_original_transform() -> None:
    for case in ("blip_pretrain", "blip_caption", "blip_vqa"):
        tensors, _ = fixture(case)
        pixels = VlpBlipImageProcessor(size=32)(tensors["raw_images_uint8"], return_tensors="np")["pixel_values"]
        np.testing.assert_allclose(pixels, tensors["pixel_values"], rtol=0, atol=1e-6)


def test_image_processor_matches_torchvision_resize_and_defaults_to_224() -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    original = transforms.Compose([
        transforms.Resize((24, 24), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in ((37, 48, 3), (61, 30))]
    reference = np.stack([original(image.convert("RGB")).numpy() for image in images])
    np.testing.assert_allclose(VlpBlipImageProcessor(size=24)(images, return_tensors="np")["pixel_values"], reference,
                               rtol=0, atol=1e-6)
    default = VlpBlipImageProcessor()
    assert (default.size.height, default.size.width) == (224, 224) and not default.do_center_crop


# ---------------------------------------------------------------- round trip and errors


def test_round_trip_through_auto_processor_keeps_settings_and_tokens(tmp_path: Path) -> None:
    blip = processor(max_length=20, max_words=12, max_question_words=9, prompt="a photo of ")
    blip.save_pretrained(tmp_path)
    VlpBlipConfig(text_config=dict(vocab_size=66, cls_token_id=2, sep_token_id=3, mask_token_id=4, bos_token_id=64,
                                   enc_token_id=65)).save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is VlpBlipProcessor and type(loaded.image_processor) is VlpBlipImageProcessor
    assert (loaded.max_length, loaded.max_words, loaded.max_question_words, loaded.prompt) == (20, 12, 9, "a photo of ")
    assert loaded.special_token_ids() == blip.special_token_ids() and len(loaded.tokenizer) == 66
    assert AutoTokenizer.from_pretrained(tmp_path).get_vocab() == blip.tokenizer.get_vocab()
    text = ["A dog, on the grass!", "two cats"]
    assert loaded(text=text, add_prompt=True)["input_ids"] == blip(text=text, add_prompt=True)["input_ids"]
    both = loaded(images=np.zeros((2, 32, 32, 3), dtype=np.uint8), text=text, return_tensors="pt")
    assert both["pixel_values"].shape == (2, 3, 32, 32) and isinstance(both["input_ids"], torch.Tensor)
    assert "token_type_ids" not in loaded.model_input_names


def test_decode_caption_strips_the_prompt_as_the_original() -> None:
    blip = processor()
    ids = blip(text="a dog sitting", add_prompt=True)["input_ids"][0]  # [CLS] a picture of a dog sitting [SEP]
    assert blip.decode_caption(ids) == "a dog sitting"
    assert blip.decode_caption(ids, strip_prompt=False) == "a picture of a dog sitting"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_length": 2}, ValueError, "max_length"),
        ({"max_words": 0}, ValueError, "max_words"),
        ({"max_question_words": 1.5}, ValueError, "max_question_words"),
        ({"prompt": None}, TypeError, "prompt"),
        ({"answer_list": "yes"}, TypeError, "list of strings"),
        ({"answer_list": []}, ValueError, "empty"),
        ({"answer_list": ["yes", " "]}, ValueError, "entry 1"),
    ],
)
def test_bad_settings_raise(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        processor(**kwargs)


def test_bad_answers_raise() -> None:
    """(The calls every processor rejects are checked in tests/models/test_processing_utils.py.)"""
    with pytest.raises(ValueError, match="entry 0"):
        processor().encode_answers([""])
