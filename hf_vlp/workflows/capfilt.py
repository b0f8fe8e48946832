"""CapFilt (BLIP, Li et al. 2022, Sec. 3.3): bootstrap a cleaner image-text corpus from noisy web pairs.

A **captioner** (a BLIP image-grounded decoder, :class:`~hf_vlp.models.blip.VlpBlipForConditionalGeneration`) writes
one synthetic caption per image with nucleus sampling (the original's ``generate(sample=True)``: top-p 0.9,
repetition penalty 1.1, max length 30, min length 10, the lengths counting ``[DEC]`` and the prompt). A **filter** (a
BLIP image-grounded encoder with its ITM head) then scores the web caption and the synthetic caption of every image;
a caption is kept when its match probability exceeds ``threshold`` (0.5: the argmax of the two-way ITM head, as the
paper). The kept pairs form a ``datasets`` dataset, saved with ``save_to_disk`` (``DatasetDict`` with a ``"train"``
split) next to ``summary.json``; each row records where it came from (``caption_source``, ``image_index``) and its score.

    python -m hf_vlp.workflows.capfilt --captioner CAPTIONER_DIR --filter FILTER_DIR --dataset SPEC --output OUT_DIR

The output appears only when the run succeeds: everything is written to a temporary folder beside ``OUT_DIR`` and
renamed at the end.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from datasets.arrow_writer import ArrowWriter
from PIL import Image
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from ..models.blip import (
    CAPTION_DECODING,
    VlpBlipConfig,
    VlpBlipForConditionalGeneration,
    VlpBlipModel,
    VlpBlipPreTrainedModel,
    VlpBlipProcessor,
)
from ..training.data import BadSampleCounter, load_image_text_dataset, take_rows

SOURCES = ("web", "synthetic")
OUTPUT_SPLIT = "train"
SUMMARY_FILE = "summary.json"
CREATED_BY = "hf_vlp.capfilt"  # the marker written into output folders; unchanged when the module moved
# saved BLIP classes that hold the captioning decoder, and those that hold the ITM head (loaded as VlpBlipModel: every
# BLIP head shares the parameter names, so the filter's encoder weights load from any of them)
CAPTIONER_CLASSES = ("VlpBlipForConditionalGeneration", "VlpBlipForPretraining")
FILTER_CLASSES = ("VlpBlipModel", "VlpBlipForImageTextRetrieval", "VlpBlipForPretraining")
_SAMPLING = CAPTION_DECODING["sampling"]
OUTPUT_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "text": datasets.Value("string"),
        "caption_source": datasets.Value("string"),
        "itm_score": datasets.Value("float32"),
        "image_index": datasets.Value("int64"),
    }
)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class CapFiltArguments:
    """``hf-vlp capfilt`` options; the field names are :func:`capfilt`'s keyword arguments."""

    captioner: str = field(metadata=_help("saved VlpBlipForConditionalGeneration directory (model + processor)"))
    filter: str = field(
        metadata=_help("saved BLIP directory with an ITM head (VlpBlipModel, retrieval or pre-training) + processor")
    )
    dataset: str = field(metadata=_help("dataset spec of the web pairs (see hf_vlp.training.data)"))
    output: str = field(metadata=_help("directory to write the bootstrapped dataset and summary.json to"))
    split: str = "train"
    image_column: str | None = None
    text_column: str | None = None
    max_samples: int | None = field(default=None, metadata=_help("use only the first N images"))
    batch_size: int = 16
    device: str | None = field(default=None, metadata=_help("torch device (default: cuda when available, else cpu)"))
    seed: int = field(default=0, metadata=_help("seed of the nucleus sampling (same seed, same captions)"))
    threshold: float = field(default=0.5, metadata=_help("keep a caption when the filter's p(match) exceeds this"))
    top_p: float = _SAMPLING["top_p"]
    top_k: int = 50  # transformers' default, which the original's sampling kept
    repetition_penalty: float = _SAMPLING["repetition_penalty"]
    max_length: int = field(default=_SAMPLING["max_length"], metadata=_help("tokens, counting [DEC] and the prompt"))
    min_length: int = field(default=_SAMPLING["min_length"], metadata=_help("tokens, counting [DEC] and the prompt"))
    prompt: str | None = field(default=None, metadata=_help("caption prompt (default: the captioner processor's)"))
    skip_bad_samples: bool = False
    overwrite: bool = field(default=False, metadata=_help("replace an existing output directory of an earlier run"))
    progress: bool = True


