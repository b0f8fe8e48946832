"""Model cards: every head's card parses as Hub metadata and says only what is true of the checkpoint - the license of
its source, its base model, Hub datasets, a pipeline tag only where that pipeline loads the head (checked with
``transformers.pipeline``), one model-index task per metric family without chance levels, and how to load it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image
from transformers import (
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
    pipeline,
)

import hf_vlp  # noqa: F401  (registers the Auto classes and pipelines)
from hf_vlp import (
    VlpAlbefForImageTextRetrieval,
    VlpAlbefForPretraining,
    VlpAlbefForQuestionAnswering,
    VlpAlbefForVisualEntailment,
    VlpAlbefForVisualReasoning,
    VlpAlbefImageProcessor,
    VlpAlbefModel,
    VlpAlbefProcessor,
    VlpBlipForConditionalGeneration,
    VlpBlipForImageTextRetrieval,
    VlpBlipForPretraining,
    VlpBlipForQuestionAnswering,
    VlpBlipForVisualReasoning,
    VlpBlipImageProcessor,
    VlpBlipModel,
    VlpBlipProcessor,
    VlpClipConfig,
    VlpClipForImageClassification,
    VlpClipImageProcessor,
    VlpClipModel,
    VlpClipProcessor,
    VlpClipTextModel,
    VlpClipTextModelWithProjection,
    VlpClipVisionModel,
    VlpClipVisionModelWithProjection,
    VlpCocaForConditionalGeneration,
    VlpCocaTextModel,
    VlpCocaVisionModel,
    VlpVlmoForImageTextRetrieval,
    VlpVlmoForMaskedLM,
    VlpVlmoForPretraining,
    VlpVlmoForQuestionAnswering,
    VlpVlmoForVisualReasoning,
    VlpVlmoImageProcessor,
    VlpVlmoModel,
    VlpVlmoProcessor,
)
from hf_vlp.integrations.model_card import (
    EvaluationData,
    is_hf_vlp_card,
    metric_family,
    pipeline_loads,
    render_model_card,
    retarget_card,
    template_text,
    verified_pipeline_tag,
)
from hf_vlp.integrations.pipelines import VQA_TASK
from hf_vlp.integrations.provenance import (
    SOURCE_RELEASES,
    ModelSource,
    folder_source,
    hub_source,
    release_source,
    resolve_license,
    training_sources,
)
from hf_vlp.models.blip.processing_blip import add_blip_special_tokens, blip_special_token_ids
from hf_vlp.models.clip.tokenization_clip import clip_tokenizer_from_bpe
from hf_vlp.training.tokenizers import synthetic_wordpiece_tokenizer
from tests.helpers.tiny_models import tiny_albef_config, tiny_blip_config, tiny_vlmo_config
from tests.models.coca.test_pipelines_coca import tiny_coca
from tests.models.test_model_contract import CASES

CLIP_BPE = Path(__file__).parents[1] / "fixtures" / "originals" / "clip_vit" / "bpe_simple_vocab_truncated.txt.gz"
# one metric of every family the tasks report, with chance levels and a per-class accuracy
ALL_METRICS = {
    "zero_shot_top1": 0.123456, "zero_shot_top5": 0.5, "zero_shot_chance_top1": 0.1,
    "retrieval_i2t_r1": 0.25, "retrieval_t2i_r10": 0.987654321, "retrieval_chance_r1": 0.01,
    "itm_i2t_r1": 0.3, "Bleu_4": 0.2345678, "CIDEr": 1.23456,
    "vqa_accuracy": 0.4, "vqa_chance": 0.125, "vqa_majority_baseline": 0.3,
    "accuracy": 0.75, "accuracy_True": 0.8, "chance": 0.5, "majority_baseline": 0.5,
}
FAMILY_TASKS = {"zero_shot": "zero-shot-image-classification", "retrieval": "image-text-retrieval",
                "captioning": "image-to-text", "vqa": "visual-question-answering"}
HEAD_CLASSES = sorted({case.model_class for case in CASES}, key=lambda cls: cls.__name__)


def image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8))


def tiny_clip(model_class: type = VlpClipModel, **settings) -> tuple[torch.nn.Module, VlpClipProcessor]:
    """A tiny CLIP head with a processor over the truncated BPE fixture (1000 tokens)."""
    tokenizer = clip_tokenizer_from_bpe(CLIP_BPE)
    config = VlpClipConfig(
        projection_dim=16,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id),
        **settings,
    )
    if not isinstance(config, model_class.config_class):  # a tower: its own part of the config
        config = next(part for part in (config.vision_config, config.text_config)
                      if isinstance(part, model_class.config_class))
    torch.manual_seed(0)
    return model_class(config).eval(), VlpClipProcessor(VlpClipImageProcessor(size=32, crop_size=32), tokenizer)


def tiny_blip(model_class: type = VlpBlipModel) -> tuple[torch.nn.Module, VlpBlipProcessor]:
    tokenizer = add_blip_special_tokens(synthetic_wordpiece_tokenizer())
    config = tiny_blip_config(text={"vocab_size": len(tokenizer), "max_position_embeddings": 40,
                                    **blip_special_token_ids(tokenizer)})
    torch.manual_seed(0)
    processor = VlpBlipProcessor(VlpBlipImageProcessor(size=16), tokenizer, max_length=12)
    return model_class(config).eval(), processor


def wordpiece_vocabulary(tokenizer) -> dict[str, int]:
    """A text config's vocabulary size and special-token ids, from its BERT tokenizer."""
    ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("pad", "cls", "sep", "mask")}
    return {"vocab_size": len(tokenizer), **ids}


