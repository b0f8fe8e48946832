"""CLIP's one task: contrastive image-text training, evaluated by zero-shot accuracy and retrieval recall."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoProcessor, TrainerCallback

from ...evaluation.report import dataset_class_names, evaluate_dual_encoder
from ...models.clip import VlpClipConfig, VlpClipImageProcessor, VlpClipModel, VlpClipProcessor
from ...models.clip.tokenization_clip import load_clip_tokenizer
from ...synthetic import SYNTHETIC_CLASS_NAMES, ZERO_SHOT_TEMPLATES
from ..callbacks import CollatorEpochCallback, LogitScaleClampCallback
from ..collators import ImageTextCollator
from ..data import ImageTransform, resolve_dataset_spec
from ..job import JobArguments
from ..recipes import PACKAGED_BPE, get_recipe
from ..transforms import clip_train_transform
from .base import TrainingTask, register_task


def pad_like_tokenizer(text_config: Any, processor: VlpClipProcessor) -> None:
    """Make the text config and the processor pad with the tokenizer's pad token (CLIPTokenizer's: end-of-text), so
    that the Trainer, which aligns ``text_config.pad_token_id`` with the tokenizer's, has nothing to rewrite.

    Converted models pad with 0 as ``clip.tokenize`` does; padding with end-of-text instead changes no output: the
    text tower is causal and pools the first end-of-text token, so nothing after it is seen (and the attention mask
    is unchanged)."""
    pad_id = getattr(getattr(processor, "tokenizer", None), "pad_token_id", None)
    if pad_id is None or not hasattr(processor, "pad_token_id"):
        return  # a tokenizer without a pad token: the Trainer aligns nothing
    text_config.pad_token_id = pad_id
    processor.pad_token_id = pad_id


class ClipContrastiveTask(TrainingTask):
    """CLIP contrastive pre-training / fine-tuning (``hf-vlp train clip``).

    A dual encoder with a CLIP BPE tokenizer: :meth:`build` reads ``config_class``, ``processor_class`` and
    ``image_processor_class`` and calls :meth:`fit_config` and :meth:`align_padding`, so a CLIP-like architecture
    (CoCa) subclasses this task and overrides only those."""

    architecture = "clip"
    name = "contrastive"
    recipe = get_recipe("clip", "contrastive")
    model_classes = (VlpClipModel,)
    synthetic_task = "caption"
    config_class: type = VlpClipConfig
    processor_class: type = VlpClipProcessor
    image_processor_class: type = VlpClipImageProcessor

    def build(self, job: JobArguments) -> tuple[nn.Module, Any]:
        """A converted/trained model (``--from-pretrained``), a released size (``--preset``) or the tiny recipe."""
        if job.vision_init is not None:
            raise ValueError(f"--vision-init/--text-init initialise ALBEF/BLIP towers; {self.architecture} starts from "
                             "--preset or --from-pretrained.")
        if job.from_pretrained:
            model, processor = self.load_pretrained(job.from_pretrained)
        else:
            tokenizer = load_clip_tokenizer(job.tokenizer or PACKAGED_BPE)
            config_class = self.config_class
            config = config_class.from_preset(job.preset) if job.preset else config_class(**self.recipe.tiny_config)
            if job.image_size:
                config.vision_config.image_size = job.image_size
            self.fit_config(config, tokenizer)
            model = self.model_classes[0](config)
            size, text = config.vision_config.image_size, config.text_config
            processor = self.processor_class(
                self.image_processor_class(size=size, crop_size=size),
                tokenizer,
                context_length=text.max_position_embeddings,
                pad_token_id=text.pad_token_id,
            )
        self.align_padding(model, processor)
        return model, processor

    def load_pretrained(self, directory: str) -> tuple[nn.Module, Any]:
        """The model and processor of a saved directory (``--from-pretrained``)."""
        return AutoModel.from_pretrained(directory, dtype=torch.float32), AutoProcessor.from_pretrained(directory)

    def fit_config(self, config: Any, tokenizer: Any) -> None:
        """Size a new model's config to the tokenizer: vocabulary, start/end-of-text ids and (see
        :func:`pad_like_tokenizer`) the tokenizer's pad token."""
        text = config.text_config
        text.vocab_size, text.eos_token_id, text.bos_token_id = len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id
        if tokenizer.pad_token_id is not None:
            text.pad_token_id = tokenizer.pad_token_id

    def align_padding(self, model: nn.Module, processor: Any) -> None:
        """Make the model, the processor and its tokenizer agree on the pad id before the Trainer aligns the model's
        special tokens with the tokenizer's (CLIP: the tokenizer's pad token wins, :func:`pad_like_tokenizer`)."""
        pad_like_tokenizer(model.config.text_config, processor)

    def train_transform(self, image_size: int) -> ImageTransform:
        """CLIP/open_clip's RandomResizedCrop, ``scale=(0.9, 1.0)``."""
        return clip_train_transform(image_size)

    def callbacks(self, model: nn.Module, collator: ImageTextCollator) -> list[TrainerCallback]:
        return [LogitScaleClampCallback(max_value=model.config.logit_scale_max), CollatorEpochCallback(collator)]

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        """Zero-shot top-1/top-5 (with class labels; the synthetic class names and templates for the built-in
        dataset) and image<->text recall@1/5/10 over the first ``eval_max_samples`` rows."""
        dataset = self.load_dataset(spec, split, job, max_samples=job.eval_max_samples)
        synthetic = resolve_dataset_spec(spec).kind == "synthetic"
        names = dataset_class_names(dataset)
        if names is None and synthetic:
            names = list(SYNTHETIC_CLASS_NAMES)
        return evaluate_dual_encoder(
            model,
            processor,
            dataset,
            class_names=names,
            templates=list(ZERO_SHOT_TEMPLATES) if synthetic else None,
            max_samples=job.eval_max_samples,
            batch_size=batch_size,
        )


register_task(ClipContrastiveTask(), default=True)
