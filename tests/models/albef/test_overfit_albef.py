"""Every ALBEF head overfits 8 examples with a few dozen Adam steps, and its own inference shows what it learned:
pretraining (loss and ITM accuracy on positives and negatives), image-grounded MLM (words only the image tells),
retrieval (ITC + ITM ranking finds each image's caption), VQA (ranking and free generation give the trained answers).

Tiny configs, fixed seeds; the momentum towers follow the online ones by EMA after every step, as
``MomentumCallback`` does in training."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import BertTokenizer

from hf_vlp.models.albef import (
    VlpAlbefConfig,
    VlpAlbefForImageTextRetrieval,
    VlpAlbefForMaskedLM,
    VlpAlbefForPretraining,
    VlpAlbefForQuestionAnswering,
)
from hf_vlp.models.albef.image_processing_albef import VlpAlbefImageProcessor
from hf_vlp.models.albef.processing_albef import VlpAlbefProcessor
from tests.helpers.momentum_checks import train_with_adam
from tests.helpers.tiny_models import NO_DROPOUT, tiny_albef_config

NUM_EXAMPLES, IMAGE_SIZE = 8, 16
PAD_ID, CLS_ID, SEP_ID, MASK_ID = 0, 2, 3, 4
WORDS = (
    "what is the colour of shape how many are there where does it sit which kind here "
    "red blue green two three left right big small dog cat a"
).split()
VOCAB = {token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(
    vision_width: int = 24, text_layers: int = 3, initializer_range: float = 0.2, **overrides
) -> VlpAlbefConfig:
    """Width-16 text, 1-layer ViT on 16 px / 8 px patches. BERT's 0.02 init leaves the [CLS] states of such a
    small model nearly equal across examples; the contrastive heads start from a wider one."""
    vision = dict(
        hidden_size=vision_width, intermediate_size=2 * vision_width, num_hidden_layers=1,
        initializer_range=initializer_range,
    )
    text = dict(
        vocab_size=len(VOCAB), num_hidden_layers=text_layers, max_position_embeddings=16, cls_token_id=CLS_ID,
        sep_token_id=SEP_ID, mask_token_id=MASK_ID, initializer_range=initializer_range, **NO_DROPOUT,
    )
    settings = {
        "embed_dim": 8, "queue_size": NUM_EXAMPLES, "momentum": 0.9, "initializer_range": initializer_range, **overrides
    }
    return tiny_albef_config(vision=vision, text=text, **settings)


def images(seed: int = 0) -> torch.Tensor:
    """Eight distinct noise images ``[8, 3, 16, 16]``."""
    return torch.randn(NUM_EXAMPLES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def captions(seed: int = 0, length: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight distinct ``[CLS] words..`` rows, every other one padded by two tokens; and their padding mask."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, len(VOCAB), (NUM_EXAMPLES, length), generator=generator)
    input_ids[:, 0] = CLS_ID
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1::2, -2:] = 0
    return input_ids.masked_fill(attention_mask == 0, PAD_ID), attention_mask


def shifted(offset: int) -> torch.Tensor:
    """Pair ``b`` with example ``b + offset`` (mod 8): a fixed choice of negatives."""
    return (torch.arange(NUM_EXAMPLES) + offset) % NUM_EXAMPLES


@torch.no_grad()
def itm_predictions(model: VlpAlbefForPretraining, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """ITM's match (1) / no match (0) call for every (image i, text j) of the batch: ``[8, 8]``."""
    albef, mask = model, batch["attention_mask"]
    image_states = albef.encode_image(batch["pixel_values"]).last_hidden_state
    text_states = albef.encode_text(batch["input_ids"], mask).last_hidden_state
    images_of_pairs = torch.arange(NUM_EXAMPLES).repeat_interleave(NUM_EXAMPLES)
    texts_of_pairs = torch.arange(NUM_EXAMPLES).repeat(NUM_EXAMPLES)
    fused = albef.fuse(text_states[texts_of_pairs], image_states[images_of_pairs], mask[texts_of_pairs])
    return albef.itm_head(fused.last_hidden_state[:, 0]).argmax(dim=-1).view(NUM_EXAMPLES, NUM_EXAMPLES)


def itm_hits(predictions: torch.Tensor) -> tuple[int, int]:
    """(positives called matches out of 8, mismatches called mismatches out of 56)."""
    diagonal = torch.eye(NUM_EXAMPLES, dtype=torch.bool)
    return int(predictions[diagonal].sum()), int((predictions[~diagonal] == 0).sum())


# --------------------------------------------------------------------------------------------------- heads


