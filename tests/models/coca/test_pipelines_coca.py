"""CoCa through transformers' front doors: the Auto classes resolve saved folders to the CoCa classes, the
zero-shot-image-classification pipeline scores a saved dual encoder (or captioner) as the model does with the saved
prompt template, and the image-text-to-text pipeline captions as ``generate`` does, with or without a prompt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    pipeline,
)

import hf_vlp  # noqa: F401  (registers the Auto classes and pipelines)
from hf_vlp.models.clip.tokenization_clip import clip_tokenizer_from_bpe
from hf_vlp.models.coca import (
    VlpCocaConfig,
    VlpCocaDecoderConfig,
    VlpCocaForConditionalGeneration,
    VlpCocaImageProcessor,
    VlpCocaModel,
    VlpCocaPreTrainedModel,
    VlpCocaProcessor,
)
from tests.helpers.tiny_models import tiny_coca_config

pytestmark = pytest.mark.usefixtures("one_thread")

# the coca fixture's vocabulary: CLIP's BPE truncated to 1000 tokens, start-/end-of-text 998/999
BPE = Path(__file__).parents[2] / "fixtures" / "originals" / "coca" / "bpe_simple_vocab_truncated.txt.gz"
CONTEXT = 32  # room for the default generation config's 30 tokens
LABELS = ["a red circle", "a blue square", "a dog"]
STEPS = dict(max_new_tokens=4)


def tiny_coca(
    model_class: type[VlpCocaPreTrainedModel] = VlpCocaModel,
) -> tuple[VlpCocaPreTrainedModel, VlpCocaProcessor]:
    """A tiny CoCa head or tower (``tiny_coca_config``'s sizes, 16 px images) with a processor over the fixture's BPE
    vocabulary and a 32-token context."""
    tokenizer = clip_tokenizer_from_bpe(BPE)
    vocabulary = {"vocab_size": len(tokenizer)}
    text = {**vocabulary, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "max_position_embeddings": CONTEXT}
    config = tiny_coca_config(text=text, decoder=vocabulary)
    if not isinstance(config, model_class.config_class):  # a tower: its own part of the config
        config = next(part for part in (config.vision_config, config.text_config)
                      if isinstance(part, model_class.config_class))
    torch.manual_seed(0)
    processor = VlpCocaProcessor(VlpCocaImageProcessor(size=16, crop_size=16), tokenizer, context_length=CONTEXT)
    return model_class(config).eval(), processor


def image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A saved dual encoder and a saved captioner, each with its processor."""
    root = tmp_path_factory.mktemp("coca")
    saved = {}
    for name, model_class in (("model", VlpCocaModel), ("captioner", VlpCocaForConditionalGeneration)):
        model, processor = tiny_coca(model_class)
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
        saved[name] = root / name
    return saved


def test_the_auto_classes_resolve_saved_folders_to_the_coca_classes(folders: dict[str, Path]) -> None:
    assert type(AutoConfig.for_model("hf_vlp_coca_decoder")) is VlpCocaDecoderConfig
    for name, folder in folders.items():
        assert type(AutoConfig.from_pretrained(folder)) is VlpCocaConfig
        processor = AutoProcessor.from_pretrained(folder)
        assert type(processor) is VlpCocaProcessor and processor.context_length == CONTEXT
        assert type(AutoImageProcessor.from_pretrained(folder)) is VlpCocaImageProcessor
        # the dual encoder loads from either folder: a captioner's decoder weights are left out, nothing is missing
        for auto_class in (AutoModel, AutoModelForZeroShotImageClassification):
            model, info = auto_class.from_pretrained(folder, output_loading_info=True)
            assert type(model) is VlpCocaModel and not info["missing_keys"], (name, info)
    captioner, info = AutoModelForImageTextToText.from_pretrained(folders["captioner"], output_loading_info=True)
    assert type(captioner) is VlpCocaForConditionalGeneration
    assert not info["missing_keys"] and not info["unexpected_keys"], info


@pytest.mark.parametrize("name", ["model", "captioner"])
def test_zero_shot_pipeline_scores_the_saved_prompts_as_the_model_does(folders: dict[str, Path], name: str) -> None:
    classifier = pipeline("zero-shot-image-classification", model=str(folders[name]))
    assert type(classifier.model) is VlpCocaModel
    result = classifier(image(), candidate_labels=LABELS)
    assert sorted(entry["label"] for entry in result) == sorted(LABELS)

    # the prompts go through the saved processor, padded with 0 to the full context as open_clip does: the class
    # token's position, and so the text embedding, depends on it (the bare tokenizer pads to the longest prompt)
    model, processor = VlpCocaModel.from_pretrained(folders[name]).eval(), classifier.text_processor
    assert type(processor) is VlpCocaProcessor
    prompts = [processor.prompt_template.format(label) for label in LABELS]  # "a photo of a {}."
    with torch.no_grad():
        logits = model(**processor(images=image(), text=prompts, return_tensors="pt")).logits_per_image
    expected = dict(zip(LABELS, logits.softmax(-1)[0].tolist()))
    assert {entry["label"]: pytest.approx(entry["score"], abs=1e-6) for entry in result} == expected


def test_image_text_to_text_pipeline_captions_as_generate_does(folders: dict[str, Path]) -> None:
    captioner = pipeline("image-text-to-text", model=str(folders["captioner"]))
    model, processor = captioner.model, captioner.processor
    assert type(model) is VlpCocaForConditionalGeneration and type(processor) is VlpCocaProcessor

    def generated(prompt: str) -> str:
        with torch.no_grad():
            ids = model.generate(**processor(images=image(), text=prompt, return_tensors="pt"), **STEPS)
        return processor.post_process_image_text_to_text(ids)[0]

    # text="" decodes from start-of-text alone (the pipeline needs a text); a prompt is continued and kept in front
    unprompted = captioner(images=image(), text="", **STEPS)
    assert unprompted == [{"input_text": "", "generated_text": generated("")}]
    prompted = captioner(images=image(), text="a photo of", **STEPS)[0]["generated_text"]
    assert prompted == generated("a photo of") and prompted.startswith("a photo of ") and "!" not in prompted
    continuation = captioner(images=image(), text="a photo of", return_full_text=False, **STEPS)[0]["generated_text"]
    assert prompted == "a photo of" + continuation
    batch = captioner(images=[image(), image(1)], text=["a photo of", "a photo of"], **STEPS)
    assert [entry["generated_text"] for entry in batch][0] == prompted


def test_generated_ids_decode_up_to_their_end_of_text() -> None:
    """The pad id 0 is also the ``!`` token: what follows end-of-text is cut, not decoded as ``!!!``."""
    _, processor = tiny_coca()
    tokenizer = processor.tokenizer
    sot, eot = tokenizer.bos_token_id, tokenizer.eos_token_id
    words = tokenizer("a photo", add_special_tokens=False)["input_ids"]
    rows = torch.tensor([[sot, *words, eot, 0, 0], [sot, *words, 0, 0, 0]])
    assert processor.post_process_image_text_to_text(rows) == ["a photo", "a photo !!!"]
    assert processor.post_process_image_text_to_text(rows[0]) == "a photo"
    assert processor.post_process_image_text_to_text(rows[0].tolist(), skip_special_tokens=False) == (
        "<|startoftext|>a photo <|endoftext|>"
    )
