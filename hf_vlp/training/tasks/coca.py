"""CoCa's tasks for ``hf-vlp train coca --task pretrain|caption``.

Both train :class:`~hf_vlp.models.coca.VlpCocaForConditionalGeneration` on image-text pairs with CoCa's joint loss,
``contrastive_loss_weight x contrastive + caption_loss_weight x captioning``; the task writes its recipe's weights into
the model's config: pre-training the paper's 1 and 2, captioning open_clip's MSCOCO fine-tune, 0 and 1 (the captioning
loss alone). The model is built as CLIP's (the tiny recipe, ``--preset coca_ViT-B-32|coca_ViT-L-14|paper_base`` from
scratch, or ``--from-pretrained DIR``, a trained or converted captioning CoCa) with a CLIP BPE tokenizer, trained with
CLIP's augmentation and logit-scale clamp (at ``config.logit_scale_max``), and logs each weighted term
(``loss_contrastive``, ``loss_caption``) next to the total.

Evaluation: pre-training reports zero-shot top-1/top-5 (class prompts through the text tower, as CLIP's task),
image<->text recall and BLEU-1..4 + CIDEr of the captions the model's generation config decodes (open_clip's
``generate`` defaults unless changed: 2 beams, at most 30 tokens, at least 5) against every reference caption of the
image; captioning reports the caption metrics. A saved dual encoder (``VlpCocaModel``) is evaluated without captions.

The recipes (the paper's and open_clip's values, the tiny model and run) are registered from here with
:func:`~hf_vlp.training.recipes.register_recipe`.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase, TrainerCallback

from ...evaluation.captioning import INSTALL_HINT, caption_scorers_available, evaluate_captioner
from ...models.coca import (
    VlpCocaConfig,
    VlpCocaForConditionalGeneration,
    VlpCocaImageProcessor,
    VlpCocaModel,
    VlpCocaProcessor,
)
from ..callbacks import LossTermsCallback
from ..collators import ImageTextCollator
from ..job import JobArguments
from ..recipes import CLIP_PAPER_OPTIMIZER, TINY_RUN_BOOKKEEPING, Recipe, register_recipe
from .base import register_task, saved_model_class
from .blip import caption_references
from .clip import ClipContrastiveTask

# ---------------------------------------------------------------------------------------------------- recipes

# CoCa (Yu et al. 2022, §4.1): Adafactor(beta1 0.9, beta2 0.999) with decoupled weight decay 0.01, learning rate warmed
# up over the first 2% of the steps to 8e-4 then decayed linearly, 500k steps of 65,536 pairs, 288 px images at patch
# 18, loss 1.0 x contrastive + 2.0 x captioning. open_clip trains its released CoCa models with its CLIP trainer
# (AdamW) and CoCaLoss at the same weights; its README's captioning fine-tune on MSCOCO drops the contrastive term.
COCA_PAPER = {
    "pretrain": {
        "optimizer": "Adafactor(beta1 0.9, beta2 0.999), decoupled weight decay 0.01",
        "learning_rate": 8e-4,
        "schedule": "linear warm-up over the first 2% of the steps, then linear decay",
        "steps": 500000,
        "global_batch_size": 65536,
        "image_size": "288 px at patch 18 (256 image tokens); the largest model one more epoch at 576 px",
        "losses": "1.0 x contrastive (learnable temperature) + 2.0 x captioning (contrastive_loss_weight, "
                  "caption_loss_weight)",
        "data": "JFT-3B (label names as text) and ALIGN (1.8B alt-texts), from scratch",
        "open_clip": "coca_ViT-B-32 / coca_ViT-L-14 on LAION-2B with AdamW and CoCaLoss (caption weight 2, "
                     "contrastive weight 1)",
    },
    "caption": {
        "recipe": "open_clip README, 'Fine Tuning CoCa' (coca_ViT-L-14 on MSCOCO)",
        "optimizer": "AdamW, weight decay 0.1",
        "learning_rate": 1e-5,
        "warmup_steps": 1000,
        "epochs": 1,
        "global_batch_size": 128,
        "losses": "0 x contrastive + 1 x captioning (--coca-contrastive-loss-weight 0 --coca-caption-loss-weight 1)",
        "decoding": "open_clip's generate: beam search (6 beams in 3 groups), max 30 tokens, min 5",
    },
}

# The tiny CoCa: 64 wide, 2 layers in each of the three towers, 8-px patches of 64-px images (64 patches), a pooler of 1
# contrastive + 8 decoder queries; vocabulary and special ids come from the tokenizer (the packaged 2k BPE) when the
# model is built. As the other tiny models, initializer_range 0.1 instead of 0.02 (the ViT, the pooler and the
# multimodal decoder; the text tower keeps OpenAI's initialisation) and 8-px patches, for learning from scratch in a few
# hundred CPU steps. Measured on synthetic-shapes (batch 32, the captioning loss alone): with 0.02 and 16-px patches the
# captioner stays at the caption prior of the text (held-out loss 0.61 after 300 steps) because the fresh
# cross-attention passes almost none of the image; 0.1 leaves that plateau after 150-250 steps (0.38-0.40 at step 300)
# and 8-px patches too (0.37), both together after ~100 (0.33), for 1.3x the step time of 16-px patches. The default
# runs on two CPU cores (400 steps of 64, ~90 s each): pre-training ends at zero-shot top-1 43% (chance 4.2%), mean
# recall 76% and BLEU-4 0.49 / CIDEr 3.5; captioning from scratch at BLEU-4 0.29 / CIDEr 2.0, and from that pre-trained
# model at 0.62 / 4.4.
COCA_TINY_CONFIG = {
    "projection_dim": 64,
    "vision_config": dict(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=8,
        pooler_num_queries=9, pooler_num_attention_heads=4, initializer_range=0.1,
    ),
    "text_config": dict(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
        initializer_range=0.1,
    ),
    "decoder_config": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
}

COCA_TRAINING_DEFAULTS = {
    **CLIP_PAPER_OPTIMIZER,
    "learning_rate": 2e-3,
    "warmup_steps": 0.1,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 128,
    "max_steps": 400,
    "save_steps": 200,
    **TINY_RUN_BOOKKEEPING,
}


def _coca(task: str, run: tuple[dict[str, Any], dict[str, Any]], notes: str, weights: tuple[float, float]) -> Recipe:
    """A CoCa recipe; ``weights`` (contrastive, caption) are written into the model's config by the task."""
    training, job = run
    return Recipe(
        architecture="coca",
        task=task,
        tiny_config=COCA_TINY_CONFIG,
        image_size=COCA_TINY_CONFIG["vision_config"]["image_size"],
        context_length=COCA_TINY_CONFIG["text_config"]["max_position_embeddings"],
        training_defaults={**COCA_TRAINING_DEFAULTS, **training},
        job_defaults=job,
        paper=COCA_PAPER[task],
        paper_notes=notes,
        task_options={"contrastive_loss_weight": weights[0], "caption_loss_weight": weights[1]},
    )


