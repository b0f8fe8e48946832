"""``hf-vlp train coca``: the tasks, their loss weights, the pad id surviving the Trainer, learning above chance end to
end (zero-shot accuracy through the text tower, caption BLEU-4 and CIDEr), the caption task and the command line."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers.trainer_utils import align_special_tokens

from hf_vlp.cli import main
from hf_vlp.models.coca import VlpCocaForConditionalGeneration, VlpCocaModel
from hf_vlp.training.job import JobArguments
from hf_vlp.training.recipes import get_recipe
from hf_vlp.training.runner import train
from hf_vlp.training.tasks import get_task, task_for_model_class, task_names
from hf_vlp.training.tasks.coca import COCA_PAPER
from tests.training.task_runs import recipe_job, recipe_training_args

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = {"pretrain": (1.0, 2.0), "caption": (0.0, 1.0)}
IMAGES = [Image.new("RGB", (64, 64), colour) for colour in ((220, 30, 30), (30, 60, 220))]
ROWS = [{"image": IMAGES[0], "text": "a small red circle on the left"}, {"image": IMAGES[1], "text": "wow! blue"}]


def _built(task: str, **job: object) -> tuple[VlpCocaForConditionalGeneration, object]:
    torch.manual_seed(0)
    return get_task("coca", task).build(JobArguments(task=task, **job))


def test_coca_tasks_are_registered_with_the_papers_values_and_their_loss_weights():
    assert task_names("coca") == ["pretrain", "caption"] and get_task("coca").name == "pretrain"
    assert task_for_model_class("VlpCocaForConditionalGeneration").name == "pretrain"
    assert task_for_model_class("VlpCocaModel").architecture == "coca"  # a dual encoder evaluates (no captions)
    assert COCA_PAPER["pretrain"]["learning_rate"] == 8e-4 and COCA_PAPER["pretrain"]["global_batch_size"] == 65536
    assert COCA_PAPER["caption"]["learning_rate"] == 1e-5 and COCA_PAPER["caption"]["optimizer"].endswith("0.1")
    for name, (contrastive, caption) in WEIGHTS.items():
        options = get_recipe("coca", name).task_options
        assert (options["contrastive_loss_weight"], options["caption_loss_weight"]) == (contrastive, caption)
    # every parameter trains in pre-training; without the contrastive term DDP must look for unused ones
    assert get_recipe("coca", "pretrain").training_defaults["ddp_find_unused_parameters"] is False
    assert "ddp_find_unused_parameters" not in get_recipe("coca", "caption").training_defaults


def test_each_task_writes_its_loss_weights_and_captioning_trains_the_caption_loss_alone():
    for name, weights in WEIGHTS.items():
        model, processor = _built(name)
        assert (model.config.contrastive_loss_weight, model.config.caption_loss_weight) == weights
        task = get_task("coca", name)
        collator = task.collator(model, processor, JobArguments(task=name), seed=0, train=False)
        output = model(**collator(ROWS))
        if name == "caption":
            assert output.contrastive_loss is None and torch.equal(output.loss, output.caption_loss)
        else:
            assert output.contrastive_loss > 0
            torch.testing.assert_close(output.loss, output.contrastive_loss + output.caption_loss)
        callbacks = task.callbacks(model, collator)
        assert [type(callback).__name__ for callback in callbacks] == [
            "LogitScaleClampCallback", "CollatorEpochCallback", "CocaLossTermsCallback"
        ]
        assert callbacks[0].max_value == model.config.logit_scale_max


def test_the_pad_id_survives_the_trainer_and_end_of_text_is_learnt():
    """A CLIP tokenizer pads with end-of-text and ``Trainer.train`` aligns the model's pad id with the tokenizer's:
    CoCa's pad (0) must stay, or end-of-text would be left out of the captioning loss and the captioner never stop."""
    model, processor = _built("pretrain")
    reference = get_task("clip").build(JobArguments())[1].tokenizer  # the packaged BPE, untouched
    align_special_tokens(model, processor)  # what Trainer.train does first
    assert model.config.text_config.pad_token_id == model.generation_config.pad_token_id == processor.pad_token_id == 0
    assert processor.tokenizer.pad_token_id == 0
    texts = [row["text"] for row in ROWS]
    assert processor.tokenizer(texts)["input_ids"] == reference(texts)["input_ids"]  # "!" is tokenised as before
    batch = get_task("coca").collator(model, processor, JobArguments(), seed=0, train=False)(ROWS)
    labels = model.caption_labels(batch["input_ids"])
    eos = model.config.text_config.eos_token_id
    assert ((labels == eos).sum(dim=1) == 1).all() and (labels[1] == -100).any()  # EOT learnt, pads left out


def test_bad_arguments_are_refused_with_the_fix(tmp_path, capsys):
    def cli(*arguments: str) -> tuple[int, str]:
        code = main(["train", "coca", *arguments, "--output-dir", str(tmp_path / "out")])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    code, said = cli("--task", "retrieval")
    assert code == 2 and "coca has no task 'retrieval'; its tasks are: pretrain, caption" in said
    code, said = cli("--preset", "coca_ViT-H-14")
    assert code == 1 and "Unknown CoCa preset 'coca_ViT-H-14'" in said and "coca_ViT-B-32" in said
    code, said = cli("--vision-init", "vit", "--text-init", "bert")
    assert code == 1 and "coca starts from --preset or --from-pretrained" in said


