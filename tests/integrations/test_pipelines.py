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

import hf_vlp  # noqa: F401
from hf_vlp import VlpClipConfig, VlpClipImageProcessor, VlpClipModel, VlpClipProcessor
from hf_vlp.models.clip.tokenization_clip import clip_tokenizer_from_bpe
from hf_vlp.integrations.pipelines import VlpZeroShotImageClassificationPipeline, saved_prompt_template

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