def tiny_albef(model_class: type = VlpAlbefModel, **processor_options) -> tuple[torch.nn.Module, VlpAlbefProcessor]:
    tokenizer = synthetic_wordpiece_tokenizer()
    config = tiny_albef_config(vision={"hidden_size": 16}, text=wordpiece_vocabulary(tokenizer), embed_dim=8,
                               queue_size=8)
    torch.manual_seed(0)
    processor = VlpAlbefProcessor(VlpAlbefImageProcessor(size=16), tokenizer, max_length=12, **processor_options)
    return model_class(config).eval(), processor


def tiny_vlmo(model_class: type = VlpVlmoModel) -> tuple[torch.nn.Module, VlpVlmoProcessor]:
    """A tiny VLMo head with the original's 40 text tokens: the zero-shot pipeline's prompts are tokenised without
    truncation."""
    tokenizer = synthetic_wordpiece_tokenizer()
    config = tiny_vlmo_config(**wordpiece_vocabulary(tokenizer), max_text_length=40, relative_position_text_length=40)
    torch.manual_seed(0)
    processor = VlpVlmoProcessor(VlpVlmoImageProcessor(size=config.image_size), tokenizer,
                                 max_length=config.max_text_length)
    return model_class(config).eval(), processor


def save(model, processor, folder: Path) -> Path:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def significant_digits(value: float) -> int:
    return len(f"{value:.15g}".replace("-", "").replace(".", "").lstrip("0").rstrip("0")) if value else 0


# --------------------------------------------------------------------------------------------------- every head


@pytest.fixture(scope="module", params=HEAD_CLASSES, ids=lambda cls: cls.__name__)
def head(request):
    case = next(case for case in CASES if case.model_class is request.param)
    return request.param(case.config_factory())


