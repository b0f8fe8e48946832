"""Every VLMo head overfits 8 examples with a few dozen Adam steps, and its own inference shows what it learned: the
dual encoder (each image's caption ranks first), pre-training (ITM on the positives and on the drawn hard negatives,
the masked words), masked LM grounded on the image and on the text alone, VQA (the saved folder answers through the
pipeline's classify strategy), NLVR2 (the pair labels) and retrieval (each image ranks its caption first, with and
without re-ranking). Tiny configs, fixed seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from transformers import pipeline

from hf_vlp.integrations.pipelines import VQA_TASK
from hf_vlp.models.vlmo import (
    VlpVlmoForImageTextRetrieval,
    VlpVlmoForMaskedLM,
    VlpVlmoForPretraining,
    VlpVlmoForQuestionAnswering,
    VlpVlmoForVisualReasoning,
    VlpVlmoImageProcessor,
    VlpVlmoModel,
    VlpVlmoProcessor,
)
from hf_vlp.training.tokenizers import synthetic_wordpiece_tokenizer
from tests.helpers.momentum_checks import assert_loss_fell, train_with_adam
from tests.helpers.tiny_models import MASK_ID, TINY_VLMO, tiny_vlmo_batch, tiny_vlmo_config

NUM_EXAMPLES, STEPS = 8, 60
MASKED = 2  # the caption position every MLM test masks
pytestmark = pytest.mark.usefixtures("one_thread")


def build(model_class: type, **settings: object) -> torch.nn.Module:
    """A wider init than BERT's 0.02, so the tiny model's [CLS] states differ across examples from the start."""
    torch.manual_seed(0)
    return model_class(tiny_vlmo_config(hidden_size=32, intermediate_size=64, initializer_range=0.2, **settings))


def examples(seed: int = 0) -> dict[str, torch.Tensor]:
    return tiny_vlmo_batch(NUM_EXAMPLES, seed)


def masked_words(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Word ``MASKED`` of every caption masked, with its labels."""
    masked, labels = batch["input_ids"].clone(), torch.full_like(batch["input_ids"], -100)
    labels[:, MASKED] = batch["input_ids"][:, MASKED]
    masked[:, MASKED] = MASK_ID
    return masked, labels


def symmetric_contrastive_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    targets = torch.arange(logits_per_image.shape[0])
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets)) / 2


def test_dual_encoder_overfits_and_ranks_each_caption_first() -> None:
    model, batch = build(VlpVlmoModel), examples()
    losses = train_with_adam(model, lambda step: symmetric_contrastive_loss(model(**batch).logits_per_image), 40, 3e-3)
    assert_loss_fell(losses, 40, ratio=0.05)
    with torch.no_grad():
        logits = model(**batch).logits_per_image
    assert logits.argmax(dim=1).tolist() == logits.argmax(dim=0).tolist() == list(range(NUM_EXAMPLES))


def test_pretraining_overfits_itc_itm_on_hard_negatives_and_mlm() -> None:
    model, batch = build(VlpVlmoForPretraining), examples()
    masked, labels = masked_words(batch)

    def step_loss(step: int) -> torch.Tensor:  # the model draws its own hard negatives, a new draw every step
        generator = torch.Generator().manual_seed(step)
        return model(**batch, mlm_input_ids=masked, mlm_labels=labels, generator=generator).loss

    assert_loss_fell(train_with_adam(model, step_loss, STEPS, lr=3e-3), STEPS, ratio=0.1)
    own = torch.arange(NUM_EXAMPLES)
    with torch.no_grad():
        drawn = model(**batch, mlm_input_ids=masked, mlm_labels=labels, generator=torch.Generator().manual_seed(99))
        # the hardest negatives, which the draws favour: each text's most similar other image, each image's text
        similarities = drawn.logits_per_image.masked_fill(torch.eye(NUM_EXAMPLES, dtype=torch.bool), -torch.inf)
        negatives = {"itm_negative_image_indices": similarities.argmax(0),
                     "itm_negative_text_indices": similarities.argmax(1)}
        hardest = model(**batch, mlm_input_ids=masked, mlm_labels=labels, **negatives)
    assert not (drawn.itm_negative_image_indices == own).any() and not (drawn.itm_negative_text_indices == own).any()
    assert drawn.logits_per_image.argmax(dim=1).tolist() == own.tolist()
    assert hardest.itm_labels.tolist() == [1] * NUM_EXAMPLES + [0] * (2 * NUM_EXAMPLES)
    assert torch.equal(hardest.itm_logits.argmax(-1), hardest.itm_labels)  # the positives and both negative kinds
    assert torch.equal(drawn.mlm_logits[:, MASKED].argmax(-1), batch["input_ids"][:, MASKED])


