"""``hf-vlp train vlmo``: the stages (``--stage image|text|image-text``) and fine-tuning tasks, their recipes, the
errors, and a chain of short CPU runs in the paper's order: the text stage (from a saved fresh model, so that its
frozen weights can be compared bitwise), the image-text stage from it, then VQA, NLVR2 and retrieval from that.

The file has a budget of about 90 s on two cores, so the chain runs at 32 px (a 4 x 4 patch grid, about a quarter
of the recipe's 64-px cost) with a few dozen steps per run. What that buys, measured: the text stage's held-out
masked-token accuracy above the most frequent token (its attention is frozen at random weights here, where the
paper's is BEiT's), the image-text stage's dual-encoder recalls well above chance, retrieval fine-tuning keeping
them, VQA far above chance and the majority answer (the question type already tells much; grounding the answer in a
32-px image takes longer: the recipe's 64-px run grounds colours and counts), NLVR2 trained end to end (an image-pair
task above chance needs a grounded model and more steps than the budget holds).
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hf_vlp.cli import main
from hf_vlp.models.vlmo import (
    VlpVlmoForImageTextRetrieval,
    VlpVlmoForMaskedLM,
    VlpVlmoForPretraining,
    VlpVlmoForQuestionAnswering,
    VlpVlmoForVisualReasoning,
)
from hf_vlp.synthetic import VQA_ANSWERS
from hf_vlp.training.job import JobArguments
from hf_vlp.training.recipes import VLMO_PAPER, get_recipe
from hf_vlp.training.runner import train
from hf_vlp.training.tasks import get_task, task_for_model_class, task_for_stage, task_names
from hf_vlp.training.tasks.vlmo import TEXT_STAGE_TRAINABLE, parameter_group
from hf_vlp.training.tokenizers import synthetic_wordpiece_tokenizer
from tests.training.task_runs import chance_mean_recall, recipe_job, recipe_training_args

TASKS = ("pretrain", "pretrain-text", "pretrain-image", "vqa", "nlvr2", "retrieval")
FAST = {"image_size": 32}  # the chain's resolution (the recipe's is 64)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train faster on one thread (see test_albef_tasks.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(task: str, output_dir, steps: int, job: dict | None = None, **training) -> tuple[dict, str]:
    """``hf-vlp train vlmo --task TASK`` with the recipe's defaults but ``steps`` steps and the given overrides; the
    metrics and what the run printed."""
    args = recipe_training_args("vlmo", task, output_dir, max_steps=steps, **training)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        metrics = train("vlmo", recipe_job("vlmo", task, **(job or {})), args)
    return metrics, printed.getvalue()


def _saved_class(directory) -> str:
    return json.loads((directory / "config.json").read_text())["architectures"][0]


# --------------------------------------------------------------------------------------------------- registry


def test_vlmo_tasks_stages_and_recipes():
    assert task_names("vlmo") == list(TASKS) and get_task("vlmo").name == "pretrain"
    for cls, name in ((VlpVlmoForPretraining, "pretrain"), (VlpVlmoForMaskedLM, "pretrain-text"),
                      (VlpVlmoForQuestionAnswering, "vqa"), (VlpVlmoForVisualReasoning, "nlvr2"),
                      (VlpVlmoForImageTextRetrieval, "retrieval")):
        assert task_for_model_class(cls.__name__).name == name and get_task("vlmo", name).model_classes[0] is cls
    # --stage picks the task of --task's family
    for task, stage, expected in ((None, "image", "pretrain-image"), (None, "text", "pretrain-text"),
                                  ("pretrain", "image-text", "pretrain"), ("pretrain-text", None, "pretrain-text"),
                                  ("vqa", "fine", "vqa"), ("retrieval", None, "retrieval")):
        assert task_for_stage("vlmo", task, stage).name == expected
    for name in TASKS:
        recipe = get_recipe("vlmo", name)
        assert recipe.paper == VLMO_PAPER[name]
        defaults = recipe.training_defaults
        assert (defaults["adam_beta2"], defaults["adam_epsilon"], defaults["weight_decay"]) == (0.98, 1e-8, 0.01)
        assert defaults["lr_scheduler_type"] == "linear" and recipe.tiny_config["vl_ffn_start_layer"] == 2
    paper = VLMO_PAPER
    assert paper["pretrain"]["global_batch_size"] == paper["pretrain-text"]["global_batch_size"] == 1024
    assert paper["pretrain"]["steps"] == 200000 and paper["pretrain"]["warmup_steps"] == 2500
    assert paper["pretrain-text"]["learning_rate"] == 2e-4 and paper["pretrain-text"]["max_text_tokens"] == 196
    assert (paper["vqa"]["image_size"], paper["nlvr2"]["image_size"], paper["retrieval"]["image_size"]) == (480, 384, 384)
    assert "norm2_*" in paper["pretrain"]["optimizer"] and "BEiT" in paper["pretrain-image"]["stage"]
    assert get_recipe("vlmo", "vqa").lr_multipliers == {"classifier": 20.0}
    assert all(not get_recipe("vlmo", name).lr_multipliers for name in TASKS if name != "vqa")
    # augmentation: the paper's crop + RandAugment(2, 7) + flip on real data, none on synthetic-shapes
    real, synthetic = JobArguments(dataset="nlphuji/flickr30k"), JobArguments()
    for name in ("pretrain", "vqa", "retrieval"):
        task = get_task("vlmo", name)
        assert task.augmentation(real, train=True) == "paper" and task.augmentation(synthetic, train=True) == "none"
        assert task.augmentation(real, train=False) == "none"
        assert type(task.train_transform(64)).__name__ == "ComposePil"
    assert get_task("vlmo", "nlvr2").horizontal_flip == "none"  # "left"/"right" name the images
    # the released sizes (--preset); the text and image stages build no VL-FFN, as the original's text stage
    tokenizer = synthetic_wordpiece_tokenizer()
    large = get_task("vlmo", "pretrain").new_config(tokenizer, JobArguments(preset="large"))
    assert (large.hidden_size, large.num_hidden_layers, large.vl_ffn_start_layer, large.image_size) == (1024, 24, 21, 224)
    text_stage = get_task("vlmo", "pretrain-text").new_config(tokenizer, JobArguments(stage="text"))
    assert text_stage.vl_ffn_start_layer == text_stage.num_hidden_layers == 4 and text_stage.image_size == 64
    with pytest.raises(ValueError, match="Unknown VLMo preset"):
        get_task("vlmo", "pretrain").new_config(tokenizer, JobArguments(preset="huge"))


def test_parameter_groups_cover_every_vlmo_parameter():
    model, _ = get_task("vlmo", "pretrain").build(JobArguments(**FAST))
    groups = {parameter_group(name) for name, _ in model.named_parameters()}
    assert "other" not in groups and {"VL-FFN", "VL-FFN ITC projections", "ITM head", "final norm"} <= groups
    assert parameter_group("vlmo.encoder.layers.3.norm2.text.weight") == "L-FFN"
    assert parameter_group("mlm_head.norm.weight") == "MLM head"  # not the final norm


# ------------------------------------------------------------------------------------------------------ errors


def _cli(arguments: list[str], capsys) -> tuple[int, str]:
    code = main(["train", "vlmo", *arguments])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_stage_errors(tmp_path, capsys):
    code, said = _cli(["--stage", "image", "--output-dir", str(tmp_path / "image")], capsys)
    assert code == 1 and "--stage image needs --vision-init BEIT_DIR" in said
    code, said = _cli(["--stage", "text", "--task", "vqa"], capsys)
    assert code == 2 and "--stage text does not apply to vlmo --task vqa" in said and "--task pretrain-text" in said
    code, said = _cli(["--stage", "fine"], capsys)
    assert code == 2 and "trains --task nlvr2 | retrieval | vqa" in said
    code, said = _cli(["--stage", "middle"], capsys)
    assert code == 2
    assert main(["train", "vilt", "--stage", "text"]) == 2 and "vilt has no training stage" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--stage must be one of"):
        JobArguments(stage="middle")
    with pytest.raises(ValueError, match="--stage image takes only --vision-init"):
        JobArguments(stage="image", vision_init="beit", text_init="bert")
    JobArguments(stage="image", vision_init="beit", from_pretrained="vlmo")  # a BEiT into a saved VLMo is allowed
    # the programmatic route: the runner takes --task as given, and the task refuses a stage it does not train
    args = recipe_training_args("vlmo", "pretrain", tmp_path / "out")
    with pytest.raises(ValueError, match="run --task pretrain-text"):
        train("vlmo", JobArguments(task="pretrain", stage="text"), args)
    with pytest.raises(ValueError, match="has no data and no metrics"):
        get_task("vlmo", "pretrain-image").load_dataset("synthetic-shapes", "train", JobArguments())
    with pytest.raises(ValueError, match="VLMo starts from a BEiT in --stage image only"):
        get_task("vlmo", "vqa").build(JobArguments(task="vqa", vision_init="vit", text_init="bert"))
    with pytest.raises(ValueError, match="no feature queues"):
        get_task("vlmo", "retrieval").build(JobArguments(task="retrieval", queue_size=64))


# ----------------------------------------------------------------------------------------- stage 1 (BEiT)


def test_image_stage_loads_a_beit_and_trains_nothing(tmp_path, capsys):
    tower_init = pytest.importorskip("hf_vlp.utils.tower_init")
    if not hasattr(tower_init, "load_vlmo_from_beit"):
        pytest.skip("hf_vlp.utils.tower_init.load_vlmo_from_beit does not exist yet")
    from transformers import BeitConfig, BeitModel

    beit = BeitModel(BeitConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256, image_size=32, patch_size=8,
        use_relative_position_bias=True, layer_scale_init_value=0.1,
    ), add_pooling_layer=False)
    beit.save_pretrained(tmp_path / "beit")
    output = tmp_path / "image"
    code, said = _cli(["--stage", "image", "--vision-init", str(tmp_path / "beit"), "--image-size", "32",
                       "--output-dir", str(output)], capsys)
    assert code == 0, said
    assert "trains nothing (0 steps)" in said and "Initialised from" in said
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["stage"] == "image" and metrics["train"]["global_step"] == 0 and metrics["beit"]["copied"] > 0
    assert _saved_class(output) == "VlpVlmoForMaskedLM" and (output / "README.md").is_file()
    # the text stage starts from it: the BEiT's attention is what it keeps frozen
    model, _ = get_task("vlmo", "pretrain-text").build(JobArguments(stage="text", from_pretrained=str(output)))
    query = model.vlmo.encoder.layers[0].attn.qkv.weight[:64]
    assert torch.equal(query, beit.layers[0].attention.q_proj.weight.detach())
    assert not model.vlmo.encoder.layers[0].attn.qkv.weight.requires_grad
    assert model.config.vl_ffn_start_layer == model.config.num_hidden_layers  # no VL-FFN before the image-text stage


# ----------------------------------------------------------------------------------------- learning end to end


@pytest.fixture(scope="module")
def initial(tmp_path_factory):
    """A fresh tiny text-stage model at 32 px, saved: the text stage's starting point."""
    output = tmp_path_factory.mktemp("vlmo-initial")
    torch.manual_seed(0)
    model, processor = get_task("vlmo", "pretrain-text").build(JobArguments(stage="text", **FAST))
    model.save_pretrained(output)
    processor.save_pretrained(output)
    return output


