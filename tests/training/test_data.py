"""Dataset specs: synthetic, imagefolder, captions tables, webdataset shards, hub ids, and their errors."""

import csv
import io
import json
import pickle
import tarfile

import datasets
import huggingface_hub.constants
import pytest
from PIL import Image

from hf_vlp.training.data import (
    BadSampleCounter,
    BadSampleError,
    decode_image,
    expand_braces,
    load_image_text_dataset,
    resolve_dataset_spec,
)
from hf_vlp.training.transforms import clip_train_transform

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def _png_bytes(colour, size=(12, 10)):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_images(folder, count, corrupt=()):
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        name = f"img{index}.png"
        data = b"not an image at all" if index in corrupt else _png_bytes(COLOURS[index % len(COLOURS)])
        (folder / name).write_bytes(data)
        names.append(name)
    return names


def _write_tar(path, samples):
    """samples: list of (key, {extension: bytes})."""
    with tarfile.open(path, "w") as archive:
        for key, members in samples:
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def _write_shards(folder, shard_count=2, per_shard=3, corrupt_key=None):
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(shard_count):
        samples = []
        for index in range(per_shard):
            key = f"s{shard}_{index}"
            image = b"garbage" if key == corrupt_key else _png_bytes(COLOURS[index % len(COLOURS)])
            samples.append((key, {"png": image, "txt": f"caption {shard} {index}".encode()}))
        _write_tar(folder / f"shard-{shard:03d}.tar", samples)
    return folder


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "hf_cache")


# ------------------------------------------------------------------------------------------- synthetic


def test_synthetic_spec_with_options_gives_image_text_label_rows():
    dataset = load_image_text_dataset("synthetic-shapes:n=12,size=32,seed=1")
    assert len(dataset) == 12
    row = dataset[3]
    assert isinstance(row["image"], Image.Image) and row["image"].mode == "RGB" and row["image"].size == (32, 32)
    assert isinstance(row["text"], str) and row["text"]
    assert isinstance(row["label"], int)
    assert row["sample_index"] == 3 and row["bad_sample"] is None
    validation = load_image_text_dataset("synthetic-shapes:n=12,size=32,seed=1", split="validation")
    assert validation[:]["text"] != dataset[:]["text"]


def test_synthetic_spec_rejects_unknown_options():
    with pytest.raises(ValueError, match=r"keys \['n', 'seed', 'size', 'task'\]"):
        load_image_text_dataset("synthetic-shapes:rows=5")


def test_synthetic_text_column_can_be_a_list_of_captions():
    dataset = load_image_text_dataset("synthetic-shapes:n=3,size=32", text_column="captions")
    plain = load_image_text_dataset("synthetic-shapes:n=3,size=32")
    assert dataset[:]["text"] == plain[:]["text"]  # the first caption variant is the canonical caption


def test_streaming_synthetic_yields_decoded_rows():
    dataset = load_image_text_dataset("synthetic-shapes:n=4,size=32", streaming=True)
    rows = list(dataset)
    assert [row["sample_index"] for row in rows] == [0, 1, 2, 3]
    assert all(isinstance(row["image"], Image.Image) for row in rows)


# ----------------------------------------------------------------------------------------- local folders


def test_imagefolder_with_metadata_jsonl_and_split_folders(tmp_path, cache_dir):
    for split, count in (("train", 4), ("validation", 2)):
        names = _write_images(tmp_path / "data" / split, count)
        with open(tmp_path / "data" / split / "metadata.jsonl", "w") as handle:
            for name in names:
                handle.write(json.dumps({"file_name": name, "caption": f"{split} picture {name}"}) + "\n")
    train = load_image_text_dataset(str(tmp_path / "data"), cache_dir=cache_dir)
    validation = load_image_text_dataset(str(tmp_path / "data"), split="validation", cache_dir=cache_dir)
    assert len(train) == 4 and len(validation) == 2
    row = train[1]
    assert row["image"].size == (12, 10) and row["image"].mode == "RGB"
    assert row["text"].startswith("train picture")
    assert row["source"].endswith(".png")
    with pytest.raises(ValueError, match=r"no split 'test'; available splits: \['train', 'validation'\]"):
        load_image_text_dataset(str(tmp_path / "data"), split="test", cache_dir=cache_dir)


def test_imagefolder_with_metadata_csv_and_explicit_text_column(tmp_path, cache_dir):
    names = _write_images(tmp_path / "data", 3)
    with open(tmp_path / "data" / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "description", "note"])
        writer.writerows([[name, f"described {name}", "x"] for name in names])
    dataset = load_image_text_dataset(str(tmp_path / "data"), text_column="description", cache_dir=cache_dir)
    assert sorted(dataset[:]["text"]) == sorted(f"described {name}" for name in names)