def test_every_heads_card_is_valid_hub_metadata_with_honest_fields(head, tmp_path):
    source = release_source(head.model_card_template, "original.pth")
    card = render_model_card(
        head, repo_id="me/tiny", metrics=ALL_METRICS, dataset=EvaluationData("org/eval", "validation", max_rows=64),
        sources=[source], datasets=["org/train", "synthetic-shapes:n=64", str(tmp_path)],
    )
    assert "{{" not in card.content and "{%" not in card.content
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data.to_dict()
    assert ModelCard(card.content).data.to_dict() == data
    assert data["library_name"] == "transformers"
    source_release = {"clip": "openai/CLIP", "albef": "salesforce/ALBEF", "blip": "salesforce/BLIP",
                      "vilt": "dandelin/ViLT", "vlmo": "microsoft/unilm",
                      "coca": "mlfoundations/open_clip"}[head.model_card_template]
    assert data["license"] == SOURCE_RELEASES[source_release].license
    assert data["datasets"] == ["org/train"]  # a local path and synthetic-shapes are described in text only
    assert "base_model" not in data  # an original release has no Hub id
    assert {"hf_vlp", head.model_card_template} <= set(data["tags"])

    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "me/tiny"
    names = {result.metric_name for result in results}
    assert not {metric for metric in names if "chance" in metric or "majority_baseline" in metric}
    assert names == {metric for metric in ALL_METRICS if "chance" not in metric and "majority" not in metric}
    tasks = {result.task_type for result in results}
    assert len(data["model-index"][0]["results"]) == len(tasks) == 5  # one task per metric family
    expected_tasks = {*FAMILY_TASKS.values(), head.model_card_task or "image-classification"}
    assert tasks == expected_tasks
    for result in results:
        assert FAMILY_TASKS.get(metric_family(result.metric_name), result.task_type) == result.task_type
        assert significant_digits(result.metric_value) <= 4
        assert result.dataset_type == "org/eval" and result.dataset_split == "validation"

    tag = data.get("pipeline_tag")
    assert tag == verified_pipeline_tag(head) and (tag is None or pipeline_loads(head, tag))
    assert "visual-question-answering" != tag  # no transformers 5 pipeline has that task
    text = loaded.text
    assert 'from_pretrained("me/tiny")' in text and "import hf_vlp" in text and "trust_remote_code=True" in text
    assert type(head).__name__ in text
    assert "Measured on the `validation` split of [`org/eval`](https://huggingface.co/datasets/org/eval)" in text
    assert "| zero_shot_top1 | 0.1235 |" in text and "| CIDEr | 1.235 |" in text
    assert "For comparison, not results of this model: chance 0.5" in text
    assert f"`{SOURCE_RELEASES[source_release].license}`" in text
    assert is_hf_vlp_card(loaded)


# the pipeline tag each head's card claims: only where transformers.pipeline builds the head (or a class all of whose
# weights the head's folder holds)
EXPECTED_PIPELINE_TAGS = {
    "VlpClipModel": "zero-shot-image-classification",
    "VlpClipForImageClassification": "image-classification",
    "VlpBlipModel": "zero-shot-image-classification",
    "VlpBlipForPretraining": "zero-shot-image-classification",
    "VlpBlipForImageTextRetrieval": "zero-shot-image-classification",
    "VlpBlipForConditionalGeneration": "image-text-to-text",
    "VlpVlmoModel": "zero-shot-image-classification",
    "VlpCocaModel": "zero-shot-image-classification",
    "VlpCocaForConditionalGeneration": "image-text-to-text",
}


def test_pipeline_tags_are_claimed_only_where_the_pipeline_loads_the_head(head):
    assert verified_pipeline_tag(head) == EXPECTED_PIPELINE_TAGS.get(type(head).__name__)


# ---------------------------------------------------------------------------------- the claimed pipelines work


PIPELINE_RUNS = [
    ("zero-shot-image-classification", lambda: tiny_clip(), AutoModelForZeroShotImageClassification),
    ("image-classification", lambda: tiny_clip(VlpClipForImageClassification, num_labels=3),
     AutoModelForImageClassification),
    ("zero-shot-image-classification", lambda: tiny_blip(), AutoModelForZeroShotImageClassification),
    ("zero-shot-image-classification", lambda: tiny_blip(VlpBlipForPretraining),
     AutoModelForZeroShotImageClassification),
    ("zero-shot-image-classification", lambda: tiny_blip(VlpBlipForImageTextRetrieval),
     AutoModelForZeroShotImageClassification),
    ("image-text-to-text", lambda: tiny_blip(VlpBlipForConditionalGeneration), AutoModelForImageTextToText),
    ("zero-shot-image-classification", lambda: tiny_vlmo(), AutoModelForZeroShotImageClassification),
    ("zero-shot-image-classification", lambda: tiny_coca(), AutoModelForZeroShotImageClassification),
    ("image-text-to-text", lambda: tiny_coca(VlpCocaForConditionalGeneration), AutoModelForImageTextToText),
]


@pytest.mark.parametrize("task, build, auto_class", PIPELINE_RUNS,
                         ids=[f"{task}-{index}" for index, (task, _, _) in enumerate(PIPELINE_RUNS)])
