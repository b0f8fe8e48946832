"""``hf-vlp train blip``: every task learns the synthetic data well above chance with the tiny recipe defaults
(captioning from scratch; retrieval, VQA and NLVR2 from the pre-trained tiny BLIP, as the paper's tasks start from
pre-trained BLIP), tower initialisation, a pre-trained BLIP feeding every task, BLIP's retrieval score, the caption
collator, the augmentation, and the command line (train + evaluate)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import BertConfig, BertForMaskedLM, TrainingArguments, ViTConfig, ViTModel

from hf_vlp.cli import main
from hf_vlp.evaluation.itm_retrieval import itm_retrieval_metrics
from hf_vlp.evaluation.retrieval import ranks_from_scores
from hf_vlp.models.blip import (
    VlpBlipForConditionalGeneration,
    VlpBlipForImageTextRetrieval,
    VlpBlipForPretraining,
    VlpBlipForQuestionAnswering,
    VlpBlipForVisualReasoning,
)
from hf_vlp.training.collators import BlipCaptionCollator
from hf_vlp.training.job import JobArguments
from hf_vlp.training.recipes import BLIP_PAPER, get_recipe
from hf_vlp.training.runner import train
from hf_vlp.training.tasks import get_task, task_for_model_class, task_names
from hf_vlp.training.tasks.blip import caption_references
from hf_vlp.training.transforms import blip_train_transform
from hf_vlp.training.tokenizers import synthetic_wordpiece_tokenizer
from tests.training.task_runs import (
    chance_mean_recall,
    fine_tuning_run,
    pretraining_run,
    recipe_job,
    recipe_training_args,
)

TASKS = ("pretrain", "retrieval", "caption", "vqa", "nlvr2")


def _job(task: str, **overrides) -> JobArguments:
    return recipe_job("blip", task, **overrides)


def _args(task: str, output_dir, **overrides) -> TrainingArguments:
    return recipe_training_args("blip", task, output_dir, **overrides)


# --------------------------------------------------------------------------------------------------- registry


def test_blip_tasks_are_registered_with_the_papers_values_and_tiny_defaults():
    assert task_names("blip") == list(TASKS) and get_task("blip").name == "pretrain"
    for cls, name in ((VlpBlipForPretraining, "pretrain"), (VlpBlipForImageTextRetrieval, "retrieval"),
                      (VlpBlipForConditionalGeneration, "caption"), (VlpBlipForQuestionAnswering, "vqa"),
                      (VlpBlipForVisualReasoning, "nlvr2")):
        assert task_for_model_class(cls.__name__).name == name and get_task("blip", name).model_classes[0] is cls
    for name in TASKS:
        recipe = get_recipe("blip", name)
        assert recipe.paper == BLIP_PAPER[name] and recipe.paper["optimizer"].startswith("AdamW, weight decay 0.05")
        assert recipe.training_defaults["weight_decay"] == 0.05
        # the tiny queue must hold whole global batches (MomentumCallback checks it at train start)
        assert recipe.tiny_config["queue_size"] % recipe.training_defaults["per_device_train_batch_size"] == 0
    assert BLIP_PAPER["pretrain"]["learning_rate"] == 3e-4 and BLIP_PAPER["caption"]["prompt"] == "a picture of "
    assert [BLIP_PAPER[name]["image_size"] for name in TASKS] == [224, 384, 384, 480, 384]
    assert [get_recipe("blip", name).context_length for name in TASKS] == [30, 35, 40, 35, 35]
    collator = BlipCaptionCollator(_processor())
    # alpha ramps over two epochs in pre-training (pretrain.py), over one in retrieval; no momentum model elsewhere
    assert get_task("blip", "pretrain").callbacks(None, collator)[0].alpha_warmup_epochs == 2.0
    assert get_task("blip", "retrieval").callbacks(None, collator)[0].alpha_warmup_epochs == 1.0
    assert [type(callback).__name__ for callback in get_task("blip", "vqa").callbacks(None, collator)] == [
        "CollatorEpochCallback", "LossTermsCallback"
    ]


def _processor():
    _, processor = get_task("blip", "caption").build(JobArguments(task="caption"))
    return processor


def test_caption_collator_leaves_the_prompt_and_padding_out_of_the_loss():
    processor = _processor()
    collate = BlipCaptionCollator(processor)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    batch = collate([{"image": image, "text": "A red circle."}, {"image": image, "text": "two large blue squares"}])
    tokenizer = processor.tokenizer
    words = tokenizer.convert_ids_to_tokens(batch["input_ids"][1].tolist())
    assert words == ["[CLS]", "a", "picture", "of", "two", "large", "blue", "squares", "[SEP]"]
    assert processor.prompt_length == 4  # [DEC] a picture of, as the original's len(tokenizer(prompt).input_ids) - 1
    labels = batch["labels"]
    assert (labels[:, :4] == -100).all()
    assert labels[1, 4:].tolist() == batch["input_ids"][1, 4:].tolist()
    # "a red circle" (BLIP's pre_caption: lowercase, "." dropped) is one token shorter: its [SEP] is learnt, not the pad
    assert labels[0, -2:].tolist() == [tokenizer.sep_token_id, -100]
    assert batch["pixel_values"].shape == (2, 3, 64, 64)


def test_caption_references_group_the_captions_of_an_image():
    image = Image.new("RGB", (8, 8))
    rows = [{"image": image, "text": "a", "image_id": 7}, {"image": image, "text": "b", "image_id": 7},
            {"image": image, "text": "c", "captions": ["c", "c2"]}]
    images, references = caption_references(rows)
    assert len(images) == 2 and references == [["a", "b"], ["c", "c2"]]


def test_blip_retrieval_evaluation_is_the_retrieval_models_score():
    """ITC cosine, then ITM match logit + cosine: what VlpBlipForImageTextRetrieval.rank computes (k = gallery)."""
    torch.manual_seed(0)
    task = get_task("blip", "retrieval")
    model, processor = task.build(JobArguments(task="retrieval"))
    model.eval()
    images = [Image.new("RGB", (64, 64), colour) for colour in ((200, 30, 30), (30, 60, 220), (30, 160, 40))]
    texts, owners = ["a red circle", "blue squares on the left", "green", "a cross"], [0, 1, 2, 0]
    encoded = processor(images=images, text=texts, padding="max_length", return_tensors="pt")
    expected = model.rank(encoded["pixel_values"], encoded["input_ids"], encoded["attention_mask"], k=4)
    metrics = itm_retrieval_metrics(model, processor, images, texts, owners, k=4, batch_size=2)
    itc_ranks = ranks_from_scores(expected.similarities, expected.similarities.T, torch.tensor(owners))
    itm_ranks = ranks_from_scores(expected.image_to_text, expected.text_to_image, torch.tensor(owners))
    for ranks, prefix in ((itc_ranks, "itc"), (itm_ranks, "itm")):
        for k in (1, 5):
            assert metrics[f"{prefix}_i2t_r{k}"] == pytest.approx((ranks[0] < k).float().mean().item())
            assert metrics[f"{prefix}_t2i_r{k}"] == pytest.approx((ranks[1] < k).float().mean().item())
    with pytest.raises(TypeError, match="BLIP pre-training or retrieval model"):
        itm_retrieval_metrics(VlpBlipForConditionalGeneration(model.config), processor, images, texts, owners)


def test_augmentation_is_blips_and_keeps_synthetic_scenes_whole():
    transform = blip_train_transform(64, (0.2, 1.0))
    crop, rand_augment = transform.transforms
    assert crop.scale == (0.2, 1.0) and (rand_augment.num_ops, rand_augment.magnitude) == (2, 5)
    image = Image.new("RGB", (80, 80), (10, 200, 10))
    first = transform(image, generator=torch.Generator().manual_seed(3))
    assert first.size == (64, 64) and first.tobytes() == transform(image, generator=torch.Generator().manual_seed(3)).tobytes()
    caption = get_task("blip", "caption")
    assert caption.augmentation(JobArguments(), train=True) == "flip"  # synthetic-shapes: no crop
    assert caption.augmentation(JobArguments(dataset="nlphuji/flickr30k"), train=True) == "paper"
    assert caption.augmentation(JobArguments(augment="paper"), train=False) == "none"
    assert get_task("blip", "pretrain").crop_scale == (0.2, 1.0) and caption.crop_scale == (0.5, 1.0)
    assert get_task("blip", "nlvr2").horizontal_flip == "none"


# ----------------------------------------------------------------------------------------------- initialisation


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """A tiny transformers ViT and BERT (with its tokenizer), as --vision-init / --text-init directories."""
    folder = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                       patch_size=16, layer_norm_eps=1e-6)).save_pretrained(folder / "vit")
    tokenizer = synthetic_wordpiece_tokenizer()
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=40)).save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    return folder / "vit", folder / "bert"


def test_every_task_builds_from_transformers_towers(towers):
    from safetensors.torch import load_file

    vit_dir, bert_dir = towers
    patch = load_file(vit_dir / "model.safetensors")["embeddings.patch_embeddings.projection.weight"]
    bert = load_file(bert_dir / "model.safetensors")
    words, ffn = bert["bert.embeddings.word_embeddings.weight"], bert["bert.encoder.layer.1.intermediate.dense.weight"]
    for name in TASKS:
        task = get_task("blip", name)
        model, processor = task.build(JobArguments(task=name, vision_init=str(vit_dir), text_init=str(bert_dir)))
        assert isinstance(model, task.model_classes[0]), name
        config = model.config
        assert config.vision_config.hidden_size == 32 and config.vision_config.image_size == 32
        assert config.text_config.num_hidden_layers == 2 and config.text_config.encoder_width == 32
        assert len(processor.tokenizer) == config.text_config.vocab_size == len(words) + 2  # + [DEC], [ENC]
        assert processor.special_token_ids()["enc_token_id"] == config.text_config.enc_token_id
        assert processor.image_processor.size["height"] == 32
        torch.testing.assert_close(model.vision_model.transformer.patch_embed.weight, patch)
        torch.testing.assert_close(model.text_model.transformer.embeddings.word_embeddings.weight[: len(words)], words)
        torch.testing.assert_close(model.text_model.transformer.encoder.layers[1].mlp.fc1.weight, ffn)
        if hasattr(model, "momentum_pairs"):
            for online, momentum in model.momentum_pairs():
                for p, p_m in zip(online.parameters(), momentum.parameters()):
                    assert torch.equal(p, p_m) and not p_m.requires_grad
        if name == "vqa":  # the answer decoder starts from BERT too (through the pre-trained decoder role)
            torch.testing.assert_close(model.answer_decoder.transformer.encoder.layers[1].mlp.fc1.weight, ffn)
            assert processor.answer_list is not None
        if name == "nlvr2":  # both per-image cross-attentions start alike
            cross = model.text_model.transformer.encoder.layers[0].cross_attn
            assert torch.equal(cross.attn0.q.weight, cross.attn1.q.weight)


def test_a_pretrained_blip_feeds_every_task(tmp_path):
    torch.manual_seed(0)
    model, processor = get_task("blip", "pretrain").build(JobArguments(task="pretrain"))
    model.save_pretrained(tmp_path / "pretrain")
    processor.save_pretrained(tmp_path / "pretrain")
    source = str(tmp_path / "pretrain")
    patch = model.vision_model.transformer.patch_embed.weight
    layer = model.text_model.transformer.encoder.layers[0]
    for name in ("retrieval", "caption", "vqa", "nlvr2"):
        tuned, tuned_processor = get_task("blip", name).build(JobArguments(task=name, from_pretrained=source))
        assert torch.equal(tuned.vision_model.transformer.patch_embed.weight, patch), name
        assert tuned_processor.max_length == get_recipe("blip", name).context_length
        tuned.save_pretrained(tmp_path / name)
        tuned_processor.save_pretrained(tmp_path / name)
        if name == "retrieval":
            for online, momentum in tuned.momentum_pairs():
                assert all(torch.equal(p, p_m) for p, p_m in zip(online.parameters(), momentum.parameters()))
        if name == "caption":  # the decoder role, with the original's COCO decoding (a pre-training save has none)
            assert torch.equal(tuned.text_model.transformer.encoder.layers[0].causal_attn.qkv.weight,
                               layer.causal_attn.qkv.weight)
            decoding = tuned.generation_config
            assert (decoding.num_beams, decoding.max_length, decoding.min_length) == (3, 20, 5)
        if name == "vqa":  # the answer decoder is the pre-trained decoder role, as blip_vqa.py loads it
            decoder = tuned.answer_decoder.transformer.encoder.layers[0]
            assert torch.equal(decoder.causal_attn.qkv.weight, layer.causal_attn.qkv.weight)
            assert tuned_processor.answer_list is not None
        if name == "nlvr2":
            cross = tuned.text_model.transformer.encoder.layers[0].cross_attn
            assert torch.equal(cross.attn0.q.weight, layer.cross_attn.q.weight)
            assert torch.equal(cross.attn1.q.weight, layer.cross_attn.q.weight)
    # a task's own saved model reloads; other heads' directories are refused by name
    reloaded, _ = get_task("blip", "vqa").build(JobArguments(task="vqa", from_pretrained=str(tmp_path / "vqa")))
    assert isinstance(reloaded, VlpBlipForQuestionAnswering)
    with pytest.raises(ValueError, match=r"holds a VlpBlipForConditionalGeneration; blip --task retrieval starts from"):
        get_task("blip", "retrieval").build(JobArguments(task="retrieval", from_pretrained=str(tmp_path / "caption")))
    with pytest.raises(ValueError, match=r"holds a VlpBlipForImageTextRetrieval; blip --task caption starts from"):
        get_task("blip", "caption").build(JobArguments(task="caption", from_pretrained=str(tmp_path / "retrieval")))
    nlvr2, _ = get_task("blip", "nlvr2").build(JobArguments(task="nlvr2", from_pretrained=str(tmp_path / "retrieval")))
    assert isinstance(nlvr2, VlpBlipForVisualReasoning)
    with pytest.raises(ValueError, match="--queue-size 32"):
        get_task("blip", "retrieval").build(JobArguments(task="retrieval", from_pretrained=source, queue_size=32))
    with pytest.raises(ValueError, match="--queue-size: blip --task caption has no momentum queues"):
        get_task("blip", "caption").build(JobArguments(task="caption", queue_size=32))
    with pytest.raises(ValueError, match="--image-size 96: the saved model works at 64 px"):
        get_task("blip", "caption").build(JobArguments(task="caption", from_pretrained=source, image_size=96))
    with pytest.raises(ValueError, match="--preset"):
        get_task("blip", "pretrain").build(JobArguments(task="pretrain", preset="base"))


# ----------------------------------------------------------------------------------------- learning end to end


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The tiny recipe's pre-training run (defaults as `hf-vlp train blip --task pretrain`)."""
    return pretraining_run("blip", tmp_path_factory)


