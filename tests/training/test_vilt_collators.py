"""ViLT's collators (pre-training ITM pairing and whole-word masking, VQA soft scores, NLVR2 pairs, retrieval text
groups), its RandAugment, and the per-module learning rates of the task layer."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import Trainer, TrainingArguments

from hf_vlp.models.vilt import VlpViltConfig, VlpViltForQuestionAnswering, VlpViltImageProcessor, VlpViltProcessor
from hf_vlp.training.vilt_collators import (
    ViltPretrainingCollator,
    ViltQuestionAnsweringCollator,
    ViltRetrievalCollator,
    ViltVisualReasoningCollator,
    vqa_soft_score,
)
from hf_vlp.training.tasks import get_task
from hf_vlp.training.tasks.base import lr_multiplier
from hf_vlp.training.tokenizers import synthetic_wordpiece_tokenizer
from hf_vlp.training.transforms import VILT_RAND_AUGMENT_OPS, ViltRandAugmentPil, vilt_train_transform

COLOURS = [(220, 30, 30), (30, 60, 220), (30, 160, 40), (235, 205, 0), (140, 40, 180), (250, 130, 0)]


@pytest.fixture(scope="module")
def processor():
    image_processor = VlpViltImageProcessor(size={"shortest_edge": 32}, size_divisor=8)
    return VlpViltProcessor(image_processor, synthetic_wordpiece_tokenizer(), max_length=40)


def _rows(count: int, image_ids=None, texts=None) -> list[dict]:
    rows = []
    for index in range(count):
        row = {
            "image": Image.new("RGB", (32, 32), COLOURS[index % len(COLOURS)]),
            "text": texts[index] if texts else f"a {['red', 'blue', 'green'][index % 3]} circle on the left",
            "sample_index": index,
        }
        if image_ids is not None:
            row["image_id"] = image_ids[index]
        rows.append(row)
    return rows


def _pretraining(processor, **options) -> ViltPretrainingCollator:
    return ViltPretrainingCollator(processor, vocab_size=len(processor.tokenizer), **options)


# ------------------------------------------------------------------------------------------------- pre-training


@pytest.mark.parametrize("size", [2, 3, 7, 8, 32])
def test_itm_keeps_exactly_half_the_images_and_never_pairs_a_caption_with_its_own(processor, size):
    collate = _pretraining(processor, seed=3)
    for epoch in range(4):
        collate.set_epoch(epoch)
        batch = collate(_rows(size))
        labels, index = batch["itm_labels"], batch["itm_image_index"]
        assert labels.shape == index.shape == (size,) and int(labels.sum()) == size // 2
        own = torch.arange(size)
        assert torch.equal(index[labels == 1], own[labels == 1])
        assert (index[labels == 0] != own[labels == 0]).all()
        # each negative takes a positive's image: every image is seen matched and mismatched
        assert set(index[labels == 0].tolist()) <= set(own[labels == 1].tolist())
        assert batch["pixel_mask"].shape == (size, 32, 32) and "mlm_input_ids" in batch and "labels" in batch


def test_itm_negatives_avoid_other_captions_of_the_same_image_and_are_reproducible(processor):
    ids = [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 5]  # several captions per image, as synthetic-shapes task=retrieval
    collate = _pretraining(processor, seed=0)
    draws = set()
    for epoch in range(6):
        collate.set_epoch(epoch)
        batch = collate(_rows(len(ids), image_ids=ids))
        labels, index = batch["itm_labels"], batch["itm_image_index"]
        for row in (labels == 0).nonzero().flatten().tolist():
            assert ids[index[row]] != ids[row]
        draws.add(tuple(labels.tolist()))
        again = collate(_rows(len(ids), image_ids=ids))  # same epoch, same samples: the same draws
        assert torch.equal(again["itm_labels"], labels) and torch.equal(again["itm_image_index"], index)
        assert torch.equal(again["mlm_input_ids"], batch["mlm_input_ids"])
    assert len(draws) > 1  # the epoch changes the draws
    assert _pretraining(processor)(_rows(1))["itm_labels"].tolist() == [1]  # a batch of one: nothing to pair with


def test_whole_word_masking_masks_whole_words_within_the_budget(processor):
    tokenizer = processor.tokenizer
    # unknown words split into characters: "zebra" -> z ##e ##b ##r ##a, "quokka" -> q ##u ##o ##k ##k ##a
    texts = ["zebra quokka red circle", "two quokka zebra squares", "a zebra on the left of the quokka"] * 12
    collate = _pretraining(processor, seed=1)
    batch = collate(_rows(len(texts), texts=texts))
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    masked_any = 0
    for ids, masked, labels, mask in zip(batch["input_ids"], batch["mlm_input_ids"], batch["labels"],
                                         batch["attention_mask"]):
        tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
        chosen = labels != -100
        assert torch.equal(labels[chosen], ids[chosen]) and not any(ids[chosen].tolist()[i] in special
                                                                    for i in range(int(chosen.sum())))
        assert torch.equal(masked[~chosen], ids[~chosen])  # unchosen tokens are untouched
        # a word is chosen with all of its pieces or not at all
        for position, token in enumerate(tokens):
            if token.startswith("##"):
                assert chosen[position] == chosen[position - 1], tokens
        real = int(mask.sum())
        assert int(chosen.sum()) <= max(1, round(0.15 * real))
        masked_any += int(chosen.any())
    assert masked_any == len(texts)  # 15% of the caption's own tokens: at least one word each
    replaced = (batch["mlm_input_ids"] == tokenizer.mask_token_id).sum() / (batch["labels"] != -100).sum()
    assert 0.5 < float(replaced) <= 1.0  # mostly [MASK] (80/10/10)


def test_padding_counting_quirk_masks_fewer_tokens_of_short_captions(processor):
    texts = ["a red circle"] * 64
    default = _pretraining(processor, seed=0)(_rows(64, texts=texts))
    quirk_collate = _pretraining(processor, seed=0, count_padding_as_words=True)
    quirk = quirk_collate(_rows(64, texts=texts))
    assert quirk["input_ids"].shape[1] == 40  # padded to max_length, as the original's captions
    assert int((default["labels"] != -100).sum(1).min()) == 1  # every short caption gets its one token
    assert int((quirk["labels"] != -100).sum()) < int((default["labels"] != -100).sum())
    assert int(((quirk["labels"] != -100).sum(1) == 0).sum()) > 0  # some captions get no mask at all
    with pytest.raises(ValueError, match="whole-word masking"):
        _pretraining(processor, whole_word_masking=False, count_padding_as_words=True)


def test_token_masking_without_whole_words_never_masks_special_tokens(processor):
    tokenizer = processor.tokenizer
    batch = _pretraining(processor, whole_word_masking=False, seed=0)(_rows(32))
    chosen = batch["labels"] != -100
    assert chosen.any()
    for token_id in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id):
        assert not chosen[batch["input_ids"] == token_id].any()


# ---------------------------------------------------------------------------------------------------------- VQA


def test_vqa_soft_scores_follow_the_number_of_annotators(processor):
    assert [vqa_soft_score(count) for count in range(7)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]
    label2id = {"2": 0, "red": 1, "yes": 2, "blue": 3}
    collate = ViltQuestionAnsweringCollator(processor, label2id=label2id)
    rows = _rows(4, texts=["how many?", "what colour?", "is it?", "what colour?"])
    rows[0]["answers"] = ["2"] * 5 + ["two"] * 2 + ["3"] * 3  # "two" normalises to "2"; "3" is not an answer
    rows[1]["answers"] = [{"answer": "red"}, {"answer": "blue"}, {"answer": "blue"}, {"answer": "Blue"}]
    rows[2]["answer"] = "yes"  # a single answer scores 1
    rows[3]["answers"] = ["purple", "pink"]  # no answer in the vocabulary: left out, as the original
    batch = collate(rows)
    assert batch["labels"].shape == (3, 4) and batch["input_ids"].shape[0] == 3 and batch["pixel_mask"].shape[0] == 3
    torch.testing.assert_close(batch["labels"], torch.tensor([[1.0, 0, 0, 0], [0, 0.3, 0, 0.9], [0, 0, 1.0, 0]]))
    with pytest.raises(ValueError, match="No question of this batch"):
        collate(rows[3:])


def test_vqa_flip_swaps_left_and_right_in_questions_and_answers(processor):
    collate = ViltQuestionAnsweringCollator(processor, label2id={"left": 0, "right": 1},
                                            horizontal_flip="swap-left-right", augmentation_seed=0)
    rows = _rows(16, texts=["where are the shapes?"] * 16)
    for row in rows:
        row["answer"] = "left"
    labels = collate(rows)["labels"]
    assert 0 < int(labels[:, 1].sum()) < 16 and torch.equal(labels.sum(1), torch.ones(16))


# ------------------------------------------------------------------------------------------- NLVR2, retrieval


def test_nlvr2_batches_hold_both_images_on_one_canvas(processor):
    rows = _rows(3, texts=["both images contain a red shape"] * 3)
    for index, row in enumerate(rows):
        row["image_right"] = Image.new("RGB", (48, 32), COLOURS[index])  # wider: a larger canvas for all
        row["nlvr_label"] = index % 2 == 0
    batch = ViltVisualReasoningCollator(processor)(rows)
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "pixel_mask", "pixel_values_2", "pixel_mask_2",
                          "labels"}
    assert batch["pixel_values"].shape == batch["pixel_values_2"].shape == (3, 3, 32, 48)
    assert batch["pixel_mask"][:, :, 32:].sum() == 0 and batch["pixel_mask_2"].all()
    assert batch["labels"].tolist() == [1, 0, 1]


def test_retrieval_groups_each_image_with_its_caption_first_and_other_images_captions(processor):
    ids = [0, 0, 1, 2, 3, 4]
    texts = ["a red circle", "one red circle", "blue squares", "a green cross", "yellow", "purple triangles"]
    collate = ViltRetrievalCollator(processor, texts_per_image=4, seed=0)
    batch = collate(_rows(6, image_ids=ids, texts=texts))
    input_ids = batch["input_ids"]
    assert input_ids.shape[:2] == (6, 4) and batch["attention_mask"].shape == input_ids.shape
    assert batch["pixel_values"].shape[0] == 6 and batch["pixel_mask"].shape[0] == 6
    decoded = [[processor.tokenizer.decode(row, skip_special_tokens=True) for row in group] for group in input_ids]
    for row, group in enumerate(decoded):
        assert group[0] == texts[row]
        owners = [ids[texts.index(text)] for text in group[1:]]
        assert all(owner != ids[row] for owner in owners)  # captions of the same image are not negatives
        assert len(set(group[1:])) == 3  # without replacement while the batch has enough
    assert torch.equal(collate(_rows(6, image_ids=ids, texts=texts))["input_ids"], input_ids)
    with pytest.raises(ValueError, match="at least two images"):
        collate(_rows(2, image_ids=[7, 7]))


# ------------------------------------------------------------------------------------------------ augmentation


def test_vilt_rand_augment_is_the_originals_at_magnitude_9():
    assert "Invert" not in VILT_RAND_AUGMENT_OPS and not any("Cutout" in name for name in VILT_RAND_AUGMENT_OPS)
    assert len(VILT_RAND_AUGMENT_OPS) == 14
    augment = ViltRandAugmentPil(2, 9)
    assert augment.value("TranslateXabs") == pytest.approx(30) and augment.value("Rotate") == pytest.approx(9)
    assert augment.value("Brightness") == pytest.approx(0.64) and int(augment.value("Posterize")) == 1
    image = Image.new("RGB", (40, 40), (200, 40, 40))
    image.paste((20, 200, 20), (10, 10, 30, 30))
    transform = vilt_train_transform()
    outputs = [transform(image, generator=torch.Generator().manual_seed(seed)).tobytes() for seed in (0, 0, 1, 2, 3)]
    assert outputs[0] == outputs[1] and len(set(outputs)) > 2
    for name in VILT_RAND_AUGMENT_OPS:  # every operation runs on an RGB image and keeps its size
        assert ViltRandAugmentPil(1, 9, ops=[name])(image, generator=torch.Generator().manual_seed(0)).size == (40, 40)


# ------------------------------------------------------------------------------------------- learning rates


def test_vqa_classifier_trains_at_ten_times_the_learning_rate_without_decay_on_biases_and_norms(tmp_path):
    assert lr_multiplier("classifier.3.weight", {"classifier": 10}) == 10
    assert lr_multiplier("module.classifier.0.bias", {"classifier": 10}) == 10
    assert lr_multiplier("vilt.pooler.dense.weight", {"classifier": 10}) == 1
    config = VlpViltConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8, vocab_size=40, max_position_embeddings=12, num_labels=5,
                           pad_token_id=0, cls_token_id=2, sep_token_id=3, mask_token_id=4)
    model = VlpViltForQuestionAnswering(config)
    task = get_task("vilt", "vqa")
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.01, adam_beta2=0.98,
                             report_to="none", use_cpu=True)
    trainer = Trainer(model=model, args=args, optimizer_cls_and_kwargs=task.optimizer_cls_and_kwargs(model, args))
    optimizer = trainer.create_optimizer()
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    seen = set()
    for group in optimizer.param_groups:
        group_names = [names[id(parameter)] for parameter in group["params"]]
        seen.update(group_names)
        head = {name.startswith("classifier.") for name in group_names}
        assert len(head) == 1 and group["lr"] == pytest.approx(1e-2 if head.pop() else 1e-3)
        # biases and LayerNorm weights (the 1-D parameters but the class token, as the original) are not decayed
        shapes = dict(model.named_parameters())
        decays = {shapes[name].ndim > 1 or name.endswith("class_embedding") for name in group_names}
        assert decays == {group["weight_decay"] > 0}, group_names
        assert group["betas"] == (0.9, 0.98)
    assert seen == {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert get_task("vilt", "nlvr2").optimizer_cls_and_kwargs(model, args) is None  # lr_mult 1: the Trainer's own
    # the scheduler keeps the ratio
    scheduler = trainer.create_scheduler(num_training_steps=10, optimizer=optimizer)
    optimizer.step()
    scheduler.step()
    rates = sorted({group["lr"] for group in optimizer.param_groups})
    assert rates[1] == pytest.approx(10 * rates[0])
