"""``hf-vlp train albef``: every task learns the synthetic data well above chance with the tiny recipe defaults (the
fine-tuning tasks start from the pre-trained tiny ALBEF, as the paper's tasks start from pre-trained ALBEF), tower
initialisation, the VQA decoder's initialisation from the fusion layers, and exact resume."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM, TrainingArguments, ViTConfig, ViTModel

from hf_vlp.cli import main
from hf_vlp.training.job import JobArguments
from hf_vlp.training.runner import train
from hf_vlp.training.tasks import get_task

from hf_vlp.training.tokenizers import synthetic_wordpiece_tokenizer
from tests.training.task_runs import (
    chance_mean_recall,
    fine_tuning_run,
    pretraining_run,
    recipe_job,
    recipe_training_args,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tiny models train several times faster on one thread: OpenMP's synchronisation costs more than its
    parallel matmuls gain at width 64, and far more when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _job(task: str, **overrides) -> JobArguments:
    return recipe_job("albef", task, **overrides)


def _args(task: str, output_dir, **overrides) -> TrainingArguments:
    return recipe_training_args("albef", task, output_dir, **overrides)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The tiny recipe's pre-training run (defaults as `hf-vlp train albef --task pretrain`)."""
    return pretraining_run("albef", tmp_path_factory)


@pytest.mark.slow
def test_pretraining_learns_retrieval_well_above_chance(pretrained):
    output, metrics = pretrained
    before, after = metrics["before"], metrics["after"]
    chance = chance_mean_recall(after)
    assert after["itc_mean_recall"] > 4 * chance and after["itm_mean_recall"] > 4 * chance, after
    assert after["itc_t2i_r1"] > 3 * after["retrieval_chance_r1"], after
    assert before["itc_mean_recall"] < 2 * chance
    assert metrics["train"]["train_loss"] > 0 and (output / "model.safetensors").is_file()


@pytest.mark.slow
def test_retrieval_fine_tuning_from_the_pretrained_model(pretrained, tmp_path):
    after = fine_tuning_run("albef", "retrieval", pretrained[0], tmp_path)
    assert after["itc_mean_recall"] > 4 * chance_mean_recall(after) and after["itm_mean_recall"] > 4 * chance_mean_recall(after)
    # `hf-vlp evaluate` reads the task from the saved class and prints the same table
    assert main(["evaluate", str(tmp_path), "--dataset", "synthetic-shapes:n=100", "--eval-max-samples", "20"]) == 0


@pytest.mark.slow
def test_vqa_fine_tuning_from_the_pretrained_model(pretrained, tmp_path):
    after = fine_tuning_run("albef", "vqa", pretrained[0], tmp_path)
    # the question type alone gives about 1/3 (answers per type: 2 to 6); chance over the 22 candidates is 1/22
    assert after["vqa_accuracy"] > 8 * after["vqa_chance"] and after["vqa_accuracy"] > 4 * after["vqa_majority_baseline"]
    assert after["vqa_accuracy"] > 0.4, after


@pytest.mark.slow
def test_snli_ve_fine_tuning_uses_the_image(pretrained, tmp_path):
    after = fine_tuning_run("albef", "snli-ve", pretrained[0], tmp_path)
    # the hypothesis alone can reach 2/3 (claims: entailment or contradiction; unverifiable: neutral or contradiction)
    assert after["accuracy"] > 0.7 > 2 * after["chance"], after
    assert after["accuracy_contradiction"] > 0.1, after


@pytest.mark.slow
def test_nlvr2_fine_tuning_from_the_pretrained_model(pretrained, tmp_path):
    after = fine_tuning_run("albef", "nlvr2", pretrained[0], tmp_path)
    assert after["accuracy"] > 0.58 and after["accuracy"] > after["majority_baseline"] + 0.06, after
    assert min(after["accuracy_False"], after["accuracy_True"]) > 0.4, after


# ----------------------------------------------------------------------------------------------- initialisation


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """A tiny transformers ViT and BERT (with its tokenizer), as --vision-init / --text-init directories."""
    folder = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                       patch_size=16)).save_pretrained(folder / "vit")
    tokenizer = synthetic_wordpiece_tokenizer()
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=40)).save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    return folder / "vit", folder / "bert"


