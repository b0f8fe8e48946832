"""CapFilt: the bootstrapped dataset's rows, provenance and counts; seeded, prefix-stable sampling; a filter trained
to match colours keeps matching and drops mismatched web captions; settings reach ``generate``; errors; atomic output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_vlp.models.blip import (
    VlpBlipConfig,
    VlpBlipForConditionalGeneration,
    VlpBlipForPretraining,
    VlpBlipImageProcessor,
    VlpBlipModel,
    VlpBlipProcessor,
)
from hf_vlp.training.data import load_image_text_dataset, take_rows
from hf_vlp.training.tokenizers import synthetic_wordpiece_tokenizer
from hf_vlp.workflows import capfilt as capfilt_module
from hf_vlp.workflows.capfilt import capfilt, itm_match_probabilities, load_filter, main

IMAGE_SIZE = 16
SHAPES_SPEC = f"synthetic-shapes:n=24,size={IMAGE_SIZE}"
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine two OpenMP threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_processor() -> VlpBlipProcessor:
    image_processor = VlpBlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return VlpBlipProcessor(image_processor, synthetic_wordpiece_tokenizer())


def tiny_config(processor: VlpBlipProcessor) -> VlpBlipConfig:
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=IMAGE_SIZE, patch_size=8)
    text = dict(vocab_size=len(processor.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=40, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, **processor.special_token_ids())
    return VlpBlipConfig(embed_dim=8, vision_config=vision, text_config=text)


def save(model: torch.nn.Module, processor: VlpBlipProcessor, directory: Path) -> Path:
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Randomly initialised captioner and filter directories (each with its processor)."""
    root = tmp_path_factory.mktemp("models")
    processor = tiny_processor()
    torch.manual_seed(0)
    config = tiny_config(processor)
    return {
        "captioner": save(VlpBlipForConditionalGeneration(config), processor, root / "captioner"),
        "filter": save(VlpBlipModel(config), processor, root / "filter"),
    }


@pytest.fixture(scope="module")
def bootstrapped(models, tmp_path_factory) -> tuple[Path, dict]:
    """One run over 24 synthetic-shapes images keeping every caption (threshold 0)."""
    output = tmp_path_factory.mktemp("runs") / "everything"
    result = capfilt(models["captioner"], models["filter"], SHAPES_SPEC, output, batch_size=8, seed=3,
                     threshold=0.0, progress=False)
    return output, result.summary


def rows_of(output: Path) -> datasets.Dataset:
    return datasets.load_from_disk(str(output))["train"]


def columns(output: Path, *names: str) -> list[tuple]:
    """Rows of the saved dataset as tuples of the named (non-image) columns."""
    rows = rows_of(output)
    return list(zip(*(list(rows[name]) for name in names)))


def synthetic_texts(output: Path) -> dict[int, str]:
    return {index: text for index, text, source in columns(output, "image_index", "text", "caption_source")
            if source == "synthetic"}


# ---------------------------------------------------------------------------------------------- end to end


def test_every_row_has_its_provenance_and_the_counts_add_up(bootstrapped) -> None:
    output, summary = bootstrapped
    rows = rows_of(output)
    assert set(rows.column_names) == {"image", "text", "caption_source", "itm_score", "image_index"}
    assert json.loads((output / "summary.json").read_text()) == summary
    assert summary["images"] == 24 and summary["rows"] == len(rows) == 48
    for source in ("web", "synthetic"):
        counts = summary["counts"][source]
        indices = sorted(index for index, kind in columns(output, "image_index", "caption_source") if kind == source)
        assert counts["kept"] + counts["removed"] == 24 and counts["kept"] == len(indices) == 24
        assert indices == list(range(24))
    settings = summary["settings"]
    assert (settings["top_p"], settings["repetition_penalty"], settings["max_length"], settings["min_length"]) == (
        0.9, 1.1, 30, 10)
    assert settings["prompt"] == "a picture of " and settings["seed"] == 3 and settings["do_sample"] is True

    source = list(take_rows(load_image_text_dataset(SHAPES_SPEC)))
    for row in rows:
        original = source[row["image_index"]]
        assert np.array_equal(np.asarray(row["image"]), np.asarray(original["image"]))
        if row["caption_source"] == "web":
            assert row["text"] == original["text"]
        else:
            assert row["text"] and not row["text"].startswith("a picture of")