@dataclass
class CapFiltResult:
    """Where the bootstrapped dataset was written and its ``summary.json`` content."""

    output_dir: Path
    summary: dict[str, Any]


# ------------------------------------------------------------------------------------------------- models


def _saved_class_name(directory: Path, role: str) -> str:
    config_file = directory / "config.json"
    if not directory.is_dir():
        raise FileNotFoundError(
            f"The {role} {str(directory)!r} is not a directory; pass a model saved with save_pretrained."
        )
    if not config_file.is_file():
        raise FileNotFoundError(
            f"The {role} directory {str(directory)!r} has no config.json; pass a directory written by "
            "model.save_pretrained(DIR) and processor.save_pretrained(DIR)."
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    names = config.get("architectures") or []
    if config.get("model_type") != VlpBlipConfig.model_type or not names:
        raise ValueError(
            f"The {role} {str(directory)!r} is not a BLIP model (model_type {config.get('model_type')!r}, "
            f"architectures {names}); CapFilt needs hf_vlp BLIP checkpoints."
        )
    return names[0]


def _check_saved_class(directory: Path, role: str, accepted: Sequence[str], needed: str, advice: str) -> None:
    """Refuse a saved BLIP whose class lacks what the ``role`` needs (``needed``), with ``advice``."""
    class_name = _saved_class_name(directory, role)
    if class_name not in accepted:
        raise ValueError(
            f"The {role} {str(directory)!r} is a {class_name} checkpoint, which has no {needed}; {advice}"
        )


def _load_processor(directory: Path, role: str) -> VlpBlipProcessor:
    try:
        return VlpBlipProcessor.from_pretrained(str(directory))
    except (OSError, ValueError, TypeError) as error:
        raise FileNotFoundError(
            f"The {role} directory {str(directory)!r} holds no usable BLIP processor ({error}); save it next to the "
            "model with processor.save_pretrained(DIR)."
        ) from error


def _check_processor_matches(model: VlpBlipPreTrainedModel, processor: Any, role: str) -> None:
    """The tokenizer must give the ids the model's special tokens were trained with."""
    if not isinstance(processor, VlpBlipProcessor):
        raise TypeError(f"The {role} processor must be a VlpBlipProcessor, got {type(processor).__name__}.")
    names = ("pad_token_id", "sep_token_id", "bos_token_id", "enc_token_id")
    expected = {name: getattr(model.config.text_config, name) for name in names}
    actual = {name: processor.special_token_ids()[name] for name in expected}
    if expected != actual:
        raise ValueError(
            f"The {role} processor's tokenizer does not match its model: special token ids {actual}, the model's "
            f"config {expected}. Save the processor the model was trained with next to it."
        )


def _loaded_without_missing_keys(model_class: type, directory: Path, role: str, needed: str) -> VlpBlipPreTrainedModel:
    model, info = model_class.from_pretrained(str(directory), output_loading_info=True)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(
            f"The {role} {str(directory)!r} lacks {needed} weights ({len(missing)} missing, e.g. {missing[:3]}); "
            f"pass a checkpoint that holds them."
        )
    return model


def load_captioner(
    source: str | os.PathLike | VlpBlipForConditionalGeneration, processor: VlpBlipProcessor | None = None
) -> tuple[VlpBlipForConditionalGeneration, VlpBlipProcessor]:
    """The captioner and its processor: a saved ``VlpBlipForConditionalGeneration`` directory (a pre-training
    checkpoint also works: it holds the decoder), or a model object given with its ``processor``."""
    if isinstance(source, (str, os.PathLike)):
        directory = Path(source)
        _check_saved_class(
            directory, "captioner", CAPTIONER_CLASSES, "captioning decoder",
            "pass a VlpBlipForConditionalGeneration fine-tuned for captioning (CapFilt's captioner) or a "
            "VlpBlipForPretraining checkpoint.",
        )
        model = _loaded_without_missing_keys(VlpBlipForConditionalGeneration, directory, "captioner", "decoder")
        processor = processor if processor is not None else _load_processor(directory, "captioner")
    else:
        model = source
        if not isinstance(model, VlpBlipForConditionalGeneration):
            raise TypeError(
                f"The captioner must be a VlpBlipForConditionalGeneration or its directory, got {type(model).__name__}."
            )
        if processor is None:
            raise ValueError("A captioner model object needs its processor: pass captioner_processor=VlpBlipProcessor.")
    _check_processor_matches(model, processor, "captioner")
    return model, processor


def load_filter(
    source: str | os.PathLike | VlpBlipPreTrainedModel, processor: VlpBlipProcessor | None = None
) -> tuple[VlpBlipPreTrainedModel, VlpBlipProcessor]:
    """The filter and its processor: a saved BLIP directory with an ITM head (``VlpBlipModel``, retrieval or
    pre-training; loaded as ``VlpBlipModel``, without momentum towers), or a model object given with its
    ``processor`` that has an ITM head and the image-grounded encoder."""
    if isinstance(source, (str, os.PathLike)):
        directory = Path(source)
        _check_saved_class(
            directory, "filter", FILTER_CLASSES, "ITM head",
            f"pass a BLIP model with one ({', '.join(FILTER_CLASSES)}), e.g. one fine-tuned for retrieval (CapFilt's "
            "filter).",
        )
        model = _loaded_without_missing_keys(VlpBlipModel, directory, "filter", "image-grounded encoder / ITM head")
        processor = processor if processor is not None else _load_processor(directory, "filter")
    else:
        model = source
        roles = getattr(getattr(getattr(model, "text_model", None), "transformer", None), "roles", ())
        has_itm = hasattr(model, "itm_head") and hasattr(model, "get_itm_logits")
        if not isinstance(model, VlpBlipPreTrainedModel) or not has_itm or "encoder" not in roles:
            raise TypeError(
                f"The filter must be a BLIP model with an ITM head and the image-grounded encoder (VlpBlipModel, "
                f"VlpBlipForImageTextRetrieval, VlpBlipForPretraining) or its directory, got {type(model).__name__}."
            )
        if processor is None:
            raise ValueError("A filter model object needs its processor: pass filter_processor=VlpBlipProcessor.")
    _check_processor_matches(model, processor, "filter")
    return model, processor


@contextmanager
def _inference(model: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode on ``device`` for the run; its training mode is restored afterwards."""
    was_training = model.training
    model.to(device)
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------------------------- the steps


@torch.no_grad()
def sample_captions(
    captioner: VlpBlipForConditionalGeneration,
    processor: VlpBlipProcessor,
    images: Sequence[Image.Image],
    prompt: str | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """One caption per image (nucleus sampling unless ``generate_kwargs`` say otherwise), the prompt cut off."""
    pixel_values = processor(images=list(images), return_tensors="pt")["pixel_values"]
    captions = captioner.caption(pixel_values, processor, prompt=prompt, **generate_kwargs)
    return [caption.strip() for caption in captions]


@torch.no_grad()
def itm_match_probabilities(
    filter_model: VlpBlipPreTrainedModel,
    processor: VlpBlipProcessor,
    images: Sequence[Image.Image],
    captions: Sequence[Sequence[str]],
) -> torch.Tensor:
    """p(match) ``[B, K]`` of image b with each of its ``K`` captions ``captions[b]``: the ITM head's softmax over the
    image-grounded encoder (``[ENC]`` first). The image tower runs once per image."""
    per_image = {len(texts) for texts in captions}
    if len(captions) != len(images) or len(per_image) != 1:
        raise ValueError("itm_match_probabilities needs the same number of captions for every image")
    (count,) = per_image
    device = filter_model.device
    pixel_values = processor(images=list(images), return_tensors="pt")["pixel_values"].to(device, filter_model.dtype)
    image_states = filter_model.encode_image(pixel_values).last_hidden_state
    # text row k * B + b pairs caption k of image b
    texts = [captions[b][k] for k in range(count) for b in range(len(images))]
    encoded = processor(text=texts, return_tensors="pt").to(device)
    image_states = image_states.repeat(count, 1, 1)
    logits = filter_model.get_itm_logits(
        encoded["input_ids"], attention_mask=encoded["attention_mask"], image_hidden_states=image_states
    )
    return logits.float().softmax(dim=-1)[:, 1].view(count, len(images)).T.cpu()


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _batches(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ------------------------------------------------------------------------------------------------- output


def _is_earlier_output(directory: Path) -> bool:
    summary = directory / SUMMARY_FILE
    if not summary.is_file():
        return False
    try:
        return json.loads(summary.read_text(encoding="utf-8")).get("created_by") == CREATED_BY
    except (OSError, ValueError):
        return False


def check_output_dir(output: Path, overwrite: bool) -> None:
    """Refuse to write over anything but an earlier CapFilt output (or an empty folder), and that only with
    ``overwrite``: a mistyped ``--output`` must never delete unrelated files."""
    if not output.exists():
        return
    if not output.is_dir():
        raise FileExistsError(f"The output {str(output)!r} exists and is not a directory; choose another --output.")
    if not overwrite:
        raise FileExistsError(
            f"The output directory {str(output)!r} already exists; pass overwrite=True (--overwrite) to replace it, "
            "or choose another --output."
        )
    if any(output.iterdir()) and not _is_earlier_output(output):
        raise FileExistsError(
            f"The output directory {str(output)!r} is not empty and was not written by CapFilt (no {SUMMARY_FILE} "
            "from an earlier run); --overwrite only replaces CapFilt outputs. Choose another --output."
        )


@contextmanager
def staged_output_dir(output: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh folder to fill; renamed to ``output`` when the block succeeds, deleted when it fails (an existing
    ``output`` is then left untouched)."""
    check_output_dir(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".capfilt-tmp", dir=output.parent))
    result = staging / "result"
    try:
        yield result
        check_output_dir(output, overwrite)  # it may have appeared while we ran
        previous = staging / "previous"
        if output.exists():
            os.replace(output, previous)
        try:
            os.replace(result, output)
        except OSError:
            if previous.exists():
                os.replace(previous, output)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def format_summary_table(summary: dict[str, Any]) -> str:
    """The kept/removed counts per caption source as a short text table."""
    lines = [f"{'source':<10} {'kept':>7} {'removed':>8} {'kept %':>7}"]
    totals = [0, 0]
    for source in SOURCES:
        counts = summary["counts"][source]
        totals[0] += counts["kept"]
        totals[1] += counts["removed"]
        lines.append(_table_row(source, counts["kept"], counts["removed"]))
    lines.append(_table_row("total", *totals))
    return "\n".join(lines)


def _table_row(name: str, kept: int, removed: int) -> str:
    share = f"{100 * kept / (kept + removed):.1f}" if kept + removed else "-"
    return f"{name:<10} {kept:>7} {removed:>8} {share:>7}"


# ---------------------------------------------------------------------------------------------------- run


def _check_settings(settings: CapFiltArguments) -> None:
    problems = []
    if not 0.0 <= settings.threshold <= 1.0:
        problems.append(f"threshold must lie in [0, 1] (a probability), got {settings.threshold}")
    if settings.batch_size < 1:
        problems.append(f"batch_size must be >= 1, got {settings.batch_size}")
    if settings.max_samples is not None and settings.max_samples < 1:
        problems.append(f"max_samples must be >= 1 (or None for all), got {settings.max_samples}")
    if not 0.0 < settings.top_p <= 1.0:
        problems.append(f"top_p must lie in (0, 1], got {settings.top_p}")
    if settings.top_k < 0:
        problems.append(f"top_k must be >= 0 (0 disables it), got {settings.top_k}")
    if settings.repetition_penalty <= 0:
        problems.append(f"repetition_penalty must be > 0 (1.0 = none), got {settings.repetition_penalty}")
    if not 0 <= settings.min_length <= settings.max_length:
        problems.append(f"need 0 <= min_length <= max_length, got {settings.min_length} and {settings.max_length}")
    if problems:
        raise ValueError("Bad CapFilt settings: " + "; ".join(problems) + ".")


def _resolve_device(device: str | torch.device | None, *models: Any) -> torch.device:
    """The requested device; by default the device of a model given as an object (so it is not moved), else cuda
    when available, else cpu."""
    if device is not None:
        return torch.device(device)
    for model in models:
        if isinstance(model, torch.nn.Module):
            return next(model.parameters()).device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _describe(source: Any) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__} object>"