@pytest.mark.parametrize("told_by", ["image", "text"])
def test_masked_lm_overfits_in_fusion_and_text_only_mode(told_by: str) -> None:
    """``image``: every row holds the same masked caption, so only its image (fusion mode) tells the word; ``text``:
    no images, the caption's other words (text-only mode) tell it."""
    model, batch = build(VlpVlmoForMaskedLM), examples()
    masked, labels = masked_words(batch)
    if told_by == "image":
        first_row = {"input_ids": masked[:1], "attention_mask": batch["attention_mask"][:1]}
        inputs = {"pixel_values": batch["pixel_values"], **{k: row.expand_as(masked) for k, row in first_row.items()}}
    else:
        inputs = {"input_ids": masked, "attention_mask": batch["attention_mask"]}
    assert_loss_fell(
        train_with_adam(model, lambda step: model(**inputs, labels=labels).loss, STEPS, lr=3e-3), STEPS, ratio=0.1
    )
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits[:, MASKED].argmax(-1), batch["input_ids"][:, MASKED])


def test_vqa_overfits_and_the_saved_folder_answers_through_the_pipeline(tmp_path: Path) -> None:
    """Questions and images through the processor, then the trained folder through ``pipeline(VQA_TASK)``, whose
    default strategy for a classifier head is ``classify``."""
    answers = ["red", "blue", "two", "three", "left"]
    tokenizer = synthetic_wordpiece_tokenizer()
    processor = VlpVlmoProcessor(
        VlpVlmoImageProcessor(size=TINY_VLMO["image_size"]), tokenizer, max_length=TINY_VLMO["max_text_length"]
    )
    model = build(
        VlpVlmoForQuestionAnswering, id2label=dict(enumerate(answers)), vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id, mask_token_id=tokenizer.mask_token_id,
    )
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)) for _ in range(NUM_EXAMPLES)]
    questions = ["what colour is the square?", "how many circles are there?"] * (NUM_EXAMPLES // 2)
    truth = torch.arange(NUM_EXAMPLES) % len(answers)
    inputs = processor(images=images, text=questions, return_tensors="pt")
    scores = F.one_hot(truth, len(answers)).float()
    assert_loss_fell(
        train_with_adam(model, lambda step: model(**inputs, labels=scores).loss, STEPS, lr=3e-3), STEPS, ratio=0.1
    )
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    results = pipeline(VQA_TASK, model=str(tmp_path))(images, questions, top_k=2)
    assert [result[0]["answer"] for result in results] == [answers[index] for index in truth.tolist()]
    assert all(result[0]["score"] > 0.5 > result[1]["score"] for result in results)


def test_visual_reasoning_overfits() -> None:
    model, batch = build(VlpVlmoForVisualReasoning), examples()
    batch["pixel_values_2"] = examples(1)["pixel_values"]
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    assert_loss_fell(
        train_with_adam(model, lambda step: model(**batch, labels=labels).loss, STEPS, lr=3e-3), STEPS, ratio=0.1
    )
    with torch.no_grad():
        assert torch.equal(model(**batch).logits.argmax(-1), labels)


def test_retrieval_overfits_and_ranks_each_caption_first_with_and_without_reranking() -> None:
    model, batch = build(VlpVlmoForImageTextRetrieval, retrieval_itm_weight=1.0), examples()

    def step_loss(step: int) -> torch.Tensor:
        return model(**batch, generator=torch.Generator().manual_seed(step)).loss

    assert_loss_fell(train_with_adam(model, step_loss, STEPS, lr=3e-3), STEPS, ratio=0.1)
    order = list(range(NUM_EXAMPLES))
    cosine = model.rank(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    assert cosine.image_to_text.argmax(dim=1).tolist() == cosine.text_to_image.argmax(dim=1).tolist() == order
    reranked = model.rank(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], k=2)
    assert reranked.image_to_text.argmax(dim=1).tolist() == reranked.text_to_image.argmax(dim=1).tolist() == order
    scored = reranked.image_to_text != -100
    assert scored.sum(dim=1).tolist() == [2] * NUM_EXAMPLES
    # the ITM logit the re-ranking adds to the cosine is higher for each image's caption than for its other candidate
    match_logits = torch.where(scored, reranked.image_to_text - cosine.similarities, torch.nan)
    others = match_logits.clone()
    others[range(NUM_EXAMPLES), range(NUM_EXAMPLES)] = torch.nan
    assert (match_logits.diagonal() > others.nan_to_num(-torch.inf).amax(dim=1)).all()
