"""Every ViLT head overfits 8 examples with a few dozen Adam steps, and its own inference shows what it learned:
pre-training (ITM accuracy on positives and negatives, the masked words), masked LM, VQA (the pipeline's
classification strategy answers with the trained answers), NLVR2 (the pair labels) and retrieval (each image ranks
its caption first). Tiny configs on images of three sizes, fixed seeds."""

from __future__ import annotations

import pytest
import torch

from hf_vlp.models.vilt import (
    VlpViltForImageTextRetrieval,
    VlpViltForMaskedLM,
    VlpViltForPretraining,
    VlpViltForQuestionAnswering,
    VlpViltForVisualReasoning,
)
from tests.helpers.momentum_checks import assert_loss_fell, train_with_adam
from tests.helpers.tiny_models import MASK_ID, tiny_vilt_batch, tiny_vilt_config

NUM_EXAMPLES, STEPS = 8, 60
pytestmark = pytest.mark.usefixtures("one_thread")


def build(model_class: type, **settings: object) -> torch.nn.Module:
    """A wider init than BERT's 0.02, so the tiny model's pooled states differ across examples from the start."""
    torch.manual_seed(0)
    return model_class(tiny_vilt_config(hidden_size=32, intermediate_size=64, initializer_range=0.2, **settings))


def examples(seed: int = 0, suffix: str = "") -> dict[str, torch.Tensor]:
    return tiny_vilt_batch(NUM_EXAMPLES, seed, suffix=suffix)


def masked_words(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Word 2 of every caption masked: only the image (each example's own) tells it."""
    masked, labels = batch["input_ids"].clone(), torch.full_like(batch["input_ids"], -100)
    labels[:, 2] = batch["input_ids"][:, 2]
    masked[:, 2] = MASK_ID
    return masked, labels


def test_pretraining_overfits_itm_and_mlm() -> None:
    model, batch = build(VlpViltForPretraining), examples()
    masked, labels = masked_words(batch)
    positives = torch.arange(NUM_EXAMPLES)
    negatives = (positives + 1) % NUM_EXAMPLES

    def step_loss(step: int) -> torch.Tensor:
        index, itm_labels = (positives, torch.ones(8, dtype=torch.long)) if step % 2 else (negatives, torch.zeros(8, dtype=torch.long))
        return model(
            **batch, mlm_input_ids=masked, labels=labels, itm_labels=itm_labels, itm_image_index=index
        ).loss

    assert_loss_fell(train_with_adam(model, step_loss, STEPS, lr=3e-3), STEPS, ratio=0.3)
    with torch.no_grad():
        matched = model(**batch).itm_logits.argmax(-1)
        mismatched = model(**batch, itm_image_index=negatives).itm_logits.argmax(-1)
        predicted = model(**batch, mlm_input_ids=masked).mlm_logits[:, 2].argmax(-1)
    assert matched.tolist() == [1] * 8 and mismatched.tolist() == [0] * 8
    assert torch.equal(predicted, batch["input_ids"][:, 2])


def test_masked_lm_overfits() -> None:
    model, batch = build(VlpViltForMaskedLM), examples()
    masked, labels = masked_words(batch)
    inputs = {**batch, "input_ids": masked}
    assert_loss_fell(
        train_with_adam(model, lambda step: model(**inputs, labels=labels).loss, STEPS, lr=3e-3), STEPS, ratio=0.1
    )
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits[:, 2].argmax(-1), batch["input_ids"][:, 2])


def test_vqa_overfits_and_the_pipeline_strategy_answers() -> None:
    from hf_vlp.integrations.vqa_strategies import classify_answers

    answers = ["red", "blue", "two", "three", "left"]
    model = build(VlpViltForQuestionAnswering, id2label=dict(enumerate(answers)))
    batch = examples()
    truth = torch.arange(NUM_EXAMPLES) % len(answers)
    scores = torch.nn.functional.one_hot(truth, len(answers)).float()
    assert_loss_fell(
        train_with_adam(model, lambda step: model(**batch, labels=scores).loss, STEPS, lr=3e-3), STEPS, ratio=0.1
    )

    class Answerer:  # what the VQA pipeline hands a strategy
        def __init__(self) -> None:
            self.model, self.processor, self.device = model, None, torch.device("cpu")

    predicted, probabilities = classify_answers(Answerer(), batch, top_k=2, options={})
    assert [row[0] for row in predicted] == [answers[i] for i in truth.tolist()]
    assert all(row[0] > 0.5 > row[1] for row in probabilities)


def test_visual_reasoning_overfits() -> None:
    model = build(VlpViltForVisualReasoning)
    batch = {**examples(), **{k: v for k, v in examples(1, suffix="_2").items() if k.endswith("_2")}}
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    assert_loss_fell(
        train_with_adam(model, lambda step: model(**batch, labels=labels).loss, STEPS, lr=3e-3), STEPS, ratio=0.1
    )
    with torch.no_grad():
        assert torch.equal(model(**batch).logits.argmax(-1), labels)


def test_retrieval_overfits_and_ranks_each_caption_first() -> None:
    model, batch = build(VlpViltForImageTextRetrieval), examples()
    texts_per_image = 4
    order = torch.stack([(torch.arange(NUM_EXAMPLES) + shift) % NUM_EXAMPLES for shift in range(texts_per_image)], 1)
    grouped = {
        "input_ids": batch["input_ids"][order], "attention_mask": batch["attention_mask"][order],
        "pixel_values": batch["pixel_values"], "pixel_mask": batch["pixel_mask"],
    }
    assert_loss_fell(train_with_adam(model, lambda step: model(**grouped).loss, STEPS, lr=3e-3), STEPS, ratio=0.1)
    scores = model.rank(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["pixel_mask"])
    # the loss ranks each image's texts (as the original's); image -> text retrieval is what it learns
    assert scores.image_to_text.argmax(dim=1).tolist() == list(range(NUM_EXAMPLES))