def test_folder_with_captions_csv_resolves_relative_paths(tmp_path):
    names = _write_images(tmp_path / "data" / "images", 3)
    with open(tmp_path / "data" / "captions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows([[f"images/{name}", f"caption of {name}"] for name in names])
    dataset = load_image_text_dataset(str(tmp_path / "data"))
    assert dataset[:]["text"] == [f"caption of {name}" for name in names]
    assert dataset[2]["source"] == str(tmp_path / "data" / "images" / "img2.png")
    assert dataset[2]["image"].getpixel((0, 0)) == COLOURS[2]
    with pytest.raises(FileNotFoundError, match="No captions table for split 'validation'"):
        load_image_text_dataset(str(tmp_path / "data"), split="validation")


def test_captions_table_file_with_custom_columns(tmp_path):
    names = _write_images(tmp_path, 2)
    table = tmp_path / "pairs.jsonl"
    table.write_text("".join(json.dumps({"picture": name, "alt": f"alt {name}"}) + "\n" for name in names))
    dataset = load_image_text_dataset(str(table), image_column="picture", text_column="alt")
    assert dataset[:]["text"] == ["alt img0.png", "alt img1.png"]
    assert dataset[0]["image"].getpixel((0, 0)) == COLOURS[0]


def test_missing_column_error_lists_existing_columns(tmp_path):
    names = _write_images(tmp_path, 2)
    with open(tmp_path / "captions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "photographer"])
        writer.writerows([[name, "a caption", "me"] for name in names])
    with pytest.raises(ValueError, match=r"'summary'.*available columns: \['image', 'caption', 'photographer'\]"):
        load_image_text_dataset(str(tmp_path), text_column="summary")
    with pytest.raises(ValueError, match=r"'label_text'.*available columns"):
        load_image_text_dataset("synthetic-shapes:n=2,size=32", text_column="label_text")


def test_columns_that_cannot_be_guessed_are_named_in_the_error(tmp_path):
    names = _write_images(tmp_path, 1)
    (tmp_path / "captions.csv").write_text(f"image,words\n{names[0]},hello\n")
    with pytest.raises(ValueError, match=r"holds the text; available columns: \['image', 'words'\].*text_column"):
        load_image_text_dataset(str(tmp_path))


def test_empty_datasets_say_so(tmp_path):
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "captions.csv").write_text("image,caption\n")
    with pytest.raises(ValueError, match="is empty"):
        load_image_text_dataset(str(tmp_path / "table"))
    (tmp_path / "meta").mkdir()
    _write_images(tmp_path / "meta", 1)
    (tmp_path / "meta" / "metadata.jsonl").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_image_text_dataset(str(tmp_path / "meta"))
    _write_tar(tmp_path / "empty.tar", [])
    with pytest.raises(ValueError, match="is empty"):
        load_image_text_dataset(str(tmp_path / "empty.tar"))


def test_unknown_folder_layout_and_missing_paths_are_explained(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="metadata.jsonl"):
        load_image_text_dataset(str(tmp_path / "stuff"))
    with pytest.raises(FileNotFoundError, match="not an existing folder or file"):
        load_image_text_dataset(str(tmp_path / "does-not-exist"))


# ------------------------------------------------------------------------------------------- bad samples


def _table_with_bad_rows(tmp_path):
    names = _write_images(tmp_path, 4, corrupt={1})
    names[3] = "missing.png"
    with open(tmp_path / "captions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows([[name, f"caption {index}"] for index, name in enumerate(names)])
    return tmp_path


def test_corrupt_or_missing_image_error_names_file_and_index(tmp_path):
    dataset = load_image_text_dataset(str(_table_with_bad_rows(tmp_path)))
    assert dataset[0]["image"].size == (12, 10)
    with pytest.raises(BadSampleError, match=r"sample 1 \(file '.*img1\.png'\): cannot decode the image") as caught:
        dataset[1]
    assert caught.value.index == 1 and caught.value.source.endswith("img1.png")
    with pytest.raises(BadSampleError, match=r"sample 3 \(file '.*missing\.png'\): the image file does not exist"):
        dataset[3]


def test_skip_bad_samples_marks_and_counts_them(tmp_path):
    counter = BadSampleCounter()
    dataset = load_image_text_dataset(str(_table_with_bad_rows(tmp_path)), skip_bad_samples=True, bad_samples=counter)
    rows = dataset[:]
    assert [image is None for image in rows["image"]] == [False, True, False, True]
    assert rows["bad_sample"][0] is None and "does not exist" in rows["bad_sample"][3]
    assert counter.count == 2
    assert [error.index for error in counter.examples] == [1, 3]
    assert "Skipped 2 bad sample(s)" in counter.summary() and "missing.png" in counter.summary()


def test_bad_samples_of_other_processes_are_added_once():
    """A distributed run adds every rank's skips to rank 0's counter; a sample two ranks skipped counts once."""
    rank0, rank1 = BadSampleCounter(), BadSampleCounter()
    rank0.record(BadSampleError(1, "a.png", "cannot decode the image"))
    rank1.record(BadSampleError(1, "a.png", "cannot decode the image"))
    rank1.record(BadSampleError(7, "b.png", "the image file does not exist"))
    rank1.record(BadSampleError(None, "shard-3.tar", "truncated shard"), key=("shard-3.tar",), samples=5)
    snapshot = rank1.snapshot()
    assert pickle.loads(pickle.dumps(snapshot)) == snapshot  # travels between processes
    rank0.absorb(snapshot)
    assert rank0.count == 1 + 1 + 5
    assert [error.index for error in rank0.examples] == [1, 7, None]
    assert "truncated shard" in rank0.summary()


# ------------------------------------------------------------------------------------------- webdataset


def test_webdataset_shards_by_brace_pattern_glob_and_folder(tmp_path, cache_dir):
    shards = _write_shards(tmp_path / "shards")
    for spec in (
        str(shards / "shard-{000..001}.tar"),
        str(shards / "shard-*.tar"),
        str(shards),
    ):
        dataset = load_image_text_dataset(spec, cache_dir=cache_dir)
        assert isinstance(dataset, datasets.IterableDataset)
        rows = list(dataset)
        assert [row["text"] for row in rows] == [f"caption {s} {i}" for s in range(2) for i in range(3)]
        assert all(row["image"].size == (12, 10) for row in rows)
        assert rows[4]["source"] == f"{shards / 'shard-001.tar'}:s1_1.png"
    only_first = list(load_image_text_dataset(str(shards / "shard-000.tar"), cache_dir=cache_dir))
    assert len(only_first) == 3


def test_webdataset_can_be_materialised(tmp_path, cache_dir):
    shards = _write_shards(tmp_path / "shards", shard_count=1)
    dataset = load_image_text_dataset(str(shards), streaming=False, cache_dir=cache_dir)
    assert isinstance(dataset, datasets.Dataset) and len(dataset) == 3
    assert dataset[2]["text"] == "caption 0 2"


def test_streamed_bad_samples_are_dropped_and_counted_or_raise(tmp_path, cache_dir):
    shards = _write_shards(tmp_path / "shards", corrupt_key="s0_2")
    with pytest.raises(BadSampleError, match=r"sample 2 \(file '.*shard-000\.tar:s0_2"):
        list(load_image_text_dataset(str(shards), cache_dir=cache_dir))
    counter = BadSampleCounter()
    rows = list(load_image_text_dataset(str(shards), skip_bad_samples=True, bad_samples=counter, cache_dir=cache_dir))
    assert len(rows) == 5 and counter.count == 1
    assert "s0_2.png" not in {row["source"].rsplit(":", 1)[-1] for row in rows}


def test_no_shards_matching_a_pattern_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No webdataset shards match"):
        load_image_text_dataset(str(tmp_path / "nothing-{000..003}.tar"))


def test_expand_braces_handles_ranges_and_alternatives():
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{x,y}/{1..2}") == ["x/1", "x/2", "y/1", "y/2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


# ------------------------------------------------------------------------------------------------- hub


def test_hub_id_offline_fails_with_alternatives(monkeypatch, cache_dir):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match=r"not reachable.*HF_DATASETS_OFFLINE=1.*local folder"):
        load_image_text_dataset("some-org/some-image-text-dataset", cache_dir=cache_dir)


def test_resolve_dataset_spec_kinds(tmp_path):
    shards = _write_shards(tmp_path / "shards", shard_count=1)
    assert resolve_dataset_spec("synthetic-shapes").kind == "synthetic"
    assert resolve_dataset_spec("synthetic-shapes:n=5").options == {"num_samples": 5}
    assert resolve_dataset_spec(str(shards)).kind == "webdataset"
    assert resolve_dataset_spec("org/name").kind == "hub"
    with pytest.raises(ValueError, match="non-empty string"):
        resolve_dataset_spec("  ")


# ----------------------------------------------------------------------------------- decoding, transforms


def test_decode_image_accepts_common_forms_and_names_failures(tmp_path):
    png = _png_bytes((1, 2, 3))
    (tmp_path / "a.png").write_bytes(png)
    for value in (png, {"bytes": png, "path": None}, {"bytes": None, "path": str(tmp_path / "a.png")},
                  str(tmp_path / "a.png"), Image.open(io.BytesIO(png)).convert("L")):
        image = decode_image(value, index=0)
        assert image.mode == "RGB" and image.size == (12, 10)
    with pytest.raises(BadSampleError, match=r"sample 5 \(file 'x.png'\): cannot decode"):
        decode_image({"bytes": png[:40], "path": "x.png"}, index=5)
    with pytest.raises(BadSampleError, match="sample 6: the image is missing"):
        decode_image(None, index=6)


def test_image_transform_runs_after_decoding():
    dataset = load_image_text_dataset("synthetic-shapes:n=2,size=32", image_transform=clip_train_transform(24))
    assert dataset[0]["image"].size == (24, 24)
