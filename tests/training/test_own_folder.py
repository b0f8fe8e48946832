"""Your own folder just works: a dataset without an evaluation split gets a deterministic held-out slice (reported
with its size, never trained on), and a caption column under any common name is found by loader and collator."""

from __future__ import annotations

import io
import json
import tarfile

import datasets
import pytest
from PIL import Image, ImageDraw

from hf_vlp.cli import main
from hf_vlp.training.collators import ContrastiveCollator, ImageTextCollator
from hf_vlp.training.data import HeldOutSplit, dataset_split_names, load_image_text_dataset
from hf_vlp.training.job import JobArguments
from hf_vlp.training.tasks import get_task
from hf_vlp.training.tasks.base import TrainingTask

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (220, 220, 30)}
TINY = ["--max-steps", "2", "--per-device-train-batch-size", "4", "--logging-steps", "1", "--use-cpu",
        "--disable-tqdm", "true", "--save-strategy", "no"]


def _picture(index: int) -> tuple[Image.Image, str]:
    colour = list(COLOURS)[index % 4]
    shape = ("circle", "square")[(index // 4) % 2]
    image = Image.new("RGB", (32, 32), "white")
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)((4 + index % 5, 6, 26, 26), fill=COLOURS[colour])
    return image, f"a {colour} {shape}"


def _own_folder(folder, count=20, column="caption"):
    """An imagefolder of tiny PNGs with ``metadata.jsonl`` (file_name + ``column``), train split only."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.jsonl", "w") as handle:
        for index in range(count):
            image, caption = _picture(index)
            image.save(folder / f"img{index:02d}.png")
            handle.write(json.dumps({"file_name": f"img{index:02d}.png", column: caption}) + "\n")
    return folder


def _names(dataset) -> list[str]:
    return [str(source).rsplit("/", 1)[-1] for source in dataset[:]["source"]]


def test_train_only_folder_trains_through_the_cli_on_a_disjoint_held_out_slice(tmp_path, capsys, monkeypatch):
    folder = _own_folder(tmp_path / "my_folder")
    loaded, collated = {}, []
    original_load, original_call = TrainingTask.load_dataset, ContrastiveCollator.__call__

    def spy_load(self, spec, split, job, *args, **kwargs):
        loaded.setdefault(split, original_load(self, spec, split, job, *args, **kwargs))
        return loaded[split]

    def spy_call(self, rows):
        collated.extend(str(row["source"]).rsplit("/", 1)[-1] for row in rows)
        return original_call(self, rows)

    monkeypatch.setattr(TrainingTask, "load_dataset", spy_load)
    monkeypatch.setattr(ContrastiveCollator, "__call__", spy_call)
    output = tmp_path / "out"
    code = main(["train", "clip", "--dataset", str(folder), "--output-dir", str(output), *TINY])
    assert code == 0
    printed = capsys.readouterr().out
    assert "has no 'validation' split: holding out 2 of its 20 'train' rows" in printed
    assert "training uses the other 18" in printed
    assert "before" in printed and "after" in printed and "retrieval_mean_recall" in printed

    train_names, eval_names = _names(loaded["train"]), _names(loaded["validation"])
    assert len(train_names) == 18 and len(eval_names) == 2
    assert not set(train_names) & set(eval_names)
    assert sorted(train_names + eval_names) == sorted(f"img{index:02d}.png" for index in range(20))
    assert collated and not set(collated) & set(eval_names)  # the batches trained on never hold a held-out row
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics["before"]) == set(metrics["after"]) and metrics["after"]["retrieval_chance_r1"] == 0.5

    # a later `hf-vlp evaluate` on the same folder evaluates the same held-out rows
    monkeypatch.setattr(TrainingTask, "load_dataset", original_load)
    assert main(["evaluate", str(output), "--dataset", str(folder)]) == 0
    assert "retrieval_mean_recall" in capsys.readouterr().out


def test_the_held_out_slice_is_deterministic_nested_and_changeable(tmp_path, capsys):
    folder = str(_own_folder(tmp_path / "data", count=30))
    task = get_task("clip")
    job = JobArguments(dataset=folder)
    first = _names(task.load_dataset(folder, "validation", job))
    assert first == _names(task.load_dataset(folder, "validation", job)) and len(first) == 3
    assert "holding out 3 of its 30 'train' rows" in capsys.readouterr().out

    few = JobArguments(dataset=folder, eval_max_samples=1)  # --eval-max-samples caps the slice
    assert len(_names(task.load_dataset(folder, "validation", few))) == 1
    assert len(task.load_dataset(folder, "train", few)) == 29
    more = JobArguments(dataset=folder)
    more.eval_split_ratio = 0.5  # --eval-split-ratio (read with getattr, so it works before job.py declares it)
    half = _names(task.load_dataset(folder, "validation", more))
    assert len(half) == 15 and set(first) <= set(half)  # a larger slice only adds rows
    assert not set(half) & set(_names(task.load_dataset(folder, "train", more)))

    # no slice where it is not needed: --skip-eval, another --eval-dataset, an --eval-split equal to the train split
    for other in (JobArguments(dataset=folder, skip_eval=True), JobArguments(dataset=folder, eval_dataset="x/y"),
                  JobArguments(dataset=folder, eval_split="train")):
        assert len(task.load_dataset(folder, "train", other)) == 30
    with pytest.raises(ValueError, match="must lie strictly between 0 and 1"):
        HeldOutSplit(ratio=1.0)


def test_a_folder_with_a_validation_split_is_used_as_it_is(tmp_path):
    for split, count in (("train", 6), ("validation", 3)):
        _own_folder(tmp_path / "data" / split, count)
    folder = str(tmp_path / "data")
    assert dataset_split_names(folder) == ["train", "validation"]
    task, job = get_task("clip"), JobArguments(dataset=folder)
    assert len(task.load_dataset(folder, "train", job)) == 6 and len(task.load_dataset(folder, "validation", job)) == 3


def test_rows_sharing_an_image_stay_on_one_side(tmp_path):
    _own_folder(tmp_path / "images", count=5)
    with open(tmp_path / "captions.csv", "w") as handle:
        handle.write("image,caption\n")
        for index in range(20):  # four captions of each of the five images
            handle.write(f"images/img{index % 5:02d}.png,caption {index}\n")
    table = str(tmp_path / "captions.csv")
    assert dataset_split_names(table) == ["train"]
    train = load_image_text_dataset(table, hold_out=HeldOutSplit(0.1, part="train"))
    held = load_image_text_dataset(table, hold_out=HeldOutSplit(0.1, part="eval"))
    assert len(held) == 4 and len(train) == 16 and len(set(_names(held))) == 1
    assert not set(_names(train)) & set(_names(held))


def _png(index: int) -> bytes:
    buffer = io.BytesIO()
    _picture(index)[0].save(buffer, format="PNG")
    return buffer.getvalue()


def test_webdataset_shards_hold_out_whole_samples_while_streaming(tmp_path):
    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard}.tar", "w") as archive:
            for index in range(10):
                for extension, data in (("png", _png(index)), ("txt", f"caption {shard} {index}".encode())):
                    info = tarfile.TarInfo(f"s{shard}_{index}.{extension}")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
    spec = str(tmp_path / "shard-{0..1}.tar")
    held = [row["text"] for row in load_image_text_dataset(spec, hold_out=HeldOutSplit(0.1, part="eval"))]
    kept = [row["text"] for row in load_image_text_dataset(spec, hold_out=HeldOutSplit(0.1, part="train"))]
    assert len(held) == 2 and len(kept) == 18 and not set(held) & set(kept)
    assert held == [row["text"] for row in load_image_text_dataset(spec, hold_out=HeldOutSplit(0.1, part="eval"))]


def test_a_caption_column_under_a_common_name_reaches_loader_and_collator(tmp_path):
    folder = _own_folder(tmp_path / "described", count=4, column="description")
    assert sorted(load_image_text_dataset(str(folder))[:]["text"])[0].startswith("a ")
    odd = _own_folder(tmp_path / "odd", count=4, column="words")
    with pytest.raises(ValueError, match=r"holds the text; available columns: .*'words'.*looked for \('text', 'caption', 'captions'"):
        load_image_text_dataset(str(odd))

    _, processor = get_task("clip").build(JobArguments())
    raw = datasets.Dataset.from_dict({"image": [_picture(i)[0] for i in range(3)],
                                      "caption": [_picture(i)[1] for i in range(3)]})
    batch = ContrastiveCollator(processor)([raw[i] for i in range(3)])  # a raw datasets.Dataset, as it is
    assert batch["pixel_values"].shape[0] == batch["input_ids"].shape[0] == 3

    renamed = raw.rename_column("caption", "words")
    with pytest.raises(ValueError, match=r"cannot find the text of a row: it has the keys \['image', 'words'\]"):
        ContrastiveCollator(processor)([renamed[0]])
    named = ContrastiveCollator(processor, text_column="words")([renamed[i] for i in range(3)])
    assert named["input_ids"].shape[0] == 3
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        ImageTextCollator(processor).collect([{}])
