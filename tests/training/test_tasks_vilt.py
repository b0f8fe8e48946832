"""``hf-vlp train vilt``: the tasks, their recipes, a saved ViLT feeding every task (heads initialised from the loaded
rows), the answer vocabulary, and every task learning the synthetic data well above chance in a short CPU run.

The runs are sized for the test budget and chained, each starting from the previous run's model as fine-tuning starts
from a trained ViLT: retrieval from scratch (its cross-entropy over each image's texts learns matching within ~50
steps), pre-training from that model, VQA from the pre-trained model, NLVR2 from the VQA model. Pre-training from
scratch is not run here: the tiny model's binary ITM sits at chance for 300-750 steps before it learns (the recipe
runs 800), more than the budget holds."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from PIL import Image

from hf_vlp.cli import main
from hf_vlp.models.vilt import (
    VlpViltForImageTextRetrieval,
    VlpViltForPretraining,
    VlpViltForQuestionAnswering,
    VlpViltForVisualReasoning,
)
from hf_vlp.synthetic import VQA_ANSWERS
from hf_vlp.training.job import JobArguments
from hf_vlp.training.recipes import VILT_PAPER, get_recipe
from hf_vlp.training.runner import train
from hf_vlp.training.tasks import get_task, task_for_model_class, task_names
from hf_vlp.training.tasks.classifier_vqa import answer_column_values, answer_vocabulary
from tests.training.task_runs import chance_mean_recall, recipe_job, recipe_training_args

TASKS = ("pretrain", "vqa", "nlvr2", "retrieval")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train faster on one thread (see test_albef_tasks.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(task: str, output_dir, steps: int, job: dict | None = None, **training) -> dict:
    """``hf-vlp train vilt --task TASK`` with the recipe's defaults but ``steps`` steps and the given overrides."""
    args = recipe_training_args("vilt", task, output_dir, max_steps=steps, **training)
    return train("vilt", recipe_job("vilt", task, **(job or {})), args)


# --------------------------------------------------------------------------------------------------- registry


def test_vilt_tasks_are_registered_with_the_papers_values_and_tiny_defaults():
    assert task_names("vilt") == list(TASKS) and get_task("vilt").name == "pretrain"
    for cls, name in ((VlpViltForPretraining, "pretrain"), (VlpViltForQuestionAnswering, "vqa"),
                      (VlpViltForVisualReasoning, "nlvr2"), (VlpViltForImageTextRetrieval, "retrieval")):
        assert task_for_model_class(cls.__name__).name == name and get_task("vilt", name).model_classes[0] is cls
    for name in TASKS:
        recipe = get_recipe("vilt", name)
        assert recipe.paper == VILT_PAPER[name] and recipe.paper["learning_rate"] == 1e-4
        assert recipe.paper["optimizer"].startswith("AdamW(beta1 0.9, beta2 0.98, eps 1e-8), weight decay 0.01")
        defaults = recipe.training_defaults
        assert (defaults["adam_beta2"], defaults["adam_epsilon"], defaults["weight_decay"]) == (0.98, 1e-8, 0.01)
        assert defaults["lr_scheduler_type"] == "linear" and defaults["warmup_steps"] == 0.1
    assert get_recipe("vilt", "vqa").lr_multipliers == {"classifier": 10.0}
    assert all(not get_recipe("vilt", name).lr_multipliers for name in ("pretrain", "nlvr2", "retrieval"))
    assert VILT_PAPER["pretrain"]["max_image_length"] == 200 and VILT_PAPER["vqa"]["max_image_length"] == -1
    assert [VILT_PAPER[name]["global_batch_size"] for name in TASKS] == [4096, 256, 128, 256]
    assert "2,500" in VILT_PAPER["pretrain"]["schedule"] and "10%" in VILT_PAPER["vqa"]["schedule"]
    # RandAugment on training images of the fine-tuning tasks only, with --augment paper (the default on real data)
    real, synthetic = JobArguments(dataset="nlphuji/flickr30k"), JobArguments()
    assert get_task("vilt", "pretrain").augmentation(real, train=True) == "paper"
    assert get_task("vilt", "pretrain").train_transform(64) is None
    for name in ("vqa", "nlvr2", "retrieval"):
        task = get_task("vilt", name)
        assert type(task.train_transform(64).transforms[0]).__name__ == "ViltRandAugmentPil"
        assert task.augmentation(real, train=True) == "paper" and task.augmentation(real, train=False) == "none"
        assert task.augmentation(synthetic, train=True) == "none"  # its colours and positions are the labels
    model, processor = get_task("vilt", "vqa").build(JobArguments(task="vqa"))
    paper = get_task("vilt", "vqa").collator_settings(model, real, 0, None, train=True)
    assert paper["image_transform"] is not None and paper["horizontal_flip"] == "none"  # the original never flips