def test_a_claimed_pipeline_runs_on_a_saved_folder_with_every_weight_loaded(task, build, auto_class, tmp_path):
    model, processor = build()
    folder = save(model, processor, tmp_path / "model")
    assert ModelCard.load(folder / "README.md").data.pipeline_tag == task
    _, info = auto_class.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"], info["missing_keys"]
    runner = pipeline(task, model=str(folder))
    if task == "zero-shot-image-classification":
        result = runner(image(), candidate_labels=["a red circle", "a blue square"])
        assert sorted(entry["label"] for entry in result) == ["a blue square", "a red circle"]
    elif task == "image-classification":
        assert {entry["label"] for entry in runner(image())} <= set(model.config.id2label.values())
    else:
        assert runner(images=image(), text="a picture of ", max_new_tokens=3)[0]["generated_text"]


def test_unclaimed_pipelines_really_fail_or_load_random_weights(tmp_path):
    """Why ALBEF and VQA cards claim no pipeline: ALBEF has no zero-shot class, transformers 5 has no VQA task, and a
    BLIP VQA folder would load as a captioner with a random decoder."""
    albef = save(*tiny_albef(), tmp_path / "albef")
    with pytest.raises(ValueError, match="Could not load model"):
        pipeline("zero-shot-image-classification", model=str(albef))
    with pytest.raises(KeyError, match="visual-question-answering"):
        pipeline("visual-question-answering", model=str(albef))
    vqa, processor = tiny_blip(VlpBlipForQuestionAnswering)
    folder = save(vqa, processor, tmp_path / "blip-vqa")
    _, info = AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"]  # the captioning decoder would be random
    assert not pipeline_loads(vqa, "image-text-to-text")
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag is None and "visual-question-answering" in card.data.tags
    assert f'pipeline("{VQA_TASK}", model=' in card.text and "Do not load this checkpoint with" in card.text


def test_the_vqa_cards_pipeline_answers_from_the_saved_folder(tmp_path):
    model, processor = tiny_albef(VlpAlbefForQuestionAnswering, answer_list=["yes", "no", "red"])
    folder = save(model, processor, tmp_path / "albef-vqa")
    card = ModelCard.load(folder / "README.md")
    assert f'pipeline("{VQA_TASK}", model="your-name/albef-vqa")' in card.text
    answers = pipeline(VQA_TASK, model=str(folder))(image(), "what colour is it?", top_k=3)
    assert sorted(entry["answer"] for entry in answers) == ["no", "red", "yes"]


# ---------------------------------------------------------------------------------------- the how-to code runs


HOW_TO_HEADS = {
    "clip": lambda: tiny_clip(), "clip-classifier": lambda: tiny_clip(VlpClipForImageClassification, num_labels=3),
    "clip-vision-projection": lambda: tiny_clip(VlpClipVisionModelWithProjection),
    "clip-text-projection": lambda: tiny_clip(VlpClipTextModelWithProjection),
    "clip-text": lambda: tiny_clip(VlpClipTextModel), "clip-vision": lambda: tiny_clip(VlpClipVisionModel),
    "albef": lambda: tiny_albef(), "albef-pretraining": lambda: tiny_albef(VlpAlbefForPretraining),
    "albef-retrieval": lambda: tiny_albef(VlpAlbefForImageTextRetrieval),
    "albef-vqa": lambda: tiny_albef(VlpAlbefForQuestionAnswering, answer_list=["yes", "no"]),
    "albef-nlvr2": lambda: tiny_albef(VlpAlbefForVisualReasoning),
    "albef-snli-ve": lambda: tiny_albef(VlpAlbefForVisualEntailment),
    "blip": lambda: tiny_blip(), "blip-captioning": lambda: tiny_blip(VlpBlipForConditionalGeneration),
    "blip-pretraining": lambda: tiny_blip(VlpBlipForPretraining),
    "blip-retrieval": lambda: tiny_blip(VlpBlipForImageTextRetrieval),
    "blip-nlvr2": lambda: tiny_blip(VlpBlipForVisualReasoning),
    "vlmo": lambda: tiny_vlmo(), "vlmo-pretraining": lambda: tiny_vlmo(VlpVlmoForPretraining),
    "vlmo-retrieval": lambda: tiny_vlmo(VlpVlmoForImageTextRetrieval),
    "vlmo-mlm": lambda: tiny_vlmo(VlpVlmoForMaskedLM), "vlmo-vqa": lambda: tiny_vlmo(VlpVlmoForQuestionAnswering),
    "vlmo-nlvr2": lambda: tiny_vlmo(VlpVlmoForVisualReasoning),
    "coca": lambda: tiny_coca(), "coca-captioning": lambda: tiny_coca(VlpCocaForConditionalGeneration),
    "coca-vision": lambda: tiny_coca(VlpCocaVisionModel), "coca-text": lambda: tiny_coca(VlpCocaTextModel),
}