def test_scores_are_the_filters_itm_probabilities_of_each_rows_image_and_text(models, bootstrapped) -> None:
    output, _ = bootstrapped
    rows = rows_of(output)
    filter_model, processor = load_filter(models["filter"])
    with torch.no_grad():
        expected = itm_match_probabilities(filter_model.eval(), processor, list(rows["image"]),
                                           [[text] for text in rows["text"]])
    torch.testing.assert_close(torch.tensor(list(rows["itm_score"])), expected[:, 0], atol=1e-5, rtol=0)


def test_sampling_is_seeded_and_a_prefix_run_reproduces_its_batches(models, bootstrapped, tmp_path) -> None:
    output, _ = bootstrapped
    first_batch = {index: text for index, text in synthetic_texts(output).items() if index < 8}
    kwargs = dict(batch_size=8, threshold=0.0, max_samples=8, progress=False)
    capfilt(models["captioner"], models["filter"], SHAPES_SPEC, tmp_path / "same", seed=3, **kwargs)
    capfilt(models["captioner"], models["filter"], SHAPES_SPEC, tmp_path / "other", seed=4, **kwargs)
    assert synthetic_texts(tmp_path / "same") == first_batch
    assert synthetic_texts(tmp_path / "other") != first_batch
    assert columns(tmp_path / "same", "itm_score") == columns(output, "itm_score")[:16]


def test_output_is_a_training_dataset_spec(bootstrapped) -> None:
    output, _ = bootstrapped
    loaded = load_image_text_dataset(str(output))
    assert len(loaded) == 48 and loaded[0]["text"] == columns(output, "text")[0][0]


def test_a_filter_that_rejects_everything_keeps_nothing_and_says_so(models, tmp_path, capsys) -> None:
    result = capfilt(models["captioner"], models["filter"], SHAPES_SPEC, tmp_path / "none", threshold=1.0,
                     max_samples=4, progress=False)
    assert result.summary["rows"] == 0 and len(rows_of(tmp_path / "none")) == 0
    for source in ("web", "synthetic"):
        assert (result.summary["counts"][source]["kept"], result.summary["counts"][source]["removed"]) == (0, 4)
    captured = capsys.readouterr()
    assert "kept nothing" in captured.err and "Lower --threshold" in captured.err
    assert "total" in captured.out and "0.0" in captured.out


# ------------------------------------------------------------------------------------------- a real filter


def colour_image(colour: str) -> Image.Image:
    return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), COLOURS[colour])


def colour_caption(colour: str) -> str:
    return f"a {colour} square"


@pytest.fixture(scope="module")
def colour_filter(tmp_path_factory) -> Path:
    """A filter trained with ITM to match an image's colour with the colour word of the caption (a pair-dependent
    rule: the image or the text alone says nothing)."""
    processor = tiny_processor()
    torch.manual_seed(0)
    model = VlpBlipModel(tiny_config(processor))
    pairs = [(image, text) for image in COLOURS for text in COLOURS]
    pixel_values = processor(images=[colour_image(image) for image, _ in pairs], return_tensors="pt")["pixel_values"]
    encoded = processor(text=[colour_caption(text) for _, text in pairs], return_tensors="pt")
    labels = torch.tensor([int(image == text) for image, text in pairs])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(150):
        logits = model.get_itm_logits(encoded["input_ids"], pixel_values, encoded["attention_mask"])
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        matched = model.get_itm_logits(encoded["input_ids"], pixel_values, encoded["attention_mask"]).softmax(-1)[:, 1]
    assert torch.all((matched > 0.9) == labels.bool()) and torch.all((matched < 0.1) == ~labels.bool()), matched
    return save(model, processor, tmp_path_factory.mktemp("trained") / "filter")