def test_build_refuses_what_vilt_does_not_have():
    task = get_task("vilt", "pretrain")
    with pytest.raises(ValueError, match="--preset"):
        task.build(JobArguments(preset="ViT-B/32"))
    with pytest.raises(ValueError, match="no separate towers"):
        task.build(JobArguments(vision_init="vit", text_init="bert"))
    with pytest.raises(ValueError, match="no feature queues"):
        task.build(JobArguments(queue_size=64))


def test_a_pretrained_vilt_feeds_every_task(tmp_path):
    torch.manual_seed(0)
    model, processor = get_task("vilt", "pretrain").build(JobArguments(task="pretrain"))
    assert model.config.max_image_length == 200 and model.config.patch_size == 8
    assert processor.image_processor.size["shortest_edge"] == 64 and processor.max_length == 40
    with torch.no_grad():  # distinctive rows, so that copies are told from initialisations
        model.vilt.modality_embeddings.weight.normal_()
        model.itm_head.weight.normal_()
    model.save_pretrained(tmp_path / "pretrain")
    processor.save_pretrained(tmp_path / "pretrain")
    source = str(tmp_path / "pretrain")
    patch = model.vilt.transformer.patch_embed.weight
    for name in ("vqa", "nlvr2", "retrieval"):
        tuned, _ = get_task("vilt", name).build(JobArguments(task=name, from_pretrained=source))
        assert torch.equal(tuned.vilt.transformer.patch_embed.weight, patch), name
        assert tuned.config.max_image_length == -1  # fine-tuning takes every patch
        tuned.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
        if name == "vqa":  # the answer vocabulary, stored in the config before training
            assert tuned.config.num_labels == len(VQA_ANSWERS) == tuned.classifier[3].out_features
            assert [tuned.config.id2label[index] for index in range(len(VQA_ANSWERS))] == list(VQA_ANSWERS)
        if name == "nlvr2":  # the second image's modality row starts as the image row
            assert torch.equal(tuned.second_image_modality_embedding, model.vilt.modality_embeddings.weight[1])
            assert tuned.config.id2label == {0: "False", 1: "True"}
        if name == "retrieval":  # rank_output starts as the ITM match row (zero-shot scorer), the ITM head frozen
            assert torch.equal(tuned.rank_output.weight[0], model.itm_head.weight[1])
            assert not any(parameter.requires_grad for parameter in tuned.itm_head.parameters())
    # a task's own directory reloads as it is; another head's classifier of another size starts fresh
    vqa, _ = get_task("vilt", "vqa").build(JobArguments(task="vqa", from_pretrained=str(tmp_path / "vqa")))
    assert vqa.config.num_labels == len(VQA_ANSWERS)
    nlvr2, _ = get_task("vilt", "nlvr2").build(JobArguments(task="nlvr2", from_pretrained=str(tmp_path / "vqa")))
    assert nlvr2.classifier[3].out_features == 2
    pretrain, _ = get_task("vilt", "pretrain").build(JobArguments(task="pretrain", from_pretrained=str(tmp_path / "nlvr2")))
    assert pretrain.config.max_image_length == 200
    with pytest.raises(ValueError, match="--image-size 96: the saved model works at 64 px"):
        get_task("vilt", "vqa").build(JobArguments(task="vqa", from_pretrained=source, image_size=96))
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text(json.dumps({"architectures": ["VlpClipModel"]}))
    with pytest.raises(ValueError, match="holds a VlpClipModel; vilt --task vqa starts from a saved ViLT"):
        get_task("vilt", "vqa").build(JobArguments(task="vqa", from_pretrained=str(tmp_path / "clip")))