COCA_PRETRAIN = _coca(
    "pretrain",
    # every parameter takes part in one of the two losses: DDP need not search for unused ones (and warn)
    ({"ddp_find_unused_parameters": False}, {"dataset": "synthetic-shapes:n=4000", "eval_max_samples": 200}),
    "Adafactor(0.9, 0.999) lr 8e-4 (2% warm-up, linear decay), wd 0.01, 500k steps, batch 65,536, 288 px, "
    "1.0 x contrastive + 2.0 x captioning.",
    (1.0, 2.0),
)
# without the contrastive term the projections, the temperature and the text class token get no gradient: DDP must
# look for unused parameters (the Trainer's default; it then warns that it found none, as the similarity logits the
# model still returns reach them)
COCA_CAPTION = _coca(
    "caption",
    ({}, {"dataset": "synthetic-shapes:n=4000", "eval_max_samples": 200}),
    "open_clip's MSCOCO fine-tune: AdamW lr 1e-5, 1,000 warm-up steps, wd 0.1, 1 epoch, batch 128, captioning loss "
    "only (contrastive weight 0, caption weight 1).",
    (0.0, 1.0),
)

for _recipe in (COCA_PRETRAIN, COCA_CAPTION):
    register_recipe(_recipe)

# ------------------------------------------------------------------------------------------------------ tasks

# the model output's weighted loss terms (open_clip's names) -> the names LossTermsCallback logs
LOSS_TERM_NAMES = {"contrastive_loss": "loss_contrastive", "caption_loss": "loss_caption"}


