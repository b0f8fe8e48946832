"""Pushing to the Hub keeps everything (weights, configs, processor, training record, remote code, the card with its
metrics) and leaves out what only resumes a local run. Nothing reaches the network: ``huggingface_hub.HfApi``'s
repository and upload calls are replaced by a recorder that lists exactly what would be uploaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, RepoUrl
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import filter_repo_objects
from transformers import Trainer, TrainingArguments

import hf_vlp.integrations.hub as hub
from hf_vlp import VlpAlbefForImageTextRetrieval, VlpBlipForConditionalGeneration, VlpClipModel
from hf_vlp.integrations.hub import protect_model_card, push_folder, pushed_files
from hf_vlp.integrations.model_card import EvaluationData, render_model_card
from hf_vlp.integrations.provenance import release_source
from tests.integrations.test_model_card import save, tiny_albef, tiny_blip, tiny_clip

METRICS = {"zero_shot_top1": 0.6251234, "zero_shot_chance_top1": 0.25, "retrieval_i2t_r1": 0.5,
           "retrieval_chance_r1": 0.125}
PROCESSOR_FILES = ["processor_config.json", "tokenizer.json", "tokenizer_config.json"]
RECORD = ["loss_curve.png", "metrics.json", "metrics.png"]


class FakeHub:
    """Records create_repo / create_branch / upload_folder calls; an upload lists the files it would send (the
    ignore patterns applied) with the card and config texts."""

    def __init__(self) -> None:
        self.repos: list[dict] = []
        self.branches: list[tuple[str, str]] = []
        self.uploads: list[dict] = []

    def create_repo(self, api, repo_id, *, private=None, exist_ok=False, token=None, **kwargs):
        self.repos.append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, api, repo_id, *, branch, exist_ok=False, **kwargs):
        self.branches.append((repo_id, branch))

    def upload_folder(self, api, *, repo_id, folder_path, ignore_patterns=None, allow_patterns=None, **kwargs):
        root = Path(folder_path)
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        files = sorted(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        read = lambda name: (root / name).read_text(encoding="utf-8") if name in files else None  # noqa: E731
        self.uploads.append({
            "repo_id": repo_id, "files": files, "card": read("README.md"), "config": json.loads(read("config.json")),
            "weights": {name: hashlib.sha256((root / name).read_bytes()).hexdigest()
                        for name in files if name.endswith(".safetensors")},
            **kwargs,
        })
        return f"https://huggingface.co/{repo_id}/commit/{len(self.uploads)}"


@pytest.fixture
def fake_hub(monkeypatch) -> FakeHub:
    fake = FakeHub()
    for name in ("create_repo", "create_branch", "upload_folder"):
        recorder = getattr(fake, name)
        monkeypatch.setattr(HfApi, name, lambda api, *args, _record=recorder, **kwargs: _record(api, *args, **kwargs))
    return fake


@pytest.fixture
def exported(monkeypatch) -> list[list[str]]:
    """The files each push's remote-code export wrote (relative names), from the real exporter."""
    calls: list[list[str]] = []
    real = hub._export_remote_code

    def recording(folder: Path) -> list[str]:
        written = real(folder)
        calls.append(sorted(Path(path).relative_to(folder).as_posix() for path in written))
        return written

    monkeypatch.setattr(hub, "_export_remote_code", recording)
    return calls


def code_files(files: list[str]) -> list[str]:
    return [name for name in files if name.endswith(".py")]


def trained_folder(folder: Path) -> Path:
    """What ``hf-vlp train`` leaves: model, processor, a card with measured metrics, the training record, and what
    only resumes the run (checkpoints, training_args.bin)."""
    model, processor = tiny_clip()
    save(model, processor, folder)
    data = EvaluationData("synthetic-shapes:n=64", "validation", max_rows=16)
    render_model_card(model, model_name=folder.name, metrics=METRICS, dataset=data, license="apache-2.0",
                      provenance="Trained with `hf-vlp train clip` for 2 steps.").save(folder / "README.md")
    (folder / "metrics.json").write_text(json.dumps({"after": METRICS, "eval_dataset": data.spec}))
    for plot in ("loss_curve.png", "metrics.png"):
        (folder / plot).write_bytes(b"\x89PNG fake")
    (folder / "training_args.bin").write_bytes(b"pickled arguments with a token")
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "optimizer.pt").write_bytes(b"optimizer state")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x").write_text("x")
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------- push_folder