def test_answer_vocabulary_is_each_questions_major_answer_seen_often_enough():
    answers = [
        ["two"] * 6 + ["3"] * 4,  # major answer "2" (numbers normalised)
        "yes",
        [{"answer": "Yes"}, {"answer": "no"}, {"answer": "yes"}],
        "red",
        "2",
        ["no", "no", "yes"],
    ]
    assert answer_vocabulary(answers) == ["2", "yes", "red", "no"]
    assert answer_vocabulary(answers, min_count=2) == ["2", "yes"]
    with pytest.raises(ValueError, match="min_answer_count"):
        answer_vocabulary(answers, min_count=5)
    table = datasets.Dataset.from_dict({"question": ["q"] * 3, "answers": [["a", "b"], ["c"], ["d", "d"]]})
    decoded = table.with_transform(lambda batch: {"oops": ["decoded"] * len(batch["question"])})
    assert answer_column_values(decoded) == [["a", "b"], ["c"], ["d", "d"]]  # the raw column, nothing decoded


def test_vqa_on_a_dataset_with_annotators_answers(tmp_path):
    """A VQAv2-like table (ten answers per question): the vocabulary comes from its training split and is saved in the
    config, the targets are soft scores, evaluation scores the arg-max answer against every answer."""
    colours = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 160, 40)}
    rows = {"image": [], "question": [], "answers": []}
    for index in range(24):
        name = list(colours)[index % 3]
        rows["image"].append(Image.new("RGB", (64, 64), colours[name]))
        rows["question"].append("what colour is it?")
        rows["answers"].append([name] * 8 + ["purple"] * 2 if index % 4 else [name] * 3 + ["Two"] * 7)
    table = datasets.Dataset.from_dict(rows, features=datasets.Features({
        "image": datasets.Image(), "question": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")),
    }))
    datasets.DatasetDict({"train": table, "validation": table.select(range(8))}).save_to_disk(tmp_path / "vqa")
    job = JobArguments(task="vqa", dataset=str(tmp_path / "vqa"), eval_max_samples=8)
    task = get_task("vilt", "vqa")
    model, processor = task.build(job)
    # each question's major answer, normalised ("Two" -> "2"), in order of first appearance; "purple" never leads
    assert model.config.label2id == {"2": 0, "blue": 1, "green": 2, "red": 3}
    collate = task.collator(model, processor, job, seed=0, train=False)
    batch = collate([{**{key: rows[key][index] for key in rows}, "text": rows["question"][index]} for index in (0, 1)])
    torch.testing.assert_close(batch["labels"], torch.tensor([[1.0, 0, 0, 0.9], [0, 1.0, 0, 0]]))
    metrics = task.evaluate(model, processor, job, job.dataset, "validation", batch_size=4)
    assert set(metrics) == {"vqa_accuracy", "vqa_chance", "vqa_majority_baseline"} and metrics["vqa_chance"] == 0.25
    args = recipe_training_args("vilt", "vqa", tmp_path / "out", max_steps=2, per_device_train_batch_size=4)
    trained = train("vilt", JobArguments(**{**job.__dict__, "skip_eval": True}), args)
    assert trained["train"]["epoch"] > 0
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["id2label"] == {"0": "2", "1": "blue", "2": "green", "3": "red"}


# ----------------------------------------------------------------------------------------- learning end to end


@pytest.fixture(scope="module")
def retrieval_run(tmp_path_factory):
    """Retrieval fine-tuning from scratch: 16 images x (caption + 3 negatives) per step."""
    output = tmp_path_factory.mktemp("vilt-retrieval")
    return output, _run("retrieval", output, steps=100, job={"eval_max_samples": 20})


@pytest.fixture(scope="module")
def pretraining_run(retrieval_run, tmp_path_factory):
    """Pre-training (MLM + ITM + WPA) from the retrieval run's model."""
    output = tmp_path_factory.mktemp("vilt-pretrain")
    job = {"eval_max_samples": 20, "from_pretrained": str(retrieval_run[0])}
    return output, _run("pretrain", output, steps=60, job=job)


@pytest.fixture(scope="module")
def vqa_run(pretraining_run, tmp_path_factory):
    """VQA from the pre-trained model (fewer steps and evaluation rows than the recipe)."""
    output = tmp_path_factory.mktemp("vilt-vqa")
    return output, _run("vqa", output, steps=150, job={"eval_max_samples": 300, "from_pretrained": str(pretraining_run[0])})