@pytest.fixture(scope="module")
def text_run(initial, tmp_path_factory):
    """``hf-vlp train vlmo --stage text`` from the saved fresh model, through the command line."""
    output = tmp_path_factory.mktemp("vlmo-text")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        code = main(["train", "vlmo", "--stage", "text", "--from-pretrained", str(initial), "--output-dir",
                     str(output), "--overwrite-output-dir", "--max-steps", "100", "--logging-steps", "25",
                     "--dataset", "synthetic-shapes:n=300", "--eval-max-samples", "40", "--save-strategy", "no",
                     "--disable-tqdm", "true"])
    assert code == 0, printed.getvalue()
    return output, json.loads((output / "metrics.json").read_text()), printed.getvalue()


@pytest.fixture(scope="module")
def image_text_run(text_run, tmp_path_factory):
    """The image-text stage from the text stage's model."""
    output = tmp_path_factory.mktemp("vlmo-pretrain")
    job = {"from_pretrained": str(text_run[0]), "dataset": "synthetic-shapes:n=300", "eval_max_samples": 20,
           "eval_rerank_k": 4}
    return (output, *_run("pretrain", output, steps=100, job=job, per_device_train_batch_size=12, learning_rate=3e-3))


def test_text_stage_trains_only_the_text_experts_and_learns_mlm(initial, text_run):
    output, metrics, printed = text_run
    assert metrics["task"] == "pretrain-text"  # --stage text picked the task
    before, after = metrics["before"], metrics["after"]
    assert after["mlm_accuracy"] > after["mlm_majority_baseline"] + 0.03 > 20 * after["mlm_chance"], after
    assert before["mlm_accuracy"] < after["mlm_accuracy"]
    # the freezing, shown in the log and in metrics.json
    assert "trains the text experts only" in printed and "frozen: image embeddings" in printed
    train_metrics = metrics["train"]
    assert set(train_metrics["trainable_parameters"]) == TEXT_STAGE_TRAINABLE
    assert {"attention", "norm1", "layer scale", "V-FFN", "image embeddings"} <= set(train_metrics["frozen_parameters"])
    # frozen weights bitwise unchanged, the text experts trained
    start, end = load_file(initial / "model.safetensors"), load_file(output / "model.safetensors")
    assert start.keys() == end.keys()
    changed = {parameter_group(name) for name in start if not torch.equal(start[name], end[name])}
    assert changed == TEXT_STAGE_TRAINABLE, changed
    assert _saved_class(output) == "VlpVlmoForMaskedLM"