def test_a_trained_folder_is_pushed_whole_with_its_measured_card(tmp_path, fake_hub, exported):
    folder = trained_folder(tmp_path / "clip-run")
    before = snapshot(folder)
    local_card = ModelCard.load(folder / "README.md")

    assert push_folder(folder, "me/clip-run", private=True) == "https://huggingface.co/me/clip-run/commit/1"

    assert fake_hub.repos == [{"repo_id": "me/clip-run", "private": True, "exist_ok": True}]
    (upload,) = fake_hub.uploads
    assert exported and code_files(exported[0])  # the real exporter wrote the code
    assert upload["files"] == sorted(["README.md", "config.json", "model.safetensors", *PROCESSOR_FILES, *RECORD,
                                      *code_files(exported[0])])
    assert pushed_files(folder) == sorted(["README.md", "config.json", "model.safetensors", *PROCESSOR_FILES, *RECORD])
    assert upload["weights"]["model.safetensors"] == before["model.safetensors"]
    assert upload["config"]["auto_map"]["AutoModel"].endswith(".VlpClipModel")

    card = ModelCard(upload["card"])
    assert card.data.eval_results == local_card.data.eval_results  # the measured metrics, unchanged
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "me/clip-run"
    assert {r.metric_name: r.metric_value for r in results} == {"zero_shot_top1": 0.6251, "retrieval_i2t_r1": 0.5}
    assert "Not evaluated yet" not in card.text and "| zero_shot_top1 | 0.6251 |" in card.text
    assert card.data.license == "apache-2.0" and "Trained with `hf-vlp train clip` for 2 steps." in card.text
    assert 'AutoModel.from_pretrained("me/clip-run")' in card.text and "your-name" not in card.content
    assert 'AutoModel.from_pretrained("me/clip-run", trust_remote_code=True)' in card.text
    assert 'AutoProcessor.from_pretrained("me/clip-run", trust_remote_code=True)' in card.text
    assert snapshot(folder) == before  # the folder itself is never changed


def test_a_converted_folder_keeps_its_license_and_leaves_its_local_marker(tmp_path, fake_hub, exported):
    from conversion.convert_blip import convert_blip_checkpoint

    fixture = Path(__file__).parents[1] / "fixtures" / "originals" / "blip_caption"
    folder = tmp_path / "blip-caption"
    convert_blip_checkpoint(fixture / "checkpoint.pth", folder, fixture / "original_config.json",
                            fixture / "vocab.txt")
    assert (folder / "conversion.json").is_file()

    push_folder(folder, "me/blip-caption", revision="v1", commit_message="converted")

    (upload,) = fake_hub.uploads
    assert fake_hub.branches == [("me/blip-caption", "v1")]
    assert upload["revision"] == "v1" and upload["commit_message"] == "converted"
    assert upload["files"] == sorted(["README.md", "config.json", "generation_config.json", "model.safetensors",
                                      *PROCESSOR_FILES, *code_files(exported[0])])
    card = ModelCard(upload["card"])
    assert card.data.license == "bsd-3-clause" and card.data.pipeline_tag == "image-text-to-text"
    assert "Converted from `checkpoint.pth`" in card.text or "checkpoint.pth" in card.text
    assert 'AutoModelForImageTextToText.from_pretrained("me/blip-caption", trust_remote_code=True)' in card.text
    assert 'pipeline("image-text-to-text", model="me/blip-caption")' in card.text


def test_a_head_no_auto_class_maps_is_loaded_by_its_exported_class(tmp_path, fake_hub, exported):
    folder = save(*tiny_albef(VlpAlbefForImageTextRetrieval), tmp_path / "albef-retrieval")
    push_folder(folder, "me/albef-retrieval")
    card = ModelCard(fake_hub.uploads[0]["card"])
    assert card.data.pipeline_tag is None and card.data.license is None  # trained from scratch
    assert ('get_class_from_dynamic_module("hf_vlp_classes.VlpAlbefForImageTextRetrieval", "me/albef-retrieval")'
            in card.text)
    assert "hf_vlp_classes.py" in fake_hub.uploads[0]["files"]
    assert 'from hf_vlp import VlpAlbefForImageTextRetrieval' in card.text


def test_a_bare_name_gets_the_namespace_the_hub_gives_it(tmp_path, fake_hub, monkeypatch):
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kwargs: RepoUrl(
        f"https://huggingface.co/me/{repo_id}"))
    push_folder(save(*tiny_clip(), tmp_path / "clip"), "clip", remote_code=False)
    upload = fake_hub.uploads[0]
    assert upload["repo_id"] == "me/clip" and 'AutoModel.from_pretrained("me/clip")' in upload["card"]


def test_without_remote_code_the_card_says_so(tmp_path, fake_hub):
    folder = save(*tiny_clip(), tmp_path / "clip")
    push_folder(folder, "me/clip", remote_code=False, tags=["demo"])
    (upload,) = fake_hub.uploads
    assert not code_files(upload["files"]) and "auto_map" not in upload["config"]
    card = ModelCard(upload["card"])
    assert "holds no code that loads the model without hf_vlp" in card.text and "demo" in card.data.tags
    assert "trust_remote_code=True)" not in card.text