def test_a_saved_dual_encoder_is_evaluated_without_captions_and_not_fine_tuned(tmp_path, capsys):
    captioner, processor = _built("pretrain")
    VlpCocaModel(captioner.config).save_pretrained(tmp_path / "dual")
    processor.save_pretrained(tmp_path / "dual")
    evaluation = ["evaluate", str(tmp_path / "dual"), "--dataset", "synthetic-shapes:n=8", "--eval-max-samples", "8"]
    assert main(evaluation) == 0
    printed = capsys.readouterr().out
    assert "zero_shot_top1" in printed and "CIDEr" not in printed
    code = main(["train", "coca", "--task", "caption", "--from-pretrained", str(tmp_path / "dual"), "--output-dir",
                 str(tmp_path / "out")])
    said = capsys.readouterr().err
    assert code == 1 and "holds a VlpCocaModel; coca --task caption trains a VlpCocaForConditionalGeneration" in said


def test_pretraining_without_the_caption_scorers_reports_zero_shot_and_says_why(monkeypatch, capsys):
    import hf_vlp.training.tasks.coca as coca_tasks

    monkeypatch.setattr(coca_tasks, "caption_scorers_available", lambda: False)
    model, processor = _built("pretrain")
    job = JobArguments(task="pretrain", eval_max_samples=8)
    metrics = get_task("coca", "pretrain").evaluate(model.eval(), processor, job, "synthetic-shapes:n=8", "test", 8)
    assert "zero_shot_top1" in metrics and "CIDEr" not in metrics
    assert "pip install 'hf_vlp[captioning]'" in capsys.readouterr().out
    with pytest.raises(ImportError, match="captioning"):  # the captioning task cannot be scored without them
        monkeypatch.setattr("hf_vlp.evaluation.captioning._scorers", _missing_scorers)
        get_task("coca", "caption").evaluate(model.eval(), processor, job, "synthetic-shapes:n=8", "test", 8)


def _missing_scorers() -> None:
    raise ImportError("Caption metrics need the COCO caption scorers: pip install 'hf_vlp[captioning]'")


# ----------------------------------------------------------------------------------------- learning end to end

# a shortened pre-training run: the recipe's model, optimizer and schedule, fewer and smaller steps
RUN = {"per_device_train_batch_size": 16, "max_steps": 100, "logging_steps": 25, "save_strategy": "no"}
EVAL_IMAGES = 48


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    output = tmp_path_factory.mktemp("coca-pretrain")
    job = recipe_job("coca", "pretrain", dataset="synthetic-shapes:n=500", eval_max_samples=EVAL_IMAGES)
    return output, train("coca", job, recipe_training_args("coca", "pretrain", output, **RUN))


def test_pretraining_learns_zero_shot_retrieval_and_captions_well_above_chance(pretrained):
    output, metrics = pretrained
    before, after = metrics["before"], metrics["after"]
    assert after["zero_shot_top1"] > 2 * after["zero_shot_chance_top1"], after
    assert after["retrieval_mean_recall"] > 3 * before["retrieval_mean_recall"], (before, after)
    assert before["Bleu_4"] < 0.02 and before["CIDEr"] < 0.1, before
    assert after["Bleu_4"] > 0.05 and after["CIDEr"] > 0.5, after
    history = json.loads((output / "metrics.json").read_text())["log_history"]
    logged = [entry for entry in history if "loss" in entry]
    assert len(logged) == RUN["max_steps"] // RUN["logging_steps"]
    for entry in logged:  # the weighted terms add up to the total
        assert entry["loss_contrastive"] + entry["loss_caption"] == pytest.approx(entry["loss"], rel=1e-3)
    assert logged[-1]["loss"] < 0.5 * logged[0]["loss"]
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == ["VlpCocaForConditionalGeneration"]
    assert (config["contrastive_loss_weight"], config["caption_loss_weight"]) == WEIGHTS["pretrain"]
    # the Trainer left CoCa's pad id alone (see test_the_pad_id_survives_the_trainer_and_end_of_text_is_learnt)
    generation = json.loads((output / "generation_config.json").read_text())
    assert config["text_config"]["pad_token_id"] == generation["pad_token_id"] == 0


def test_cli_fine_tunes_a_captioner_from_the_pretrained_model(pretrained, tmp_path, capsys):
    output = tmp_path / "caption"
    code = main(["train", "coca", "--task", "caption", "--from-pretrained", str(pretrained[0]), "--max-steps", "2",
                 "--per-device-train-batch-size", "4", "--dataset", "synthetic-shapes:n=16", "--eval-max-samples",
                 "8", "--output-dir", str(output), "--save-strategy", "no", "--disable-tqdm", "true",
                 "--logging-steps", "1"])
    assert code == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["task"] == "caption" and {"Bleu_4", "CIDEr"} <= set(metrics["after"])
    assert not any(name.startswith("zero_shot") for name in metrics["after"])
    logged = [entry for entry in metrics["log_history"] if "loss" in entry]
    assert all("loss_contrastive" not in entry and entry["loss_caption"] == entry["loss"] for entry in logged)
    config = json.loads((output / "config.json").read_text())
    assert (config["contrastive_loss_weight"], config["caption_loss_weight"]) == WEIGHTS["caption"]
    # the pre-trained captioner already captions the held-out images (the fine-tune starts from it)
    assert metrics["before"]["Bleu_1"] > 0.3, metrics["before"]
    capsys.readouterr()
    assert main(["evaluate", str(output), "--dataset", "synthetic-shapes:n=8", "--eval-max-samples", "8"]) == 0
    printed = capsys.readouterr().out
    assert "CIDEr" in printed and "zero_shot_top1" in printed