def test_image_text_stage_from_the_text_stage(image_text_run):
    output, metrics, printed = image_text_run
    # the VL-FFN, the VL-FFN path's projections and the ITM head are new in this stage; the rest comes from stage 2
    assert "VlpVlmoForPretraining initialises what it lacks: VL-FFN (blocks 2-3), VL-FFN ITC projections, ITM head." in printed
    before, after = metrics["before"], metrics["after"]
    chance = chance_mean_recall(after)
    assert before["itc_mean_recall"] < 1.5 * chance and after["itc_mean_recall"] > 2.3 * chance, (before, after)
    assert min(after["itc_t2i_r1"], after["itc_i2t_r1"]) > 4 * after["retrieval_chance_r1"], after
    assert {"itm_mean_recall", "itm_accuracy", "itm_majority_baseline", "mlm_accuracy"} <= set(after)
    terms = metrics["train"]
    assert terms["train_loss_itc"] > 0 and terms["train_loss_itm"] > 0 and terms["train_loss_mlm"] > 0
    saved = json.loads((output / "config.json").read_text())
    assert saved["architectures"] == ["VlpVlmoForPretraining"] and saved["vl_ffn_start_layer"] == 2


def test_vqa_from_the_pretrained_model(image_text_run, tmp_path):
    job = {"from_pretrained": str(image_text_run[0]), "dataset": "synthetic-shapes:n=1000", "eval_max_samples": 200}
    metrics, printed = _run("vqa", tmp_path, steps=100, job=job)
    before, after = metrics["before"], metrics["after"]
    assert "classifier" in printed  # a fresh answer classifier, said
    # the question type alone gives about 0.3 (2 to 6 answers per type) against 0.1 for the most frequent answer
    assert after["vqa_accuracy"] > 2 * after["vqa_majority_baseline"] and after["vqa_accuracy"] > 5 * after["vqa_chance"]
    assert before["vqa_accuracy"] < 0.1 < 0.22 < after["vqa_accuracy"], (before, after)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert [saved["id2label"][str(index)] for index in range(len(VQA_ANSWERS))] == list(VQA_ANSWERS)