class CocaLossTermsCallback(LossTermsCallback):
    """:class:`~hf_vlp.training.callbacks.LossTermsCallback` for CoCa's outputs, whose terms are named as open_clip's
    ``CoCaLoss`` returns them (``contrastive_loss``, ``caption_loss``, each already weighted): logged as
    ``loss_contrastive`` and ``loss_caption``, which add up to the total."""

    def _record(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        terms = {logged: getattr(outputs, name, None) for name, logged in LOSS_TERM_NAMES.items()}
        super()._record(module, inputs, {name: value for name, value in terms.items() if value is not None})


class CocaPretrainTask(ClipContrastiveTask):
    """CoCa pre-training (``hf-vlp train coca``): contrastive + captioning, evaluated by zero-shot accuracy, retrieval
    recall and caption BLEU-4 / CIDEr."""

    architecture = "coca"
    name = "pretrain"
    recipe = COCA_PRETRAIN
    model_classes = (VlpCocaForConditionalGeneration, VlpCocaModel)
    optional_columns = ("captions", "image_id")
    config_class = VlpCocaConfig
    processor_class = VlpCocaProcessor
    image_processor_class = VlpCocaImageProcessor
    evaluates_dual_encoder = True  # zero-shot and retrieval next to the caption metrics

    def build(self, job: JobArguments) -> tuple[nn.Module, Any]:
        """CLIP's build for the captioning CoCa, with the recipe's loss weights written into the config."""
        model, processor = super().build(job)
        for name in ("contrastive_loss_weight", "caption_loss_weight"):
            setattr(model.config, name, float(self.recipe.task_options[name]))
        return model, processor

    def load_pretrained(self, directory: str) -> tuple[nn.Module, Any]:
        """A saved captioning CoCa; a dual encoder (no decoder weights) is refused by name."""
        saved = saved_model_class(directory)
        trained = self.model_classes[0].__name__
        if saved != trained:
            raise ValueError(
                f"{directory} holds a {saved}; coca --task {self.name} trains a {trained} (with the captioning "
                "decoder): start from a directory written by `hf-vlp train coca` or converted with the decoder."
            )
        return self.load_saved(directory)

    def fit_config(self, config: VlpCocaConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        """Vocabulary (both text decoders predict the tokenizer's ids) and start/end-of-text ids of the tokenizer; the
        pad id stays the config's (0, open_clip's ``pad_id``, see :meth:`align_padding`)."""
        text = config.text_config
        text.vocab_size = config.decoder_config.vocab_size = len(tokenizer)
        text.bos_token_id, text.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id

    def align_padding(self, model: nn.Module, processor: Any) -> None:
        """The processor and its tokenizer pad with the model's pad id (0, open_clip's ``pad_id``; see
        :meth:`~hf_vlp.models.coca.processing_coca.VlpCocaProcessor.pad_with`), so the Trainer has nothing to
        rewrite."""
        processor.pad_with(model.config.text_config.pad_token_id)

    def callbacks(self, model: nn.Module, collator: ImageTextCollator) -> list[TrainerCallback]:
        return [*super().callbacks(model, collator), CocaLossTermsCallback()]

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        """Zero-shot and retrieval as CLIP's task (pre-training), then BLEU-1..4 and CIDEr (COCO's scorers) of one
        caption per image of the first ``--eval-max-samples`` rows, decoded with the model's generation config,
        against all of the image's reference captions. Pre-training without ``pycocoevalcap`` (the ``captioning``
        extra) skips the caption metrics and says so; the captioning task needs them."""
        metrics: dict[str, float] = {}
        if self.evaluates_dual_encoder:
            metrics.update(super().evaluate(model, processor, job, spec, split, batch_size))
            if not caption_scorers_available():  # pre-training still reports zero-shot and recall without them
                print(f"\ncaption metrics (BLEU, CIDEr) skipped: the COCO caption scorers are not installed; "
                      f"{INSTALL_HINT}", flush=True)
                return metrics
        if callable(getattr(model, "caption", None)):
            images, references = caption_references(self.usable_rows(spec, split, job))
            metrics.update(evaluate_captioner(model, processor, images, references, batch_size=batch_size))
        return metrics


class CocaCaptionTask(CocaPretrainTask):
    """CoCa captioning fine-tuning (``hf-vlp train coca --task caption``): the captioning loss alone (contrastive
    weight 0, caption weight 1, as open_clip's MSCOCO fine-tune), evaluated by BLEU-4 and CIDEr."""

    name = "caption"
    recipe = COCA_CAPTION
    model_classes = (VlpCocaForConditionalGeneration,)
    evaluates_dual_encoder = False


register_task(CocaPretrainTask(), default=True)
register_task(CocaCaptionTask())