def test_a_card_hf_vlp_did_not_write_is_pushed_as_it_is(tmp_path, fake_hub):
    folder = save(*tiny_clip(), tmp_path / "clip")
    (folder / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# My own words\n")
    push_folder(folder, "me/clip", remote_code=False)
    assert fake_hub.uploads[0]["card"] == "---\nlicense: cc-by-4.0\n---\n# My own words\n"


def test_a_folder_without_a_card_gets_one_with_its_recorded_metrics(tmp_path, fake_hub):
    folder = trained_folder(tmp_path / "run")
    (folder / "README.md").unlink()
    push_folder(folder, "me/run", remote_code=False)
    card = ModelCard(fake_hub.uploads[0]["card"])
    assert {r.metric_name for r in card.data.eval_results} == {"zero_shot_top1", "retrieval_i2t_r1"}
    assert 'AutoModel.from_pretrained("me/run")' in card.text


def test_push_errors_name_the_problem(tmp_path, fake_hub):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        push_folder(tmp_path / "missing", "me/x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        push_folder(tmp_path / "empty", "me/x")
    folder = save(*tiny_clip(), tmp_path / "clip")
    with pytest.raises(ValueError, match="not a Hub repository id"):
        push_folder(folder, "me/bad name")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="holds no weights"):
        push_folder(folder, "me/x")
    assert not fake_hub.uploads


# --------------------------------------------------------------------------------------------------- push_to_hub


def test_model_push_to_hub_uploads_model_processor_code_and_card(tmp_path, fake_hub, exported):
    model, processor = tiny_blip(VlpBlipForConditionalGeneration)
    assert model.push_to_hub("me/captioner", processor=processor, tags=["demo"]) == (
        "https://huggingface.co/me/captioner/commit/1")
    (upload,) = fake_hub.uploads
    assert upload["files"] == sorted(["README.md", "config.json", "generation_config.json", "model.safetensors",
                                      *PROCESSOR_FILES, *code_files(exported[0])])
    card = ModelCard(upload["card"])
    assert "demo" in card.data.tags and card.data.pipeline_tag == "image-text-to-text"
    assert 'AutoModelForImageTextToText.from_pretrained("me/captioner")' in card.text
    assert "Not evaluated yet" in card.text and "No license is stated" in card.text


def test_a_model_loaded_from_a_trained_folder_keeps_its_card_and_record(tmp_path, fake_hub):
    folder = trained_folder(tmp_path / "clip-run")
    model = VlpClipModel.from_pretrained(folder)
    model.push_to_hub("me/clip-run", remote_code=False)
    (upload,) = fake_hub.uploads
    assert upload["files"] == sorted(["README.md", "config.json", "model.safetensors", *PROCESSOR_FILES, *RECORD])
    card = ModelCard(upload["card"])
    assert {r.metric_name for r in card.data.eval_results} == {"zero_shot_top1", "retrieval_i2t_r1"}
    assert card.data.license == "apache-2.0" and 'AutoModel.from_pretrained("me/clip-run")' in card.text

    own = ModelCard("---\nlicense: mit\n---\n# fresh card\n")
    model.push_to_hub("me/clip-run", model_card=own, remote_code=False)
    assert fake_hub.uploads[1]["card"] == own.content


def test_a_model_loaded_from_a_converted_folder_inherits_its_license(tmp_path, fake_hub):
    model, processor = tiny_clip()
    folder = save(model, processor, tmp_path / "converted")
    render_model_card(model, sources=[release_source("clip", "ViT-B-32.pt")]).save(folder / "README.md")
    VlpClipModel.from_pretrained(folder).push_to_hub("me/clip", remote_code=False)
    card = ModelCard(fake_hub.uploads[0]["card"])
    assert card.data.license == "mit" and 'AutoModel.from_pretrained("me/clip")' in card.text


# --------------------------------------------------------------------------------------------------- Trainer


def _trainer(output: Path, model) -> Trainer:
    args = TrainingArguments(output_dir=str(output), push_to_hub=True, hub_model_id="me/trained", report_to="none",
                             use_cpu=True, save_strategy="no")
    return Trainer(model=model, args=args)


def test_the_stock_trainer_card_would_replace_hf_vlps(tmp_path, fake_hub):
    """The transformers behaviour :func:`protect_model_card` exists for: Trainer.push_to_hub overwrites README.md."""
    folder = trained_folder(tmp_path / "out")
    model = VlpClipModel.from_pretrained(folder)
    _trainer(folder, model).push_to_hub()
    card = ModelCard(fake_hub.uploads[-1]["card"])
    assert "hf_vlp" not in (card.data.tags or []) and "zero_shot_top1" not in card.content


def test_a_protected_trainer_pushes_hf_vlps_card_with_its_metrics(tmp_path, fake_hub):
    folder = trained_folder(tmp_path / "out")
    model = VlpClipModel.from_pretrained(folder)
    trainer = _trainer(folder, model)
    protect_model_card(trainer)
    protect_model_card(trainer)  # idempotent
    assert fake_hub.repos[0]["repo_id"] == "me/trained"

    trainer.push_to_hub(tags=["finetuned"])

    upload = fake_hub.uploads[-1]
    card = ModelCard(upload["card"])
    assert {r.metric_name for r in card.data.eval_results} == {"zero_shot_top1", "retrieval_i2t_r1"}
    assert 'AutoModel.from_pretrained("me/trained")' in card.text and "finetuned" in card.data.tags
    assert "holds no code that loads the model without hf_vlp" in card.text  # the stock push uploads no code
    assert "checkpoint-2/optimizer.pt" not in upload["files"]  # the Trainer's own ignore patterns

    trainer.create_model_card(model_name="ignored")  # called directly: the card stays hf_vlp's
    assert "zero_shot_top1" in (folder / "README.md").read_text()


def test_a_protected_trainer_renders_hf_vlps_card_where_there_is_none(tmp_path, fake_hub):
    model, _ = tiny_clip()
    trainer = _trainer(tmp_path / "out", model)
    protect_model_card(trainer)
    trainer.create_model_card()
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert "hf_vlp" in card.data.tags and 'AutoModel.from_pretrained("me/trained")' in card.text


def test_hf_vlp_train_with_push_to_hub_uploads_the_card_with_its_metrics(tmp_path, fake_hub, exported):
    from hf_vlp.training.runner import train
    from tests.training.task_runs import recipe_job, recipe_training_args

    job = recipe_job("clip", "contrastive", dataset="synthetic-shapes:n=64", eval_max_samples=16, license="mit")
    args = recipe_training_args("clip", "contrastive", tmp_path / "run", max_steps=2, per_device_train_batch_size=8,
                                report_to="none", push_to_hub=True, hub_model_id="me/run")
    metrics = train("clip", job, args)

    assert [repo["repo_id"] for repo in fake_hub.repos][-1] == "me/run"
    first, last = fake_hub.uploads[0], fake_hub.uploads[-1]
    assert "hf_vlp" in ModelCard(first["card"]).data.tags  # the Trainer's own push (at save) kept hf_vlp's card
    assert last["commit_message"] == "hf-vlp train clip: model, card with metrics"
    assert last["files"] == sorted(["README.md", "config.json", "model.safetensors", *PROCESSOR_FILES, *RECORD,
                                    *code_files(exported[-1])])
    card = ModelCard(last["card"])
    measured = {name for name in metrics["after"] if "chance" not in name}
    assert {r.metric_name for r in card.data.eval_results} == measured
    assert card.data.license == "mit" and 'AutoModel.from_pretrained("me/run")' in card.text
    assert "Measured on the `validation` split of `synthetic-shapes:n=64`" in card.text
    assert torch.isfinite(torch.tensor(list(metrics["after"].values()))).all()


# ------------------------------------------------------------------------------------------------------ the CLI


def test_hf_vlp_push_uploads_the_folder_as_push_folder_does(tmp_path, fake_hub, exported, capsys):
    from hf_vlp.cli import main

    folder = trained_folder(tmp_path / "clip-run")
    assert main(["push", str(folder), "me/clip-run", "--private", "--revision", "v1"]) == 0
    assert fake_hub.repos == [{"repo_id": "me/clip-run", "private": True, "exist_ok": True}]
    assert fake_hub.branches == [("me/clip-run", "v1")]
    (upload,) = fake_hub.uploads
    assert upload["revision"] == "v1"
    assert upload["files"] == sorted(["README.md", "config.json", "model.safetensors", *PROCESSOR_FILES, *RECORD,
                                      *code_files(exported[0])])
    assert "pushed" in capsys.readouterr().out

    assert main(["push", str(folder), "me/clip-plain", "--no-remote-code"]) == 0
    assert not code_files(fake_hub.uploads[-1]["files"]) and "auto_map" not in fake_hub.uploads[-1]["config"]
    assert main(["push", str(tmp_path / "missing"), "me/x"]) == 1
    assert "hf-vlp: error:" in capsys.readouterr().err


def test_hf_vlp_export_writes_the_code_and_auto_map(tmp_path, capsys):
    from hf_vlp.cli import main

    folder = tmp_path / "clip"
    model, processor = tiny_clip()
    save(model, processor, folder)
    assert main(["export", str(folder)]) == 0
    assert "hf_vlp_classes.py" in capsys.readouterr().out
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "hf_vlp_classes.VlpClipModel"
    assert (folder / "hf_vlp_classes.py").is_file()
    assert main(["export", str(tmp_path / "not-a-model")]) == 1
    assert "hf-vlp: error:" in capsys.readouterr().err