@dataclass
class _Tally:
    """Running counts of one caption source."""

    kept: int = 0
    removed: int = 0
    removed_empty: int = 0
    score_sum: float = 0.0

    def add(self, score: float, kept: bool, empty: bool) -> None:
        self.score_sum += score
        self.kept += int(kept)
        self.removed += int(not kept)
        self.removed_empty += int(empty)


@dataclass
class _Models:
    """The loaded captioner and filter with their processors and the generation settings."""

    captioner: VlpBlipForConditionalGeneration
    captioner_processor: VlpBlipProcessor
    filter: VlpBlipPreTrainedModel
    filter_processor: VlpBlipProcessor
    prompt: str
    generate_kwargs: dict[str, Any]


def _bootstrap_batch(
    batch: list[dict[str, Any]], models: _Models, threshold: float, tallies: dict[str, _Tally], writer: ArrowWriter
) -> int:
    """Caption and filter one batch of decoded rows, write the kept pairs; returns how many images it held."""
    good = [row for row in batch if row["image"] is not None]  # skipped bad samples keep image=None
    if not good:
        return 0
    images = [row["image"] for row in good]
    synthetic = sample_captions(
        models.captioner, models.captioner_processor, images, models.prompt, **models.generate_kwargs
    )
    captions = [[row["text"], caption] for row, caption in zip(good, synthetic)]
    scores = itm_match_probabilities(models.filter, models.filter_processor, images, captions)
    for row, texts, row_scores in zip(good, captions, scores.tolist()):
        image_bytes = None
        for source, text, score in zip(SOURCES, texts, row_scores):
            keep = score > threshold and bool(text)
            tallies[source].add(score, keep, empty=not text)
            if keep:
                image_bytes = image_bytes or _png_bytes(row["image"])
                example = {
                    "image": {"bytes": image_bytes, "path": None}, "text": text, "caption_source": source,
                    "itm_score": score, "image_index": int(row["sample_index"]),
                }
                writer.write(OUTPUT_FEATURES.encode_example(example))
    return len(good)


