"""Pipelines: the zero-shot task defaults to the saved prompt template; the VQA task answers by ranking a candidate
list or by generating, as the model itself does."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY

import hf_vlp  # noqa: F401
from hf_vlp import VlpClipConfig, VlpClipImageProcessor, VlpClipModel, VlpClipProcessor
from hf_vlp.integrations.pipelines import (
    VQA_TASK,
    VlpVisualQuestionAnsweringPipeline,
    VlpZeroShotImageClassificationPipeline,
    register_pipelines,
    saved_prompt_template,
)
from hf_vlp.models.albef import (
    VlpAlbefForPretraining,
    VlpAlbefForQuestionAnswering,
    VlpAlbefImageProcessor,
    VlpAlbefModel,
    VlpAlbefProcessor,
)
from hf_vlp.models.blip import VlpBlipForQuestionAnswering, VlpBlipImageProcessor, VlpBlipProcessor
from hf_vlp.models.blip.processing_blip import add_blip_special_tokens, blip_special_token_ids
from hf_vlp.models.clip.tokenization_clip import clip_tokenizer_from_bpe
from hf_vlp.training.tokenizers import synthetic_wordpiece_tokenizer
from tests.helpers.tiny_models import tiny_albef_config, tiny_blip_config

FIXTURE = Path(__file__).parents[1] / "fixtures" / "originals" / "clip_vit"
LABELS = ["cat", "dog", "red bicycle"]


def _save_tiny_clip(directory: Path, prompt_template: str = "a drawing of a {}.") -> tuple[VlpClipModel, VlpClipProcessor]:
    torch.manual_seed(0)
    tokenizer = clip_tokenizer_from_bpe(FIXTURE / "bpe_simple_vocab_truncated.txt.gz")
    config = VlpClipConfig(
        projection_dim=16,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        ),
    )
    model = VlpClipModel(config).eval()
    processor = VlpClipProcessor(VlpClipImageProcessor(size=32, crop_size=32), tokenizer, prompt_template=prompt_template)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor


def _image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8))


def _expected_scores(model, processor, image, prompts):
    inputs = processor(images=image, text=prompts, padding="longest", return_tensors="pt")
    with torch.no_grad():
        probs = model(**inputs).logits_per_image.softmax(dim=-1)[0]
    return dict(zip(LABELS, probs.tolist()))


def test_zero_shot_pipeline_uses_the_saved_prompt_template_and_one_text_batch(tmp_path):
    model, processor = _save_tiny_clip(tmp_path)
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path))
    assert isinstance(classifier, VlpZeroShotImageClassificationPipeline)
    text_batches = []
    classifier.model.text_model.register_forward_hook(lambda module, args, output: text_batches.append(args[0].shape[0]))
    image = _image()
    result = classifier(image, candidate_labels=LABELS)
    assert text_batches == [len(LABELS)]  # all labels encoded in one batch
    got = {entry["label"]: entry["score"] for entry in result}
    expected = _expected_scores(model, processor, image, processor.format_labels(LABELS))
    for label in LABELS:
        assert got[label] == pytest.approx(expected[label], abs=1e-5)
    wrong_template = _expected_scores(model, processor, image, [f"This is a photo of {x}." for x in LABELS])
    assert any(abs(got[label] - wrong_template[label]) > 1e-4 for label in LABELS)


def test_explicit_hypothesis_template_still_wins(tmp_path):
    model, processor = _save_tiny_clip(tmp_path)
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path))
    image = _image(1)
    result = classifier(image, candidate_labels=LABELS, hypothesis_template="an image of {}")
    got = {entry["label"]: entry["score"] for entry in result}
    expected = _expected_scores(model, processor, image, [f"an image of {x}" for x in LABELS])
    for label in LABELS:
        assert got[label] == pytest.approx(expected[label], abs=1e-5)


def test_other_models_keep_the_stock_default():
    from transformers import CLIPConfig, CLIPModel

    clip = CLIPModel(CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8),
    ))
    assert saved_prompt_template(clip) is None


def test_loading_by_repo_id_from_an_offline_hub_cache(tmp_path):
    saved = tmp_path / "saved"
    _save_tiny_clip(saved)
    hub = tmp_path / "hf_home" / "hub" / "models--hf-vlp-test--tiny-clip"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (hub / "refs").mkdir(parents=True)
    (hub / "refs" / "main").write_text(commit)
    snapshot = hub / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in saved.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        from PIL import Image
        import hf_vlp
        from transformers import AutoModel, AutoProcessor, pipeline
        model = AutoModel.from_pretrained("hf-vlp-test/tiny-clip")
        processor = AutoProcessor.from_pretrained("hf-vlp-test/tiny-clip")
        classifier = pipeline("zero-shot-image-classification", model="hf-vlp-test/tiny-clip")
        image = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
        result = classifier(image, candidate_labels=["cat", "dog"])
        print(json.dumps({"model": type(model).__name__, "processor": type(processor).__name__,
                          "template": classifier._preprocess_params.get("hypothesis_template"),
                          "labels": sorted(r["label"] for r in result)}))
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report == {
        "model": "VlpClipModel",
        "processor": "VlpClipProcessor",
        "template": "a drawing of a {}.",
        "labels": ["cat", "dog"],
    }


# ------------------------------------------------------------------------------------- visual question answering

ANSWERS = ["yes", "no", "red", "blue", "2", "3", "left", "circle"]
QUESTIONS = ["what colour is the square?", "how many shapes are there?", "is it left?"]
VQA_SIZE = 16


def _albef_vqa(answer_list=ANSWERS) -> tuple[VlpAlbefForQuestionAnswering, VlpAlbefProcessor]:
    tokenizer = synthetic_wordpiece_tokenizer()
    ids = {"pad_token_id": tokenizer.pad_token_id, "cls_token_id": tokenizer.cls_token_id,
           "sep_token_id": tokenizer.sep_token_id, "mask_token_id": tokenizer.mask_token_id}
    config = tiny_albef_config(vision={"hidden_size": 16}, text={"vocab_size": len(tokenizer), **ids})
    torch.manual_seed(0)
    processor = VlpAlbefProcessor(VlpAlbefImageProcessor(size=VQA_SIZE), tokenizer, max_length=12,
                                  answer_list=answer_list)
    return VlpAlbefForQuestionAnswering(config).eval(), processor


def _blip_vqa() -> tuple[VlpBlipForQuestionAnswering, VlpBlipProcessor]:
    tokenizer = add_blip_special_tokens(synthetic_wordpiece_tokenizer())
    config = tiny_blip_config(text={"vocab_size": len(tokenizer), **blip_special_token_ids(tokenizer)})
    torch.manual_seed(0)
    processor = VlpBlipProcessor(VlpBlipImageProcessor(size=VQA_SIZE), tokenizer, max_length=12, answer_list=ANSWERS)
    return VlpBlipForQuestionAnswering(config).eval(), processor


VQA_MODELS = {"albef": _albef_vqa, "blip": _blip_vqa}


@pytest.fixture(scope="module", params=sorted(VQA_MODELS))
def vqa(request):
    return VQA_MODELS[request.param]()


def _same_answers(result, expected, abs_tol=1e-6) -> None:
    assert [entry["answer"] for entry in result] == [entry["answer"] for entry in expected]
    assert [entry["score"] for entry in result] == pytest.approx([entry["score"] for entry in expected], abs=abs_tol)


def _model_ranking(model, processor, image, question, k):
    inputs = processor(images=[image], text=[question], text_kind="question", return_tensors="pt")
    answers = processor.encode_answers(ANSWERS, return_tensors="pt")
    ranking = model.rank_answers(inputs["pixel_values"], inputs["input_ids"], answers["input_ids"],
                                 attention_mask=inputs["attention_mask"],
                                 answer_attention_mask=answers["attention_mask"], k=k)
    return [ANSWERS[index] for index in ranking.answer_indices[0].tolist()], ranking.scores[0]


def test_vqa_task_is_registered_once_under_hf_vlps_own_name(caplog):
    assert VQA_TASK == "vlp-visual-question-answering"
    assert PIPELINE_REGISTRY.supported_tasks[VQA_TASK]["impl"] is VlpVisualQuestionAnsweringPipeline
    with caplog.at_level("WARNING"):
        register_pipelines()  # again: no "already registered" warning
    assert "already registered" not in caplog.text


def test_ranking_answers_are_the_models_own_ranking_with_sorted_probabilities(vqa):
    model, processor = vqa
    answerer = pipeline(VQA_TASK, model=model, processor=processor)
    image = _image(2)
    result = answerer(image, QUESTIONS[0], top_k=len(ANSWERS))
    expected_order, model_scores = _model_ranking(model, processor, image, QUESTIONS[0], k=len(ANSWERS))
    assert [entry["answer"] for entry in result] == expected_order
    scores = [entry["score"] for entry in result]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= score <= 1.0 for score in scores)
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)  # a softmax over every candidate kept
    if isinstance(model, VlpAlbefForQuestionAnswering):  # ALBEF's ranking already is that softmax
        assert scores == pytest.approx(model_scores.tolist(), abs=1e-6)
    else:  # BLIP's are summed log-likelihoods
        assert scores == pytest.approx(model_scores.softmax(-1).tolist(), abs=1e-6)
    _same_answers(answerer(image, QUESTIONS[0], top_k=2), result[:2])
    assert len(answerer(image, QUESTIONS[0])) == 1


def test_a_batch_of_questions_gives_one_answer_list_each(vqa):
    model, processor = vqa
    answerer = pipeline(VQA_TASK, model=model, processor=processor, top_k=2)
    image, images = _image(3), [_image(4), _image(5), _image(6)]
    one_by_one = [answerer(image, question) for question in QUESTIONS]
    assert answerer(image, QUESTIONS) == one_by_one  # one image, several questions
    pairs = answerer(images, QUESTIONS, batch_size=2)  # padded question batches
    assert len(pairs) == len(QUESTIONS)
    for result, item, question in zip(pairs, images, QUESTIONS):
        _same_answers(result, answerer({"image": item, "question": question}), abs_tol=1e-5)


def test_generated_answers_are_the_models_generation_scored_by_their_probability(vqa):
    model, processor = vqa
    answerer = pipeline(VQA_TASK, model=model, processor=processor)
    image = _image(7)
    inputs = processor(images=[image], text=[QUESTIONS[1]], text_kind="question", return_tensors="pt")
    result = answerer(image, QUESTIONS[1], mode="generate")
    assert [entry["answer"] for entry in result] == model.generate_answers(processor, **inputs)
    assert 0.0 < result[0]["score"] <= 1.0
    several = answerer(image, QUESTIONS[1], mode="generate", top_k=3)
    scores = [entry["score"] for entry in several]
    assert 1 <= len(several) <= 3 and scores == sorted(scores, reverse=True)
    assert len({entry["answer"] for entry in several}) == len(several)
    # greedy decoding: the score is the product of the token probabilities generate itself saw
    greedy = answerer(image, QUESTIONS[1], mode="generate", generate_kwargs={"num_beams": 1})
    output = model.generate(**inputs, num_beams=1, return_dict_in_generate=True, output_scores=True)
    steps = model.compute_transition_scores(output.sequences, output.scores, normalize_logits=True)[0]
    ended = (output.sequences[0, 1:] == processor.tokenizer.sep_token_id).long().cumsum(0)
    counted = (ended - (output.sequences[0, 1:] == processor.tokenizer.sep_token_id).long()) == 0
    assert np.log(greedy[0]["score"]) == pytest.approx(steps[counted].sum().item(), abs=1e-3)


def test_loading_the_pipeline_from_a_saved_folder(tmp_path):
    model, processor = _albef_vqa()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    answerer = pipeline(VQA_TASK, model=str(tmp_path))
    assert isinstance(answerer.model, VlpAlbefForQuestionAnswering)
    assert isinstance(answerer.processor, VlpAlbefProcessor) and answerer.processor.answer_list == ANSWERS
    image = _image(8)
    in_memory = pipeline(VQA_TASK, model=model, processor=processor)
    _same_answers(answerer(image, QUESTIONS[2], top_k=3), in_memory(image, QUESTIONS[2], top_k=3))
    image_path = tmp_path / "image.png"
    image.save(image_path)
    assert answerer(str(image_path), QUESTIONS[2])[0]["answer"] == in_memory(image, QUESTIONS[2])[0]["answer"]
    without_processor = pipeline(VQA_TASK, model=answerer.model)  # found through the model's name_or_path
    assert without_processor.processor.answer_list == ANSWERS


def test_an_explicit_answer_list_overrides_the_saved_one():
    model, processor = _albef_vqa()
    answerer = pipeline(VQA_TASK, model=model, processor=processor)
    result = answerer(_image(9), QUESTIONS[0], answer_list=["red", "blue"], top_k=5)
    assert sorted(entry["answer"] for entry in result) == ["blue", "red"]


def test_errors_name_the_problem_and_the_fix(tmp_path):
    model, processor = _albef_vqa(answer_list=None)
    answerer = pipeline(VQA_TASK, model=model, processor=processor)
    with pytest.raises(ValueError, match=r"answer_list=\[\.\.\.\].*processor\.answer_list.*mode='generate'"):
        answerer(_image(), QUESTIONS[0], mode="rank")
    assert answerer(_image(), QUESTIONS[0])[0]["answer"]  # without a list, the model generates
    with pytest.raises(ValueError, match="pass processor="):
        pipeline(VQA_TASK, model=model)
    base = VlpAlbefModel(model.config)
    with pytest.raises(TypeError, match="VlpAlbefModel has no VQA head.*VlpAlbefForQuestionAnswering"):
        pipeline(VQA_TASK, model=base, processor=processor)
    with pytest.raises(ValueError, match="mode must be one of"):
        answerer(_image(), QUESTIONS[0], mode="vote")
    with pytest.raises(TypeError, match="cannot answer with mode='classify'; it supports"):
        answerer(_image(), QUESTIONS[0], mode="classify")
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        answerer(_image(), QUESTIONS[0], top_k=0)
    with pytest.raises(ValueError, match="one image per question"):
        answerer([_image(), _image(1)], QUESTIONS)
    # a pre-training save loads into the VQA class with an untrained answer decoder: refused
    pretraining = tmp_path / "pretraining"
    VlpAlbefForPretraining(model.config).save_pretrained(pretraining)
    processor.save_pretrained(pretraining)
    with pytest.raises(ValueError, match="saved from a VlpAlbefForPretraining.*from_pretraining"):
        pipeline(VQA_TASK, model=str(pretraining))