def test_pretraining_loss_falls_and_itm_tells_matches_from_mismatches() -> None:
    torch.manual_seed(0)
    model = VlpAlbefForPretraining(tiny_config(itm_negative_eps=1e-4))
    input_ids, attention_mask = captions(seed=1)
    batch = dict(input_ids=input_ids, pixel_values=images(seed=1), attention_mask=attention_mask)

    def fixed_step_loss() -> float:
        """Loss on a fixed masking and fixed negatives, queues untouched."""
        with torch.no_grad():
            out = model(
                **batch, return_loss=True, update_queues=False, generator=torch.Generator().manual_seed(7),
                itm_negative_image_indices=shifted(1), itm_negative_text_indices=shifted(3),
            )
        return out.loss.item()

    model.eval()
    before, hits_before = fixed_step_loss(), itm_hits(itm_predictions(model, batch))
    generator = torch.Generator().manual_seed(0)
    train_with_adam(
        model, lambda step: model(**batch, return_loss=True, generator=generator, update_queues=True).loss, 100, 3e-3
    )
    after = fixed_step_loss()
    assert after < 0.4 * before, (before, after)
    # ITM over all 64 (image, text) combinations, most of which it never scored in training
    positives, negatives = itm_hits(itm_predictions(model, batch))
    assert positives == NUM_EXAMPLES and negatives >= 51, (positives, negatives)
    assert hits_before[0] < NUM_EXAMPLES or hits_before[1] < 51, hits_before


def test_masked_lm_fills_in_the_word_only_the_image_tells() -> None:
    torch.manual_seed(0)
    model = VlpAlbefForMaskedLM(tiny_config())
    pixel_values = images(seed=2)
    # one sentence for every image; the masked word (position 3) is the image's own: only the image decides it
    words = torch.arange(NUM_EXAMPLES) + VOCAB["red"]
    sentence = torch.tensor([CLS_ID, 5, 6, MASK_ID, 7, 8])
    input_ids = sentence.repeat(NUM_EXAMPLES, 1)
    labels = torch.full_like(input_ids, -100)
    labels[:, 3] = words
    losses = train_with_adam(model, lambda step: model(input_ids, pixel_values, labels=labels).loss, 40, 1e-2)
    assert losses[-1] < 0.05 * losses[0], losses
    with torch.no_grad():
        predicted = model(input_ids, pixel_values).logits[:, 3].argmax(dim=-1)
    assert torch.equal(predicted, words)


def test_retrieval_ranks_each_images_caption_first() -> None:
    torch.manual_seed(0)
    model = VlpAlbefForImageTextRetrieval(tiny_config(itm_negative_eps=1e-4))
    pixel_values = images(seed=3)
    input_ids, attention_mask = captions(seed=3)
    image_ids = torch.arange(NUM_EXAMPLES)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.eval()
        before = model.rank(pixel_values, input_ids, attention_mask, k=3)
    losses = train_with_adam(
        model,
        lambda step: model(
            input_ids, pixel_values, attention_mask, image_ids=image_ids, generator=generator, update_queues=True
        ).loss,
        80,
        5e-3,
    )
    assert losses[-1] < 0.35 * losses[0], losses
    scores = model.rank(pixel_values, input_ids, attention_mask, k=3)
    matches = torch.arange(NUM_EXAMPLES)
    assert torch.equal(scores.similarities.argmax(dim=1), matches)  # ITC alone
    assert torch.equal(scores.image_to_text.argmax(dim=1), matches)  # after the ITM re-rank
    assert torch.equal(scores.text_to_image.argmax(dim=1), matches)
    assert not torch.equal(before.image_to_text.argmax(dim=1), matches)  # it was learned, not given


# --------------------------------------------------------------------------------------------------- VQA

QUESTIONS = [
    "what is the colour of the shape", "how many are there", "where does it sit", "which kind is here",
    "what colour is it", "how many shapes", "where is the shape", "which kind of shape",
]
ANSWERS = ["red", "two", "left", "big dog", "blue", "three", "right", "small cat"]


@pytest.fixture(scope="module")
def processor() -> VlpAlbefProcessor:
    tokenizer = BertTokenizer(vocab=VOCAB)
    return VlpAlbefProcessor(VlpAlbefImageProcessor(size=IMAGE_SIZE), tokenizer)


def pil_images(seed: int) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)) for _ in QUESTIONS]


def test_question_answering_ranks_and_generates_the_trained_answers(processor: VlpAlbefProcessor) -> None:
    torch.manual_seed(0)
    model = VlpAlbefForQuestionAnswering(tiny_config(vision_width=16, text_layers=2, initializer_range=0.02))
    inputs = processor(images=pil_images(seed=4), text=QUESTIONS, text_kind="question", return_tensors="pt")
    answers = processor.encode_answers(ANSWERS, return_tensors="pt")
    losses = train_with_adam(
        model,
        lambda step: model(
            **inputs, answer_input_ids=answers["input_ids"], answer_attention_mask=answers["attention_mask"],
            return_loss=True, alpha=0.0,  # distillation: see test_vqa_albef's parity tests
        ).loss,
        60,
        1e-2,
    )
    assert losses[-1] < 0.15 * losses[0], losses
    ranking = model.rank_answers(
        inputs["pixel_values"], inputs["input_ids"], answers["input_ids"], inputs["attention_mask"],
        answers["attention_mask"], k=4,
    )
    assert ranking.answer_indices[:, 0].tolist() == list(range(NUM_EXAMPLES))
    # free generation, the transformers way: processor outputs straight into generate()
    generated = model.generate(**inputs, max_new_tokens=4)
    assert processor.tokenizer.batch_decode(generated, skip_special_tokens=True) == ANSWERS
    assert (generated[:, 0] == CLS_ID).all()
    assert model.generate_answers(processor, **inputs, num_beams=1) == ANSWERS