@pytest.mark.slow
def test_pretraining_learns_retrieval_well_above_chance(pretrained):
    output, metrics = pretrained
    before, after = metrics["before"], metrics["after"]
    chance = chance_mean_recall(after)
    assert after["itc_mean_recall"] > 6 * chance and after["itm_mean_recall"] > 6 * chance, after
    assert after["itm_t2i_r1"] > 8 * after["retrieval_chance_r1"] and after["itm_i2t_r1"] > 8 * after["retrieval_chance_r1"]
    assert before["itc_mean_recall"] < 2 * chance
    history = json.loads((output / "metrics.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < 0.8 * losses[0] and (output / "model.safetensors").is_file()


@pytest.mark.slow
def test_retrieval_fine_tuning_from_the_pretrained_model(pretrained, tmp_path):
    after = fine_tuning_run("blip", "retrieval", pretrained[0], tmp_path)
    chance = chance_mean_recall(after)
    assert after["itc_mean_recall"] > 6 * chance and after["itm_mean_recall"] > 6 * chance, after
    # `hf-vlp evaluate` reads the task from the saved class and prints the same table
    assert main(["evaluate", str(tmp_path), "--dataset", "synthetic-shapes:n=100", "--eval-max-samples", "20"]) == 0


@pytest.mark.slow
def test_captioning_improves_bleu_and_cider_by_a_wide_margin(pretrained, tmp_path):
    metrics = train("blip", _job("caption"), _args("caption", tmp_path / "scratch"))
    before, after = metrics["before"], metrics["after"]
    assert before["Bleu_4"] < 0.05 and before["CIDEr"] < 0.3, before
    assert after["Bleu_4"] > 0.3 and after["CIDEr"] > 2.0, after
    # the pre-trained model's decoder captions directly (its LM loss saw "a picture of ..." captions too)
    task = get_task("blip", "caption")
    job = _job("caption", from_pretrained=str(pretrained[0]))
    model, processor = task.build(job)
    zero_shot = task.evaluate(model, processor, job, job.dataset, job.eval_split, 64)
    assert zero_shot["Bleu_4"] > 0.1 and zero_shot["CIDEr"] > 1.0, zero_shot


@pytest.mark.slow
def test_vqa_fine_tuning_from_the_pretrained_model(pretrained, tmp_path):
    after = fine_tuning_run("blip", "vqa", pretrained[0], tmp_path)
    # the question type alone gives about 1/3 (answers per type: 2 to 6); chance over the 22 candidates is 1/22
    assert after["vqa_accuracy"] > 8 * after["vqa_chance"] and after["vqa_accuracy"] > 4 * after["vqa_majority_baseline"]
    assert after["vqa_accuracy"] > 0.45, after


@pytest.mark.slow
def test_nlvr2_fine_tuning_from_the_pretrained_model(pretrained, tmp_path):
    after = fine_tuning_run("blip", "nlvr2", pretrained[0], tmp_path)
    assert after["accuracy"] > 0.58 and after["accuracy"] > after["majority_baseline"] + 0.06, after
    assert min(after["accuracy_False"], after["accuracy_True"]) > 0.4, after


# ------------------------------------------------------------------------------------------------ command line


def test_cli_trains_and_evaluates_a_captioner(tmp_path, capsys):
    output = tmp_path / "caption"
    code = main(["train", "blip", "--task", "caption", "--max-steps", "2", "--per-device-train-batch-size", "4",
                 "--dataset", "synthetic-shapes:n=16", "--eval-max-samples", "4", "--output-dir", str(output),
                 "--save-strategy", "no", "--disable-tqdm", "true", "--logging-steps", "1"])
    assert code == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["task"] == "caption" and metrics["train"]["train_loss"] > 0
    assert {"Bleu_4", "CIDEr"} <= set(metrics["before"]) and {"Bleu_4", "CIDEr"} <= set(metrics["after"])
    assert (output / "model.safetensors").is_file() and (output / "processor_config.json").is_file()
    assert json.loads((output / "config.json").read_text())["architectures"] == ["VlpBlipForConditionalGeneration"]
    capsys.readouterr()
    assert main(["evaluate", str(output), "--dataset", "synthetic-shapes:n=8", "--eval-max-samples", "4"]) == 0
    assert "CIDEr" in capsys.readouterr().out
