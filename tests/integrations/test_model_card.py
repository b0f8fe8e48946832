from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import hf_vlp.models.modeling_utils as modeling_utils
from hf_vlp import VlpClipConfig, VlpClipModel
from hf_vlp.integrations.model_card import render_model_card, template_text


def _tiny_model() -> VlpClipModel:
    return VlpClipModel(VlpClipConfig(
        projection_dim=8,
        vision_config=dict(architecture="resnet", resnet_layers=[1, 1, 1, 1], resnet_width=8, resnet_heads=2, image_size=32),
        text_config=dict(vocab_size=50, eos_token_id=49, bos_token_id=48, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2),
    ))


def test_save_pretrained_writes_a_card_describing_the_model(tmp_path):
    _tiny_model().save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert {"hf_vlp", "clip"} <= set(card.data.tags)
    assert "ModifiedResNet (1-1-1-1 blocks, width 8, 32px" in card.text
    assert "Not evaluated yet" in card.text
    assert "{{" not in card.content


def test_an_existing_card_is_kept(tmp_path):
    (tmp_path / "README.md").write_text("my own card")
    _tiny_model().save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my own card"


def test_metrics_become_a_table_and_model_index():
    card = render_model_card(_tiny_model(), repo_id="me/tiny", metrics={"zero_shot_top1": 0.5}, dataset="synthetic-shapes")
    assert "| zero_shot_top1 | 0.5000 |" in card.text
    assert card.data.eval_results[0].metric_value == 0.5
    assert 'AutoModel.from_pretrained("me/tiny")' in card.text


def test_push_to_hub_uploads_weights_and_the_rendered_card(monkeypatch):
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploaded["repo_id"] = repo_id
            uploaded["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            uploaded["card"] = (Path(folder_path) / "README.md").read_text()
            return "commit-url"

    monkeypatch.setattr(modeling_utils, "HfApi", FakeApi)
    assert _tiny_model().push_to_hub("me/tiny-clip", tags=["demo"]) == "commit-url"
    assert uploaded["repo_id"] == "me/tiny-clip"
    assert uploaded["files"] == ["README.md", "config.json", "model.safetensors"]
    assert 'AutoModel.from_pretrained("me/tiny-clip")' in uploaded["card"] and "- demo" in uploaded["card"]


def test_missing_template_is_a_clear_error():
    assert "{{ card_data }}" in template_text("clip")
    with pytest.raises(FileNotFoundError, match="nonexistent.md not found"):
        template_text("nonexistent")