def capfilt(
    captioner: str | os.PathLike | VlpBlipForConditionalGeneration,
    filter: str | os.PathLike | VlpBlipPreTrainedModel,  # noqa: A002 - the paper's name for the model
    dataset: str,
    output: str | os.PathLike,
    *,
    captioner_processor: VlpBlipProcessor | None = None,
    filter_processor: VlpBlipProcessor | None = None,
    split: str = "train",
    image_column: str | None = None,
    text_column: str | None = None,
    max_samples: int | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    seed: int = 0,
    threshold: float = 0.5,
    top_p: float = _SAMPLING["top_p"],
    top_k: int = 50,
    repetition_penalty: float = _SAMPLING["repetition_penalty"],
    max_length: int = _SAMPLING["max_length"],
    min_length: int = _SAMPLING["min_length"],
    prompt: str | None = None,
    skip_bad_samples: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> CapFiltResult:
    """Caption every image of ``dataset`` with ``captioner``, filter web and synthetic captions with ``filter``'s ITM
    head, and save the kept pairs to ``output``.

    ``captioner``/``filter`` are saved model directories (each with its processor) or model objects given with
    ``captioner_processor``/``filter_processor``. Sampling is seeded with ``seed`` (the caller's random state is
    restored afterwards); the same seed, batch size and device give the same captions. A caption is kept when
    ``p(match) > threshold``; empty synthetic captions never are.

    ``output`` receives ``save_to_disk``'s ``DatasetDict`` layout with one ``"train"`` split of columns ``image``,
    ``text``, ``caption_source`` (``"web"``/``"synthetic"``), ``itm_score`` (the filter's p(match)) and ``image_index`` (the row
    of ``split`` the image came from), plus ``summary.json`` (counts per source, settings). Nothing is written unless
    the run succeeds; an existing ``output`` is an error unless ``overwrite`` (and even then only an earlier CapFilt
    output or an empty folder is replaced).
    """
    settings = CapFiltArguments(
        captioner=_describe(captioner), filter=_describe(filter), dataset=dataset, output=str(output), split=split,
        image_column=image_column, text_column=text_column, max_samples=max_samples, batch_size=batch_size,
        device=None if device is None else str(device), seed=seed, threshold=threshold, top_p=top_p, top_k=top_k,
        repetition_penalty=repetition_penalty, max_length=max_length, min_length=min_length, prompt=prompt,
        skip_bad_samples=skip_bad_samples, overwrite=overwrite, progress=progress,
    )
    _check_settings(settings)
    output = Path(output)
    check_output_dir(output, overwrite)
    run_device = _resolve_device(device, captioner, filter)
    models = _load_models(settings, captioner, filter, captioner_processor, filter_processor)
    settings.prompt, settings.device = models.prompt, str(run_device)
    bad_samples = BadSampleCounter()
    rows = load_image_text_dataset(
        dataset, split=split, image_column=image_column, text_column=text_column,
        skip_bad_samples=skip_bad_samples, bad_samples=bad_samples,
    )
    total = min(len(rows), max_samples or len(rows)) if isinstance(rows, datasets.Dataset) else max_samples
    tallies = {source: _Tally() for source in SOURCES}
    images = 0
    rng_devices = [run_device.index or 0] if run_device.type == "cuda" else []

    with (
        staged_output_dir(output, overwrite) as result_dir,
        _inference(models.captioner, run_device),
        _inference(models.filter, run_device),
        torch.random.fork_rng(devices=rng_devices),
    ):
        torch.manual_seed(seed)
        work_file = result_dir.parent / "rows.arrow"
        with ArrowWriter(features=OUTPUT_FEATURES, path=str(work_file)) as writer:
            with tqdm(total=total, unit="image", desc="CapFilt", disable=not progress) as bar:
                for batch in _batches(take_rows(rows, max_samples), batch_size):
                    images += _bootstrap_batch(batch, models, threshold, tallies, writer)
                    bar.update(len(batch))
            writer.finalize()
        if images == 0:
            skipped = f" ({bad_samples.count} bad samples skipped)" if bad_samples.count else ""
            raise ValueError(
                f"Dataset {dataset!r} split {split!r} gave no usable images{skipped}; nothing to bootstrap."
            )
        kept = datasets.Dataset.from_file(str(work_file))
        kept_rows = len(kept)
        # an empty dataset saved in zero shards cannot be loaded back; one empty shard can
        datasets.DatasetDict({OUTPUT_SPLIT: kept}).save_to_disk(
            str(result_dir), num_shards={OUTPUT_SPLIT: 1} if kept_rows == 0 else None
        )
        del kept
        summary = _summary(settings, images, kept_rows, tallies, bad_samples.count)
        (result_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    _report(summary, output)
    return CapFiltResult(output, summary)


def _load_models(
    settings: CapFiltArguments,
    captioner: Any,
    filter_source: Any,
    captioner_processor: VlpBlipProcessor | None,
    filter_processor: VlpBlipProcessor | None,
) -> _Models:
    captioner_model, captioner_processor = load_captioner(captioner, captioner_processor)
    filter_model, filter_processor = load_filter(filter_source, filter_processor)
    prompt = captioner_processor.prompt if settings.prompt is None else settings.prompt
    start_length = len(captioner_processor(text=[prompt])["input_ids"][0]) - 1 if prompt else 1  # [DEC] + prompt
    if settings.max_length <= start_length:
        raise ValueError(
            f"max_length={settings.max_length} leaves no room for a caption after [DEC] and the prompt {prompt!r} "
            f"({start_length} tokens); raise max_length."
        )
    generate_kwargs = dict(
        do_sample=True, num_beams=1, top_p=settings.top_p, top_k=settings.top_k,
        repetition_penalty=settings.repetition_penalty, max_length=settings.max_length, min_length=settings.min_length,
    )
    return _Models(captioner_model, captioner_processor, filter_model, filter_processor, prompt, generate_kwargs)


def _summary(
    settings: CapFiltArguments, images: int, rows: int, tallies: dict[str, _Tally], bad_samples: int
) -> dict[str, Any]:
    counts: dict[str, dict[str, Any]] = {
        source: {"kept": tally.kept, "removed": tally.removed, "mean_itm_score": tally.score_sum / images}
        for source, tally in tallies.items()
    }
    counts["synthetic"]["removed_empty"] = tallies["synthetic"].removed_empty
    recorded = asdict(settings)
    for name in ("overwrite", "progress"):
        recorded.pop(name)
    return {
        "created_by": CREATED_BY,
        "images": images,
        "rows": rows,
        "bad_samples_skipped": bad_samples,
        "counts": counts,
        "settings": {**recorded, "do_sample": True, "num_beams": 1},
    }


def _report(summary: dict[str, Any], output: Path) -> None:
    settings = summary["settings"]
    print(f"CapFilt: {summary['images']} images of {settings['dataset']!r} (split {settings['split']!r}), "
          f"threshold {settings['threshold']}")
    print(format_summary_table(summary))
    if summary["rows"]:
        print(f"Wrote {summary['rows']} pairs to {str(output)!r} (datasets.load_from_disk(DIR)['train']).")
        return
    print(
        f"Warning: the filter kept nothing (no caption scored p(match) > {settings['threshold']}); the dataset in "
        f"{str(output)!r} is empty. Lower --threshold or use a filter fine-tuned for image-text matching.",
        file=sys.stderr,
    )


# ---------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None, prog: str = "hf-vlp capfilt") -> int:
    """``hf-vlp capfilt --captioner DIR --filter DIR --dataset SPEC --output DIR [options]``; returns the exit status
    (1 with one clear line for bad input)."""
    parser = HfArgumentParser(CapFiltArguments, prog=prog, description=__doc__.split("\n\n")[0])
    arguments = list(sys.argv[1:] if argv is None else argv)
    (settings,) = parser.parse_args_into_dataclasses(args=arguments)
    try:
        capfilt(**asdict(settings))
    except (ValueError, OSError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "CAPTIONER_CLASSES",
    "FILTER_CLASSES",
    "OUTPUT_FEATURES",
    "CapFiltArguments",
    "CapFiltResult",
    "capfilt",
    "check_output_dir",
    "format_summary_table",
    "itm_match_probabilities",
    "load_captioner",
    "load_filter",
    "main",
    "sample_captions",
    "staged_output_dir",
]


if __name__ == "__main__":
    sys.exit(main(prog="python -m hf_vlp.workflows.capfilt"))