@pytest.mark.parametrize("head_name", sorted(HOW_TO_HEADS))
def test_the_cards_how_to_use_code_runs_on_the_saved_folder(head_name, tmp_path):
    model, processor = HOW_TO_HEADS[head_name]()
    folder = save(model, processor, tmp_path / "model")
    card = render_model_card(model, repo_id=str(folder))
    text = card.text[card.text.index("## How to use"):]
    start = text.index("```python\n") + len("```python\n")
    code = text[start:text.index("\n```", start)]
    assert f'from_pretrained("{folder}")' in code
    namespace = {
        "image": image(0), "images": [image(1), image(2)], "texts": ["a red circle", "two blue squares"],
        "captions": ["a red circle", "two blue squares"], "statements": ["the left image has a circle"],
        "hypotheses": ["there is a circle", "there is a square"], "left_images": [image(3)],
        "right_images": [image(4)],
    }
    exec(compile(code, f"<how to use {type(model).__name__}>", "exec"), namespace)  # noqa: S102
    assert type(namespace["model"]) is type(model)


# --------------------------------------------------------------------------------------------------- licenses


def test_source_releases_carry_the_licenses_read_from_their_repositories():
    assert {key: release.license for key, release in SOURCE_RELEASES.items()} == {
        "openai/CLIP": "mit", "mlfoundations/open_clip": "mit", "salesforce/ALBEF": "bsd-3-clause",
        "salesforce/BLIP": "bsd-3-clause", "dandelin/ViLT": "apache-2.0", "microsoft/unilm": "mit",
    }
    assert release_source("coca", "open_clip_pytorch_model.bin").license == "mit"  # open_clip's CoCa weights
    assert release_source("albef", "ALBEF.pth").license == "bsd-3-clause"
    clip = release_source("clip", "ViT-B-32.pt")
    assert clip.license == "mit" and "openai/CLIP" in clip.license_origin and "open_clip" in clip.license_origin
    assert release_source("unknown", "x.pth").license is None


def test_the_license_is_the_authors_choice_else_the_sources_else_none():
    mit, bsd = ModelSource("a", "mit"), ModelSource("b", "bsd-3-clause")
    assert resolve_license("Apache-2.0", [mit])[0] == "apache-2.0"
    assert resolve_license(None, [mit, ModelSource("c", "mit")])[0] == "mit"
    license_id, text = resolve_license(None, [])
    assert license_id is None and "trained from scratch" in text and "--license" in text
    license_id, text = resolve_license(None, [mit, bsd])
    assert license_id is None and "a: mit" in text and "b: bsd-3-clause" in text
    assert resolve_license(None, [ModelSource("d")])[0] is None


def test_a_model_trained_from_scratch_states_no_license(tmp_path):
    model, _ = tiny_clip()
    card = render_model_card(model, repo_id="me/x", sources=training_sources(None))
    assert "license" not in card.data.to_dict() and "No license is stated" in card.text
    assert render_model_card(model, repo_id="me/x", license="apache-2.0").data.license == "apache-2.0"


def test_a_fine_tune_inherits_its_parents_license_and_hub_id(tmp_path, monkeypatch):
    parent = tmp_path / "converted"
    model, processor = tiny_clip()
    save(model, processor, parent)
    render_model_card(model, sources=[release_source("clip", "ViT-B-32.pt")]).save(parent / "README.md")
    source = folder_source(parent)
    assert source.license == "mit" and source.base_model is None
    card = render_model_card(model, repo_id="me/fine", sources=training_sources(str(parent)))
    assert card.data.license == "mit" and card.data.base_model is None

    # a Hub id: base_model, and the license of its card in the local cache (never the network)
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--clip" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (cache / "models--org--clip" / "refs").mkdir()
    (cache / "models--org--clip" / "refs" / "main").write_text("0" * 40)
    (snapshot / "README.md").write_text("---\nlicense: apache-2.0\n---\n# clip\n")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert hub_source("org/clip") == ModelSource(
        "[org/clip](https://huggingface.co/org/clip)", "apache-2.0", "the model card of org/clip", "org/clip"
    )
    assert folder_source(snapshot).base_model == "org/clip"  # a cache snapshot folder knows its Hub id
    card = render_model_card(model, repo_id="me/fine", sources=training_sources("org/clip"))
    assert card.data.base_model == "org/clip" and card.data.license == "apache-2.0"
    assert hub_source("org/uncached") == ModelSource("[org/uncached](https://huggingface.co/org/uncached)",
                                                     base_model="org/uncached")