def test_nlvr2_from_the_pretrained_model(image_text_run, tmp_path):
    source = str(image_text_run[0])
    # fine-tuning at a larger resolution than pre-training, as VLMo's 384/480 px after 224: positions interpolated
    model, processor = get_task("vlmo", "nlvr2").build(JobArguments(task="nlvr2", from_pretrained=source, image_size=48))
    assert torch.equal(model.second_image_modality_embedding, model.vlmo.modality_embeddings.weight[1])
    images = [Image.new("RGB", (64, 64), colour) for colour in ((200, 30, 30), (30, 30, 200))]
    inputs = processor(images=images, images_2=images[::-1], text=["both images contain a red shape"] * 2,
                       return_tensors="pt")
    assert inputs["pixel_values_2"].shape[-1] == 48 and model.config.image_size == 32
    assert model(**inputs, labels=torch.tensor([0, 0])).logits.shape == (2, 2)
    job = {"from_pretrained": source, "dataset": "synthetic-shapes:n=300", "eval_max_samples": 100}
    metrics, _ = _run("nlvr2", tmp_path, steps=20, job=job, per_device_train_batch_size=16)
    after = metrics["after"]
    assert {"accuracy", "chance", "majority_baseline", "accuracy_False", "accuracy_True"} <= set(after)
    assert after["chance"] == 0.5 and metrics["train"]["train_loss"] > 0
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["VlpVlmoForVisualReasoning"] and saved["id2label"] == {"0": "False", "1": "True"}


def test_retrieval_fine_tuning_from_the_pretrained_model(image_text_run, tmp_path):
    job = {"from_pretrained": str(image_text_run[0]), "dataset": "synthetic-shapes:n=300", "eval_max_samples": 20,
           "eval_rerank_k": 4}
    metrics, _ = _run("retrieval", tmp_path, steps=30, job=job, per_device_train_batch_size=16)
    before, after = metrics["before"], metrics["after"]
    chance = chance_mean_recall(after)
    assert after["itc_mean_recall"] > 2.3 * chance and after["itc_t2i_r1"] > 4 * after["retrieval_chance_r1"], after
    assert after["itc_mean_recall"] > before["itc_mean_recall"] - 0.05, (before, after)  # ITC fine-tuning keeps them
    assert metrics["train"]["train_loss_itc"] > 0 and "train_loss_itm" not in metrics["train"]  # ITC only (paper)
    assert _saved_class(tmp_path) == "VlpVlmoForImageTextRetrieval"
    # `hf-vlp evaluate` reads the task from the saved class
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["evaluate", str(tmp_path), "--dataset", "synthetic-shapes:n=8", "--eval-max-samples", "8"]) == 0