def write_caption_table(folder: Path, rows: list[tuple[Image.Image | bytes, str]]) -> Path:
    """A captions-table dataset (``captions.csv`` + image files) of ``rows`` (an image or raw file bytes, caption)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "captions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        for index, (image, caption) in enumerate(rows):
            name = f"{index:03d}.png"
            if isinstance(image, bytes):
                (folder / name).write_bytes(image)
            else:
                image.save(folder / name)
            writer.writerow([name, caption])
    return folder


def test_a_trained_filter_keeps_matching_and_drops_mismatched_captions(models, colour_filter, tmp_path) -> None:
    image_colours = ["red", "blue"] * 4
    matching = [index % 4 < 2 for index in range(8)]
    captions = [colour_caption(colour if match else next(c for c in COLOURS if c != colour))
                for colour, match in zip(image_colours, matching)]
    dataset = write_caption_table(tmp_path / "web", [(colour_image(c), t) for c, t in zip(image_colours, captions)])
    result = capfilt(models["captioner"], colour_filter, str(dataset), tmp_path / "out", batch_size=3, progress=False)
    rows = columns(tmp_path / "out", "image_index", "text", "itm_score", "caption_source")
    web = {index: (text, score) for index, text, score, source in rows if source == "web"}
    assert sorted(web) == [index for index in range(8) if matching[index]]
    assert all(web[index][0] == captions[index] and web[index][1] > 0.9 for index in web)
    assert result.summary["counts"]["web"]["kept"] == 4 and result.summary["counts"]["web"]["removed"] == 4
    synthetic_scores = [score for _, _, score, source in rows if source == "synthetic"]
    counts = result.summary["counts"]["synthetic"]
    assert len(synthetic_scores) == counts["kept"] == 8 - counts["removed"] and all(s > 0.5 for s in synthetic_scores)


# ----------------------------------------------------------------------------------------- API and settings


def test_model_objects_and_generation_settings_reach_generate(models, tmp_path, monkeypatch) -> None:
    captioner = VlpBlipForConditionalGeneration.from_pretrained(models["captioner"])
    filter_model = VlpBlipForPretraining.from_pretrained(models["filter"])  # an ITM head behind the momentum path
    processor = VlpBlipProcessor.from_pretrained(models["captioner"])
    seen: list[dict] = []
    generate = captioner.generate

    def recording_generate(*args, **kwargs):
        seen.append(kwargs)
        return generate(*args, **kwargs)

    monkeypatch.setattr(captioner, "generate", recording_generate)
    captioner.train()
    filter_model.train()
    rng_state = torch.random.get_rng_state()
    result = capfilt(captioner, filter_model, SHAPES_SPEC, tmp_path / "out", captioner_processor=processor,
                     filter_processor=processor, max_samples=3, batch_size=2, top_p=0.5, top_k=7,
                     repetition_penalty=1.3, max_length=12, min_length=8, prompt="", threshold=0.0, progress=False)
    assert len(seen) == 2
    assert {key: seen[0][key] for key in ("do_sample", "top_p", "top_k", "repetition_penalty", "max_length",
                                          "min_length")} == dict(do_sample=True, top_p=0.5, top_k=7,
                                                                 repetition_penalty=1.3, max_length=12, min_length=8)
    assert result.summary["images"] == 3 and result.summary["settings"]["prompt"] == ""
    assert captioner.training and filter_model.training  # the caller's modes and random state are restored
    assert torch.equal(torch.random.get_rng_state(), rng_state)


def test_cli_writes_the_dataset_and_reports_errors_in_one_line(models, tmp_path, capsys) -> None:
    arguments = ["--captioner", str(models["captioner"]), "--filter", str(models["filter"]), "--dataset", SHAPES_SPEC,
                 "--output", str(tmp_path / "out"), "--max-samples", "2", "--threshold", "0", "--no-progress"]
    assert main(arguments) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["images"] == 2
    assert main(arguments) == 1
    assert "already exists" in capsys.readouterr().err
    assert main([*arguments, "--overwrite"]) == 0
    from hf_vlp.cli import main as hf_vlp_main

    assert hf_vlp_main(["capfilt", *arguments, "--overwrite"]) == 0  # the same job as `hf-vlp capfilt`


# ------------------------------------------------------------------------------------------------- errors


def test_models_of_the_wrong_kind_are_named_with_the_fix(models, tmp_path) -> None:
    output = tmp_path / "out"
    with pytest.raises(ValueError, match="VlpBlipModel checkpoint, which has no captioning decoder"):
        capfilt(models["filter"], models["filter"], SHAPES_SPEC, output)
    with pytest.raises(ValueError, match="VlpBlipForConditionalGeneration checkpoint, which has no ITM head"):
        capfilt(models["captioner"], models["captioner"], SHAPES_SPEC, output)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        capfilt(models["captioner"], tmp_path, SHAPES_SPEC, output)
    bare = tmp_path / "bare"
    VlpBlipModel.from_pretrained(models["filter"]).save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match=r"processor.save_pretrained"):
        capfilt(models["captioner"], bare, SHAPES_SPEC, output)
    with pytest.raises(ValueError, match="needs its processor"):
        capfilt(models["captioner"], VlpBlipModel.from_pretrained(models["filter"]), SHAPES_SPEC, output)
    assert not output.exists()


def test_bad_datasets_and_settings_are_named(models, tmp_path) -> None:
    output = tmp_path / "out"
    run = dict(captioner=models["captioner"], filter=models["filter"], output=output, progress=False)
    with pytest.raises(ValueError, match="'nope'.*not in dataset"):
        capfilt(dataset=SHAPES_SPEC, text_column="nope", **run)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "captions.csv").write_text("image,caption\n")
    with pytest.raises(ValueError, match="empty"):
        capfilt(dataset=str(empty), **run)
    with pytest.raises(ValueError, match="threshold must lie in"):
        capfilt(dataset=SHAPES_SPEC, threshold=1.5, **run)
    with pytest.raises(ValueError, match="min_length <= max_length"):
        capfilt(dataset=SHAPES_SPEC, min_length=20, max_length=10, **run)
    with pytest.raises(ValueError, match="no room for a caption"):
        capfilt(dataset=SHAPES_SPEC, max_length=4, min_length=0, **run)
    assert not output.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty"]


# ----------------------------------------------------------------------------------------------- atomicity


def test_a_failed_run_leaves_no_output_and_keeps_the_previous_one(models, tmp_path) -> None:
    good = [(colour_image("red"), colour_caption("red")) for _ in range(5)]
    dataset = write_caption_table(tmp_path / "web", [*good[:3], (b"not a png", "broken"), *good[3:]])
    run = dict(captioner=models["captioner"], filter=models["filter"], dataset=str(dataset), batch_size=2,
               threshold=0.0, progress=False)
    with pytest.raises(ValueError, match="sample 3"):
        capfilt(output=tmp_path / "out", **run)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["web"]  # no output, no temporary folder

    result = capfilt(output=tmp_path / "out", skip_bad_samples=True, **run)
    assert result.summary["bad_samples_skipped"] == 1 and result.summary["images"] == 5
    assert sorted({index for (index,) in columns(tmp_path / "out", "image_index")}) == [0, 1, 2, 4, 5]
    before = (tmp_path / "out" / "summary.json").read_text()
    with pytest.raises(ValueError, match="sample 3"):
        capfilt(output=tmp_path / "out", overwrite=True, **run)
    assert (tmp_path / "out" / "summary.json").read_text() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "web"]


def test_a_run_failing_after_some_batches_leaves_nothing_behind(models, tmp_path, monkeypatch) -> None:
    calls = []

    def failing_after_two_batches(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the filter crashed")
        return itm_match_probabilities(*args, **kwargs)

    monkeypatch.setattr(capfilt_module, "itm_match_probabilities", failing_after_two_batches)
    with pytest.raises(RuntimeError, match="crashed"):
        capfilt(models["captioner"], models["filter"], SHAPES_SPEC, tmp_path / "out", batch_size=2, threshold=0.0,
                progress=False)
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_an_earlier_capfilt_output(models, tmp_path) -> None:
    unrelated = tmp_path / "precious"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not written by CapFilt"):
        capfilt(models["captioner"], models["filter"], SHAPES_SPEC, unrelated, overwrite=True)
    assert (unrelated / "notes.txt").read_text() == "keep me"
