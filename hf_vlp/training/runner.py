"""The ``hf-vlp train`` / ``hf-vlp evaluate`` jobs: build or load a model, train it with the stock Trainer,
evaluate before and after, and write the model, processor, model card, metrics and plots."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoProcessor, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from ..evaluation.report import dataset_class_names, evaluate_dual_encoder, format_metrics_table
from ..model_card import render_model_card
from ..models.clip import VlpClipConfig, VlpClipImageProcessor, VlpClipModel, VlpClipProcessor
from ..models.clip.tokenization_clip import load_clip_tokenizer
from ..synthetic import SYNTHETIC_CLASS_NAMES, ZERO_SHOT_TEMPLATES
from .callbacks import CollatorEpochCallback, LogitScaleClampCallback
from .collators import ContrastiveCollator
from .data import BadSampleCounter, clip_train_transform, load_image_text_dataset, resolve_dataset_spec
from .plots import plot_training
from .recipes import PACKAGED_BPE, Recipe, get_recipe

logger = logging.getLogger(__name__)


@dataclass
class JobArguments:
    """What to train on and which model to start from (Trainer arguments are separate)."""

    dataset: str = "synthetic-shapes:n=8000"
    eval_dataset: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    image_column: str | None = None
    text_column: str | None = None
    skip_bad_samples: bool = False
    preset: str | None = None
    from_pretrained: str | None = None
    tokenizer: str | None = None
    image_size: int | None = None
    no_augment: bool = False
    eval_max_samples: int = 1000
    skip_eval: bool = False


def build_clip(job: JobArguments, recipe: Recipe) -> tuple[VlpClipModel, VlpClipProcessor]:
    """A converted/trained model (``--from-pretrained``), a released size (``--preset``) or the tiny recipe."""
    if job.from_pretrained:
        model = AutoModel.from_pretrained(job.from_pretrained, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(job.from_pretrained)
        return model, processor
    tokenizer = load_clip_tokenizer(job.tokenizer or PACKAGED_BPE)
    if job.preset:
        config = VlpClipConfig.from_preset(job.preset)
    else:
        config = VlpClipConfig(**recipe.tiny_config)
    if job.image_size:
        config.vision_config.image_size = job.image_size
    text = config.text_config
    text.vocab_size, text.eos_token_id, text.bos_token_id = len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id
    model = VlpClipModel(config)
    size = config.vision_config.image_size
    processor = VlpClipProcessor(
        VlpClipImageProcessor(size=size, crop_size=size), tokenizer, context_length=text.max_position_embeddings
    )
    return model, processor


def _resume_path(resume: str | None, output_dir: str) -> str | None:
    if resume in (None, "", "false", "False"):
        return None
    if resume in ("last", "true", "True"):
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise FileNotFoundError(f"--resume-from-checkpoint {resume}: no checkpoint-* folder in {output_dir}")
        return last
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume-from-checkpoint: {resume} is not a checkpoint folder")
    return resume


def _class_names(spec: str, dataset: Any) -> list[str] | None:
    names = dataset_class_names(dataset)
    if names is None and resolve_dataset_spec(spec).kind == "synthetic":
        names = list(SYNTHETIC_CLASS_NAMES)
    return names


def run_evaluation(model: Any, processor: Any, spec: str, split: str, job: JobArguments, batch_size: int) -> dict[str, float]:
    dataset = load_image_text_dataset(
        spec, split=split, image_column=job.image_column, text_column=job.text_column, skip_bad_samples=job.skip_bad_samples
    )
    synthetic = resolve_dataset_spec(spec).kind == "synthetic"
    return evaluate_dual_encoder(
        model,
        processor,
        dataset,
        class_names=_class_names(spec, dataset),
        templates=list(ZERO_SHOT_TEMPLATES) if synthetic else None,
        max_samples=job.eval_max_samples,
        batch_size=batch_size,
    )


def train(architecture: str, job: JobArguments, args: TrainingArguments) -> dict[str, Any]:
    """Train ``architecture`` with the stock Trainer; returns the metrics also written to ``metrics.json``."""
    recipe = get_recipe(architecture)
    set_seed(args.seed)  # the model is built before the Trainer seeds anything
    model, processor = build_clip(job, recipe)
    bad_samples = BadSampleCounter()
    train_dataset = load_image_text_dataset(
        job.dataset,
        split=job.train_split,
        image_column=job.image_column,
        text_column=job.text_column,
        skip_bad_samples=job.skip_bad_samples,
        bad_samples=bad_samples,
    )
    size = model.config.vision_config.image_size
    collator = ContrastiveCollator(
        processor,
        image_transform=None if job.no_augment else clip_train_transform(size),
        skip_bad_samples=job.skip_bad_samples,
        bad_samples=bad_samples,
        augmentation_seed=args.seed,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=processor,
        callbacks=[LogitScaleClampCallback(max_value=model.config.logit_scale_max), CollatorEpochCallback(collator)],
    )
    eval_spec = job.eval_dataset or job.dataset
    is_main = trainer.is_world_process_zero()
    metrics: dict[str, Any] = {"architecture": architecture, "dataset": job.dataset, "eval_dataset": eval_spec}
    if is_main and not job.skip_eval:
        metrics["before"] = run_evaluation(model, processor, eval_spec, job.eval_split, job, args.per_device_eval_batch_size)
    result = trainer.train(resume_from_checkpoint=_resume_path(args.resume_from_checkpoint, args.output_dir))
    metrics["train"] = dict(result.metrics)
    metrics["bad_samples"] = bad_samples.count
    trainer.save_model(args.output_dir)
    if not is_main:
        return metrics
    if not job.skip_eval:
        metrics["after"] = run_evaluation(model, processor, eval_spec, job.eval_split, job, args.per_device_eval_batch_size)
    output = Path(args.output_dir)
    history = trainer.state.log_history
    (output / "metrics.json").write_text(json.dumps({**metrics, "log_history": history}, indent=2))
    plot_training(history, {k: metrics[k] for k in ("before", "after") if k in metrics}, output)
    provenance = f"Trained with `hf-vlp train {architecture}` on `{job.dataset}` for {trainer.state.global_step} steps."
    card = render_model_card(model, metrics=metrics.get("after"), dataset=eval_spec, provenance=provenance)
    card.save(output / "README.md")
    print_report(metrics, output, bad_samples)
    return metrics


def print_report(metrics: dict[str, Any], output: Path, bad_samples: BadSampleCounter) -> None:
    columns = {name: metrics[name] for name in ("before", "after") if name in metrics}
    if columns:
        print("\n" + format_metrics_table(columns))
    train = metrics.get("train", {})
    print(
        f"\ntrain loss {train.get('train_loss', float('nan')):.4f} in {train.get('train_runtime', 0):.1f}s "
        f"({train.get('train_samples_per_second', 0):.1f} samples/s)"
    )
    if bad_samples.count:
        print(bad_samples.summary())
    print(f"saved model, processor, README.md, metrics.json, loss_curve.png, metrics.png to {output}")


def evaluate(model_dir: str, job: JobArguments, batch_size: int = 128) -> dict[str, float]:
    """``hf-vlp evaluate DIR --dataset SPEC``: the same table for any saved model."""
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(model_dir)
    metrics = run_evaluation(model, processor, job.eval_dataset or job.dataset, job.eval_split, job, batch_size)
    print(format_metrics_table({Path(model_dir).name or "model": metrics}))
    return metrics