def test_every_task_builds_from_transformers_towers(towers):
    vit_dir, bert_dir = towers
    vit = load_file(vit_dir / "model.safetensors")
    bert = load_file(bert_dir / "model.safetensors")
    patch = vit["embeddings.patch_embeddings.projection.weight"]
    words = bert["bert.embeddings.word_embeddings.weight"]
    second_ffn = bert["bert.encoder.layer.1.intermediate.dense.weight"]
    for task_name in ("pretrain", "retrieval", "vqa", "nlvr2", "snli-ve"):
        task = get_task("albef", task_name)
        model, processor = task.build(JobArguments(task=task_name, vision_init=str(vit_dir), text_init=str(bert_dir)))
        assert isinstance(model, task.model_classes[0])
        config = model.config
        assert config.vision_config.hidden_size == 32 and config.vision_config.image_size == 32
        assert config.text_config.num_hidden_layers == 2 and config.text_config.fusion_layer == 1
        assert len(processor.tokenizer) == config.text_config.vocab_size
        vision = model.albef.vision_model if hasattr(model, "albef") else model.vision_model
        text = model.albef.text_model if hasattr(model, "albef") else model.text_model
        torch.testing.assert_close(vision.transformer.patch_embed.weight, patch)
        torch.testing.assert_close(text.transformer.embeddings.word_embeddings.weight, words)
        for online, momentum in model.momentum_pairs():
            for p, p_m in zip(online.parameters(), momentum.parameters()):
                assert torch.equal(p, p_m) and not p_m.requires_grad
        if task_name == "vqa":  # answer decoder layer 0 from the first fusion layer (BERT layer 1), as VQA.py
            torch.testing.assert_close(model.answer_decoder.transformer.encoder.layers[0].mlp.fc1.weight, second_ffn)
            assert processor.answer_list is not None


def test_a_pretrained_albef_feeds_every_task(tmp_path):
    torch.manual_seed(0)
    task = get_task("albef", "pretrain")
    model, processor = task.build(JobArguments(task="pretrain"))
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    patch = model.vision_model.transformer.patch_embed.weight
    for task_name in ("retrieval", "vqa", "nlvr2", "snli-ve"):
        tuned, tuned_processor = get_task("albef", task_name).build(JobArguments(task=task_name, from_pretrained=str(tmp_path)))
        vision = tuned.albef.vision_model if hasattr(tuned, "albef") else tuned.vision_model
        assert torch.equal(vision.transformer.patch_embed.weight, patch), task_name
        assert all(not p.requires_grad for _, momentum in tuned.momentum_pairs() for p in momentum.parameters())
        if task_name == "vqa":
            tuned.save_pretrained(tmp_path / "vqa")
    with pytest.raises(ValueError, match="holds a VlpAlbefForQuestionAnswering; albef --task retrieval starts from"):
        get_task("albef", "retrieval").build(JobArguments(task="retrieval", from_pretrained=str(tmp_path / "vqa")))
    with pytest.raises(ValueError, match="--queue-size 32"):
        get_task("albef", "retrieval").build(JobArguments(task="retrieval", from_pretrained=str(tmp_path), queue_size=32))
    with pytest.raises(ValueError, match="--preset"):
        get_task("albef", "pretrain").build(JobArguments(task="pretrain", preset="ViT-B/16"))


# ------------------------------------------------------------------------------------------------------- resume


def test_interrupted_and_resumed_run_ends_with_the_same_weights_and_queues(tmp_path):
    # 4 images x 5 captions, batch 8: two steps per epoch, so checkpoint-3 lies inside epoch 1; the paper's
    # augmentation (crop, RandAugment, flip with the word swap) and the MLM masking are drawn per (seed, epoch, sample).
    job = _job("pretrain", dataset="synthetic-shapes:n=4", skip_eval=True, augment="paper")
    common = dict(per_device_train_batch_size=8, max_steps=6, save_strategy="steps", save_steps=3, logging_steps=1)
    train("albef", job, _args("pretrain", tmp_path / "straight", **common))
    checkpoint = tmp_path / "straight" / "checkpoint-3"
    assert (checkpoint / "model.safetensors").is_file()
    train("albef", job, _args("pretrain", tmp_path / "resumed", resume_from_checkpoint=str(checkpoint), **common))
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert {"image_queue.queue", "image_queue.ptr", "text_queue.queue", "momentum_vision_proj.weight"} <= set(straight)
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key
    assert not torch.equal(straight["vision_proj.weight"], load_file(checkpoint / "model.safetensors")["vision_proj.weight"])