def test_a_conversion_records_its_source_release_and_license(tmp_path):
    from conversion.convert_blip import convert_blip_checkpoint

    fixture = Path(__file__).parents[1] / "fixtures" / "originals" / "blip_vqa"
    output = tmp_path / "blip-vqa"
    convert_blip_checkpoint(fixture / "checkpoint.pth", output, fixture / "original_config.json",
                            fixture / "vocab.txt")
    marker = json.loads((output / "conversion.json").read_text())
    assert marker["source"]["license"] == "bsd-3-clause"
    assert marker["source"]["license_origin"] == "https://github.com/salesforce/BLIP/blob/main/LICENSE.txt"
    card = ModelCard.load(output / "README.md")
    assert card.data.license == "bsd-3-clause" and card.data.base_model is None
    assert "the original checkpoint `checkpoint.pth` of [Salesforce BLIP]" in card.text
    assert folder_source(output).license == "bsd-3-clause"  # what a fine-tune of it inherits


# --------------------------------------------------------------------------------------------------- evaluation


def test_evaluation_text_says_which_data_and_split():
    model, _ = tiny_clip()
    held_out = EvaluationData("/data/captions", "train", held_out=True, held_out_share=0.05, max_rows=1000)
    card = render_model_card(model, repo_id="me/x", metrics={"zero_shot_top1": 0.5}, dataset=held_out)
    assert ("Measured on a slice held out of the `train` split of the local dataset `/data/captions` (5% of its rows; "
            "the dataset has no evaluation split, and training left these rows out; at most 1000 rows)") in card.text
    result = card.data.eval_results[0]
    assert (result.dataset_type, result.dataset_name, result.dataset_split) == ("custom", "captions (held-out slice)",
                                                                              "train")
    synthetic = render_model_card(model, repo_id="me/x", metrics={"zero_shot_top1": 0.5},
                                  dataset=EvaluationData("synthetic-shapes:n=64", "train", trained_on=True))
    assert "the `train` split of `synthetic-shapes:n=64`, hf_vlp's generated shapes" in synthetic.text
    assert "rows the model was trained on" in synthetic.text
    assert synthetic.data.eval_results[0].dataset_type == "synthetic-shapes"
    assert "datasets" not in synthetic.data.to_dict()
    unevaluated = render_model_card(model, repo_id="me/x")
    assert "Not evaluated yet" in unevaluated.text and "model-index" not in unevaluated.data.to_dict()


def test_metrics_are_rounded_ordered_and_chance_is_kept_apart():
    model, _ = tiny_clip()
    metrics = {"retrieval_i2t_r10": 0.9, "retrieval_i2t_r5": 0.5, "retrieval_i2t_r1": 0.1234567,
               "retrieval_chance_r1": 0.015625, "nan_metric": math.nan}
    card = render_model_card(model, repo_id="me/x", metrics=metrics, dataset="org/data")
    text = card.text
    assert text.index("| retrieval_i2t_r1 | 0.1235 |") < text.index("| retrieval_i2t_r5 |") < text.index(
        "| retrieval_i2t_r10 |")
    assert "| retrieval_chance_r1" not in text and "not results of this model: retrieval_chance_r1 0.01562" in text
    values = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert values == {"retrieval_i2t_r1": 0.1235, "retrieval_i2t_r5": 0.5, "retrieval_i2t_r10": 0.9}


# --------------------------------------------------------------------------------------------------- save, push