@pytest.mark.slow
def test_retrieval_learns_matching_from_scratch(retrieval_run):
    output, metrics = retrieval_run
    before, after = metrics["before"], metrics["after"]
    chance = chance_mean_recall(after)
    assert before["itm_mean_recall"] < 1.5 * chance, before
    assert after["itm_mean_recall"] > 2 * chance, after
    assert min(after["itm_t2i_r1"], after["itm_i2t_r1"]) > 3 * after["retrieval_chance_r1"], after
    assert "itc_mean_recall" not in after  # a single-stream model scores every pair jointly, no contrastive stage
    # `hf-vlp evaluate` reads the task from the saved class
    assert main(["evaluate", str(output), "--dataset", "synthetic-shapes:n=20", "--eval-max-samples", "10"]) == 0


@pytest.mark.slow
def test_pretraining_objectives_learn_and_score_zero_shot_retrieval(pretraining_run):
    output, metrics = pretraining_run
    before, after = metrics["before"], metrics["after"]
    chance = chance_mean_recall(after)
    assert after["itm_mean_recall"] > 2 * chance and after["itm_t2i_r1"] > 3 * after["retrieval_chance_r1"], after
    assert after["itm_accuracy"] > 0.8, after  # ITM on the evaluation rows, half of them with another image
    assert before["mlm_accuracy"] < 0.05 < 0.25 < after["mlm_accuracy"], (before, after)
    terms = metrics["train"]
    assert terms["train_loss_mlm"] > 0 and terms["train_loss_itm"] > 0 and "train_loss_wpa" in terms
    saved = json.loads((output / "config.json").read_text())
    assert saved["architectures"] == ["VlpViltForPretraining"] and saved["max_image_length"] == 200


@pytest.mark.slow
def test_vqa_fine_tuning_from_the_pretrained_model(vqa_run):
    output, metrics = vqa_run
    after = metrics["after"]
    # the question type alone gives about 1/3 (answers per type: 2 to 6); chance over the 22 answers is 1/22
    assert after["vqa_accuracy"] > 8 * after["vqa_chance"] and after["vqa_accuracy"] > 4 * after["vqa_majority_baseline"]
    assert after["vqa_accuracy"] > 0.45 > 0.1 > metrics["before"]["vqa_accuracy"], metrics
    saved = json.loads((output / "config.json").read_text())
    assert saved["id2label"]["0"] == VQA_ANSWERS[0] and len(saved["id2label"]) == len(VQA_ANSWERS)


@pytest.mark.slow
def test_nlvr2_fine_tuning_from_the_vqa_model(vqa_run, tmp_path):
    metrics = _run("nlvr2", tmp_path, steps=300, job={"eval_max_samples": 400, "from_pretrained": str(vqa_run[0])})
    after = metrics["after"]
    assert after["accuracy"] > 0.56 and after["accuracy"] > after["majority_baseline"] + 0.04, after
    assert min(after["accuracy_False"], after["accuracy_True"]) > 0.35, after


# ------------------------------------------------------------------------------------------------ command line


def test_command_line_trains_and_evaluates_vilt_vqa(tmp_path, capsys):
    output = tmp_path / "vqa"
    code = main(["train", "vilt", "--task", "vqa", "--output-dir", str(output), "--max-steps", "3",
                 "--dataset", "synthetic-shapes:n=32", "--eval-max-samples", "16", "--per-device-train-batch-size", "8",
                 "--save-strategy", "no", "--disable-tqdm", "true"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "hf-vlp train vilt --task vqa" in printed and "vqa_accuracy" in printed
    assert (output / "model.safetensors").is_file() and (output / "processor_config.json").is_file()
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["architecture"] == "vilt" and metrics["task"] == "vqa" and metrics["train"]["epoch"] > 0
    assert main(["evaluate", str(output), "--dataset", "synthetic-shapes:n=16", "--eval-max-samples", "16"]) == 0
    image = Image.new("RGB", (64, 64), (220, 30, 30))
    model = VlpViltForQuestionAnswering.from_pretrained(output)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(output)
    logits = model(**processor(images=[image], text=["what colour is the circle?"], return_tensors="pt")).logits
    assert logits.shape == (1, len(VQA_ANSWERS))
