"""The (architecture, task) registry: lookup, defaults, errors, and a new task plugged in without editing the runner."""

import json
import pytest
import torch
from torch import nn
from transformers import TrainingArguments

from hf_vlp.models.albef import VlpAlbefForImageTextRetrieval, VlpAlbefForPretraining, VlpAlbefForVisualEntailment
from hf_vlp.training import tasks as registry
from hf_vlp.training.collators import ImageTextCollator
from hf_vlp.training.job import JobArguments
from hf_vlp.training.recipes import ALBEF_PAPER, RECIPES, Recipe, get_recipe, register_recipe
from hf_vlp.training.runner import train


def test_builtin_tasks_and_defaults():
    assert {"clip", "albef"} <= set(registry.architectures())
    assert registry.task_names("clip") == ["contrastive"]
    assert registry.task_names("albef") == ["pretrain", "retrieval", "vqa", "nlvr2", "snli-ve"]
    assert registry.get_task("albef").name == "pretrain" and registry.get_task("clip").name == "contrastive"
    assert registry.task_for_model_class("VlpAlbefForImageTextRetrieval").name == "retrieval"
    assert registry.task_for_model_class("VlpAlbefForVisualReasoning").name == "nlvr2"
    assert registry.task_for_model_class("VlpClipModel").architecture == "clip"
    for task_name in registry.task_names("albef"):
        recipe = get_recipe("albef", task_name)
        assert recipe.paper == ALBEF_PAPER[task_name] and recipe.paper["learning_rate"] > 0
        # the tiny queue must hold whole global batches (MomentumCallback checks it at train start)
        assert recipe.tiny_config["queue_size"] % recipe.training_defaults["per_device_train_batch_size"] == 0
    assert set(RECIPES) >= {("albef", name) for name in registry.task_names("albef")}


def test_unknown_architecture_or_task_lists_what_exists():
    with pytest.raises(ValueError, match=r"albef has no task 'caption'; its tasks are: pretrain, retrieval, vqa, nlvr2, snli-ve"):
        registry.get_task("albef", "caption")
    with pytest.raises(ValueError, match=r"No training tasks for architecture 'vilbert'; available: \[.*'albef'.*'clip'"):
        registry.get_task("vilbert")
    with pytest.raises(ValueError, match="known model classes"):
        registry.task_for_model_class("BertModel")


def test_job_arguments_reject_half_or_conflicting_tower_initialisation():
    with pytest.raises(ValueError, match="--vision-init was given without --text-init"):
        JobArguments(vision_init="vit")
    with pytest.raises(ValueError, match="--text-init was given without --vision-init"):
        JobArguments(text_init="bert")
    with pytest.raises(ValueError, match="cannot be combined"):
        JobArguments(vision_init="vit", text_init="bert", from_pretrained="albef")


def test_saved_model_class_reads_the_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["VlpAlbefForVisualEntailment"]}))
    assert registry.saved_model_class(tmp_path) == "VlpAlbefForVisualEntailment"
    with pytest.raises(FileNotFoundError, match="config.json"):
        registry.saved_model_class(tmp_path / "missing")


class _NoProcessor:
    tokenizer = None

    def __call__(self, **kwargs):
        return kwargs


class _RowCollator(ImageTextCollator):
    def __call__(self, rows):
        batch = self.collect(rows)
        return {"features": torch.stack([torch.tensor(image.getpixel((0, 0)), dtype=torch.float32) for image in batch.images])}


class _MeanModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, features):
        return {"loss": ((features / 255 - self.bias) ** 2).mean()}


class _ToyTask(registry.TrainingTask):
    """A third architecture registered from outside: the runner trains and evaluates it unchanged."""

    architecture, name = "toy", "mean-colour"
    recipe = Recipe(architecture="toy", task="mean-colour", tiny_config={}, image_size=16, context_length=8)
    model_classes = ()

    def build(self, job):
        return _MeanModel(), None

    def collator(self, model, processor, job, seed, bad_samples=None, train=True):
        return _RowCollator(_NoProcessor(), bad_samples=bad_samples)

    def evaluate(self, model, processor, job, spec, split, batch_size):
        return {"bias_norm": float(model.bias.detach().norm())}


def test_a_registered_task_runs_through_the_generic_runner(tmp_path, monkeypatch):
    monkeypatch.setattr(registry.base, "_REGISTRY", {key: dict(value) for key, value in registry.base._REGISTRY.items()})
    monkeypatch.setattr(registry.base, "_DEFAULT_TASKS", dict(registry.base._DEFAULT_TASKS))
    monkeypatch.setattr("hf_vlp.training.recipes.RECIPES", dict(RECIPES))
    registry.register_task(_ToyTask())
    assert register_recipe(_ToyTask.recipe) is get_recipe("toy", "mean-colour")
    with pytest.raises(ValueError, match="architecture and task"):
        register_recipe(Recipe(architecture="toy", task="", tiny_config={}, image_size=8, context_length=4))
    assert registry.get_task("toy").name == "mean-colour"
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=0.1,
                             report_to="none", save_strategy="no", remove_unused_columns=False, use_cpu=True)
    metrics = train("toy", JobArguments(dataset="synthetic-shapes:n=8"), args)
    assert metrics["task"] == "mean-colour" and metrics["after"]["bias_norm"] > metrics["before"]["bias_norm"] == 0.0


def test_albef_model_classes_per_task():
    assert registry.get_task("albef", "pretrain").model_classes[0] is VlpAlbefForPretraining
    assert registry.get_task("albef", "retrieval").model_classes[0] is VlpAlbefForImageTextRetrieval
    assert registry.get_task("albef", "snli-ve").model_classes[0] is VlpAlbefForVisualEntailment