def test_save_pretrained_writes_a_card_describing_the_model(tmp_path):
    model = VlpClipModel(VlpClipConfig(
        projection_dim=8,
        vision_config=dict(architecture="resnet", resnet_layers=[1, 1, 1, 1], resnet_width=8, resnet_heads=2,
                           image_size=32),
        text_config=dict(vocab_size=50, eos_token_id=49, bos_token_id=48, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2),
    ))
    model.save_pretrained(tmp_path / "tiny-clip")
    card = ModelCard.load(tmp_path / "tiny-clip" / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert {"hf_vlp", "clip"} <= set(card.data.tags)
    assert "ModifiedResNet (1-1-1-1 blocks, width 8, 32px" in card.text
    assert "Not evaluated yet" in card.text
    assert 'AutoModel.from_pretrained("your-name/tiny-clip")' in card.text and "# tiny-clip\n" in card.text
    assert "{{" not in card.content


def test_an_existing_card_is_kept(tmp_path):
    (tmp_path / "README.md").write_text("my own card")
    tiny_clip()[0].save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my own card"


def test_retargeting_names_the_repository_and_keeps_everything_else():
    model, _ = tiny_blip(VlpBlipForConditionalGeneration)
    card = render_model_card(model, model_name="run", metrics={"CIDEr": 0.5, "Bleu_4": 0.25}, dataset="org/coco",
                             license="bsd-3-clause")
    assert "# run\n" in card.text
    moved = retarget_card(card, "me/blip-captioner", remote_loader="AutoModelForImageTextToText",
                          tags=["demo"])
    assert "your-name/run" not in moved.content and "# blip-captioner\n" in moved.text
    assert 'AutoModelForImageTextToText.from_pretrained("me/blip-captioner", trust_remote_code=True)' in moved.text
    assert 'pipeline("image-text-to-text", model="me/blip-captioner")' in moved.text
    assert moved.data.eval_results == card.data.eval_results
    assert moved.data.model_name == "me/blip-captioner" and moved.data.license == "bsd-3-clause"
    assert "demo" in moved.data.tags and "| CIDEr | 0.5 |" in moved.text
    again = retarget_card(moved, "me/other")  # a pushed card can be pushed elsewhere
    assert "me/blip-captioner" not in again.content and "holds no code that loads the model" in again.text
    with pytest.raises(ValueError, match="Not a model card rendered by hf_vlp"):
        retarget_card(ModelCard("---\nlicense: mit\n---\n# mine\n"), "me/x")


def test_missing_template_is_a_clear_error():
    assert "{{ card_data }}" in template_text("clip")
    with pytest.raises(FileNotFoundError, match="nonexistent.md not found"):
        template_text("nonexistent")


@pytest.mark.parametrize("architecture", ["vilt", "vlmo"])
def test_only_a_vqa_models_card_names_an_answer_vocabulary(architecture: str) -> None:
    """The single-stream cards state the answer vocabulary of a VQA model, and say nothing about answers for the other
    heads (whose configs carry transformers' placeholder of 2 labels)."""
    from tests.helpers.tiny_models import tiny_vilt_config

    config_factory = tiny_vilt_config if architecture == "vilt" else tiny_vlmo_config
    heads = {"vilt": (hf_vlp.VlpViltForQuestionAnswering, hf_vlp.VlpViltForPretraining),
             "vlmo": (hf_vlp.VlpVlmoForQuestionAnswering, hf_vlp.VlpVlmoForPretraining)}[architecture]
    vqa, other = (" ".join(render_model_card(head(config_factory(num_labels=7))).text.split()) for head in heads)
    assert "fixed vocabulary of 7 answers" in vqa
    assert "vocabulary of" not in other and "answers from" not in other


def test_coca_cards_say_which_parts_the_checkpoint_holds() -> None:
    """The dual encoder's card says it does not caption, the captioner's how it decodes, a tower's what it returns."""
    heads = (hf_vlp.VlpCocaModel, VlpCocaForConditionalGeneration, VlpCocaVisionModel, VlpCocaTextModel)
    model, captioner, vision, text = (" ".join(render_model_card(tiny_coca(head)[0]).text.split()) for head in heads)
    assert "holds the dual encoder only" in model and "does not caption" in model and "generate(" not in model
    assert "holds all three parts" in captioner and "`text=\"\"` captions from start-of-text" in captioner
    assert "CoCa trains on 1.0 x the contrastive loss + 2.0 x the captioning cross-entropy" in captioner
    assert "# coca The image tower of a **CoCa** model" in vision and "`image_tokens`" in vision
    assert "# coca The unimodal text decoder of a **CoCa** model" in text and "n/a" not in vision + text
