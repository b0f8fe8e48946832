"""Training defaults per (architecture, task).

Each :class:`Recipe` holds the original recipe's values as documented facts (``paper``: optimizer, schedule, batch,
epochs, resolution, augmentation, as the original configs give them) and the defaults of the built-in tiny run
(``tiny_config`` and ``training_defaults``/``job_defaults``), sized so that ``hf-vlp train ARCH --task TASK`` with no
other argument finishes quickly on two CPU cores and still learns the synthetic data well above chance.
Everything here is a default: every Trainer argument given on the command line wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGED_BPE = Path(__file__).resolve().parent.parent / "data" / "bpe_simple_vocab_2k.txt.gz"


@dataclass(frozen=True)
class Recipe:
    """Model size and Trainer defaults for one architecture's task.

    ``tiny_config``: keyword arguments of the architecture's config for the built-in tiny model. ``image_size`` /
    ``context_length``: its input sizes. ``training_defaults``: ``TrainingArguments`` defaults. ``job_defaults``:
    defaults of the job's own arguments (``--dataset``, ``--eval-max-samples``, ...). ``paper``: the original
    recipe's values, for reference and the model card (not applied: they are sized for 8+ GPUs and days).
    """

    architecture: str
    tiny_config: dict[str, Any]
    image_size: int
    context_length: int
    training_defaults: dict[str, Any] = field(default_factory=dict)
    paper_notes: str = ""
    task: str = ""
    job_defaults: dict[str, Any] = field(default_factory=dict)
    paper: dict[str, Any] = field(default_factory=dict)


# Trainer settings every tiny run shares: logging and checkpoint cadence, no evaluation during training (the job
# evaluates before and after), the raw columns kept for the on-the-fly decoding, a fixed seed.
TINY_RUN_BOOKKEEPING = {
    "logging_steps": 25,
    "save_total_limit": 2,
    "eval_strategy": "no",
    "dataloader_drop_last": True,
    "remove_unused_columns": False,
    "report_to": "none",
    "seed": 0,
}


# ------------------------------------------------------------------------------------------------------ CLIP

# CLIP paper (Radford et al. 2021, §2.5 / Table 19): AdamW with decoupled weight decay 0.2, beta2 0.98, eps 1e-6,
# cosine schedule with warm-up, logit scale clipped at 100, random-square-crop as the only augmentation.
CLIP_PAPER_OPTIMIZER = {
    "adam_beta1": 0.9,
    "adam_beta2": 0.98,
    "adam_epsilon": 1e-6,
    "weight_decay": 0.2,
    "lr_scheduler_type": "cosine",
}

CLIP = Recipe(
    architecture="clip",
    task="contrastive",
    tiny_config={
        "projection_dim": 64,
        "vision_config": dict(
            hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=16
        ),
        "text_config": dict(
            hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32
        ),
    },
    image_size=64,
    context_length=32,
    training_defaults={
        **CLIP_PAPER_OPTIMIZER,
        "learning_rate": 2e-3,
        "warmup_steps": 0.1,
        "per_device_train_batch_size": 64,
        "per_device_eval_batch_size": 128,
        "max_steps": 600,
        "save_steps": 200,
        **TINY_RUN_BOOKKEEPING,
        # every parameter takes part in the contrastive loss: DDP need not search for unused ones (and warn)
        "ddp_find_unused_parameters": False,
    },
    paper_notes="AdamW(0.9, 0.98, eps 1e-6), wd 0.2, cosine, logit scale clamp ln 100, batch 32,768 (global).",
    paper={
        "optimizer": "AdamW(beta1 0.9, beta2 0.98, eps 1e-6), decoupled weight decay 0.2",
        "schedule": "cosine with warm-up",
        "global_batch_size": 32768,
        "logit_scale_max": 100,
        "augmentation": "random square crop only",
    },
)

# ----------------------------------------------------------------------------------------------------- ALBEF

# ALBEF (Li et al. 2021; salesforce/ALBEF configs/*.yaml): AdamW with weight decay 0.02 (on >= 2-D non-bias weights
# only), timm cosine schedules, 8 GPUs. Per-task values below are the yaml files'.
ALBEF_PAPER_COMMON = {
    "optimizer": "AdamW, weight decay 0.02 on >= 2-D non-bias parameters",
    "momentum": 0.995,
    "queue_size": 65536,
    "alpha": 0.4,
    "temp": 0.07,
    "gpus": 8,
    "image_normalisation": "CLIP mean/std",
}
ALBEF_PAPER = {
    "pretrain": {
        **ALBEF_PAPER_COMMON,
        "learning_rate": 1e-4,
        "schedule": "warm-up 1e-5 -> 1e-4 over the first 2,000 iterations, then cosine per epoch to 1e-5",
        "epochs": 30,
        "batch_size_per_gpu": 64,
        "global_batch_size": 512,
        "image_size": 256,
        "max_text_tokens": 25,
        "mlm_probability": 0.15,
        "alpha_warm_up": "linear over epoch 0",
        "augmentation": "RandomResizedCrop(256, scale=(0.2, 1), bicubic) + h-flip + RandAugment(2, 7)",
        "init": "ViT-B/16 from DeiT-B, text from bert-base-uncased",
    },
    "retrieval": {
        **ALBEF_PAPER_COMMON,
        "learning_rate": 1e-5,
        "epochs": "5 (COCO) / 10 (Flickr30k)",
        "batch_size_per_gpu": 32,
        "image_size": 384,
        "k_test": "256 (COCO) / 128 (Flickr30k)",
        "alpha_warm_up": "linear over epoch 0",
        "augmentation": "RandomResizedCrop(384, scale=(0.5, 1), bicubic) + h-flip + RandAugment(2, 7)",
    },
    "vqa": {
        **ALBEF_PAPER_COMMON,
        "learning_rate": 2e-5,
        "epochs": 8,
        "warmup_epochs": 4,
        "batch_size_per_gpu": 32,
        "image_size": 384,
        "k_test": 128,
        "alpha_warm_up": "linear over epoch 0",
        "answer_decoder": "6 layers initialised from the fusion layers",
        "augmentation": "RandomResizedCrop(384, scale=(0.5, 1), bicubic) + h-flip + RandAugment(2, 7)",
    },
    "nlvr2": {
        **ALBEF_PAPER_COMMON,
        "learning_rate": 2e-5,
        "epochs": 10,
        "batch_size_per_gpu": 16,
        "image_size": 384,
        "text_assignment_pretraining": "1 epoch on the 4M data, 256 px, batch 64, lr 2e-5",
        "augmentation": "RandomResizedCrop(384, scale=(0.5, 1), bicubic) + h-flip + RandAugment(2, 7)",
    },
    "snli-ve": {
        **ALBEF_PAPER_COMMON,
        "learning_rate": 2e-5,
        "epochs": 5,
        "image_size": 384,
        "alpha_warm_up": "none (warm_up: False)",
        "augmentation": "RandomResizedCrop(384, scale=(0.5, 1), bicubic) + h-flip + RandAugment(2, 7)",
    },
}

# The tiny model: 2-layer ViT on 64 px (16 patches), 4-layer text encoder fusing from layer 2, 64 wide. Vision and
# text widths are equal, as VQA's answer decoder requires. Three departures from the paper, all for learning from
# scratch in a few hundred steps (measured on synthetic-shapes, see tests/training/test_albef_tasks.py):
# - initializer_range 0.1 instead of BERT's 0.02: at 0.02 the post-norm text encoder's [CLS] is almost independent of
#   the caption (cosine >= 0.9999 between any two) and the fresh cross-attention passes ~1% of the image signal, so
#   contrastive and fused losses sit on a plateau for many hundreds of steps (the paper starts from pre-trained
#   DeiT/BERT and never meets it);
# - a queue of 2 batches (64) instead of 65,536: the features of a tiny encoder trained at a high learning rate change
#   fast, and with a long queue of stale features ITC learns to tell the current batch from the queue instead of
#   matching contents;
# - momentum 0.99 instead of 0.995, so the momentum towers follow a run of a few hundred steps.
# Dropout is off: a few hundred steps leave nothing to regularise.
ALBEF_TINY_CONFIG = {
    "embed_dim": 64,
    "queue_size": 64,
    "momentum": 0.99,
    "vision_config": dict(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=16,
        initializer_range=0.1,
    ),
    "text_config": dict(
        hidden_size=64, intermediate_size=256, num_hidden_layers=4, fusion_layer=2, num_attention_heads=4,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.1,
    ),
}

ALBEF_TRAINING_DEFAULTS = {
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "weight_decay": 0.02,
    "lr_scheduler_type": "cosine",
    "learning_rate": 1e-3,
    "warmup_steps": 0.1,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "max_steps": 300,
    "save_steps": 100,
    **TINY_RUN_BOOKKEEPING,
}


def _fusion_recipe(
    architecture: str,
    task: str,
    run: tuple[dict[str, Any], dict[str, Any]],
    notes: str,
    *,
    tiny_config: dict[str, Any],
    context_length: int,
    training_defaults: dict[str, Any],
    paper: dict[str, dict[str, Any]],
) -> Recipe:
    """An ALBEF/BLIP recipe: the tiny model at 64 px, the architecture's Trainer defaults updated by the task's ``run``
    (Trainer overrides, job defaults), the paper's values for ``task`` and a one-line summary of them (``notes``)."""
    training, job = run
    return Recipe(
        architecture=architecture,
        task=task,
        tiny_config=tiny_config,
        image_size=64,
        context_length=context_length,
        training_defaults={**training_defaults, **training},
        job_defaults=job,
        paper=paper[task],
        paper_notes=notes,
    )


def _albef(task: str, run: tuple[dict[str, Any], dict[str, Any]], notes: str) -> Recipe:
    return _fusion_recipe(
        "albef", task, run, notes, tiny_config=ALBEF_TINY_CONFIG, context_length=30,
        training_defaults=ALBEF_TRAINING_DEFAULTS, paper=ALBEF_PAPER,
    )


# The tiny runs (Trainer overrides, job defaults) of the tasks ALBEF and BLIP share. Pre-training from scratch needs the
# most steps; the fine-tuning tasks are sized for starting from a pre-trained tiny model, the papers' route
# (--from-pretrained): from scratch they first learn the text priors (question type, hypothesis wording) and need
# longer to ground.
SMALL_GALLERY_JOB = {"dataset": "synthetic-shapes:n=1000", "eval_max_samples": 100}
# every parameter of a pre-training model takes part in ITC + ITM + MLM/LM: DDP need not search for unused ones (and
# warn that it found none)
PRETRAIN_RUN = ({"learning_rate": 2e-3, "max_steps": 500, "ddp_find_unused_parameters": False}, SMALL_GALLERY_JOB)
RETRIEVAL_RUN = ({"max_steps": 200}, SMALL_GALLERY_JOB)
VQA_RUN = ({"max_steps": 300}, {"dataset": "synthetic-shapes:n=4000", "eval_max_samples": 500})
NLVR2_JOB = {"dataset": "synthetic-shapes:n=4000", "eval_max_samples": 500}

ALBEF_PRETRAIN = _albef(
    "pretrain", PRETRAIN_RUN,
    "AdamW lr 1e-4 (warm-up from 1e-5 over 2k steps, cosine to 1e-5), wd 0.02, 30 epochs, batch 512, 256 px.",
)
ALBEF_RETRIEVAL = _albef(
    "retrieval", RETRIEVAL_RUN,
    "AdamW lr 1e-5, wd 0.02, 5 (COCO) / 10 (Flickr) epochs, batch 256, 384 px, k_test 256/128.",
)
ALBEF_VQA = _albef("vqa", VQA_RUN, "AdamW lr 2e-5, wd 0.02, 8 epochs, batch 256, 384 px, k_test 128.")
ALBEF_NLVR2 = _albef(
    "nlvr2", ({"learning_rate": 5e-4, "max_steps": 500}, NLVR2_JOB),
    "AdamW lr 2e-5, wd 0.02, 10 epochs, batch 128, 384 px, after 1 epoch of text-assignment pre-training.",
)
ALBEF_SNLI_VE = _albef(
    "snli-ve", ({"max_steps": 300}, {"dataset": "synthetic-shapes:n=4000", "eval_max_samples": 600}),
    "AdamW lr 2e-5, wd 0.02, 5 epochs, 384 px, no alpha warm-up.",
)

RECIPES: dict[tuple[str, str], Recipe] = {
    (recipe.architecture, recipe.task): recipe
    for recipe in (CLIP, ALBEF_PRETRAIN, ALBEF_RETRIEVAL, ALBEF_VQA, ALBEF_NLVR2, ALBEF_SNLI_VE)
}


def device_defaults() -> dict[str, Any]:
    """``TrainingArguments`` defaults that depend on this machine, applied with every recipe's (flags given on the
    command line win): without an accelerator, no pinned memory (the DataLoader would warn that it cannot pin)."""
    import torch

    if torch.accelerator.is_available():
        return {}
    return {"dataloader_pin_memory": False}


def register_recipe(recipe: Recipe) -> Recipe:
    """Add (or replace) the recipe of ``(recipe.architecture, recipe.task)``, e.g. from an architecture's task module."""
    if not recipe.architecture or not recipe.task:
        raise ValueError("A recipe needs its architecture and task names to be registered.")
    RECIPES[(recipe.architecture, recipe.task)] = recipe
    return recipe


def get_recipe(architecture: str, task: str) -> Recipe:
    """The recipe of ``architecture``'s ``task``; a clear error lists what exists."""
    if (architecture, task) not in RECIPES:
        raise ValueError(f"No training recipe for {architecture!r} task {task!r}; available: {sorted(RECIPES)}")
    return RECIPES[(architecture, task)]


# ------------------------------------------------------------------------------------------------------ BLIP

# BLIP (Li et al. 2022; salesforce/BLIP configs/*.yaml): AdamW with weight decay 0.05 on every parameter (the
# originals exclude no bias or LayerNorm; Trainer's AdamW does), 8 GPUs; pre-training warms up linearly from 1e-6 and
# then decays by 0.9 per epoch, fine-tuning follows a per-epoch cosine from init_lr to 0. Augmentation:
# RandomResizedCrop(scale=(min_scale, 1), bicubic) + horizontal flip + RandomAugment(2, 5) (ALBEF's ops, magnitude
# 5 instead of 7), min_scale 0.2 in pre-training and 0.5 in fine-tuning.
BLIP_PAPER_COMMON = {
    "optimizer": "AdamW, weight decay 0.05 on every parameter",
    "momentum": 0.995,
    "queue_size": 57600,
    "alpha": 0.4,
    "temp": 0.07,
    "label_smoothing": 0.1,
    "gpus": 8,
    "image_normalisation": "CLIP mean/std",
}
BLIP_FINETUNE_AUGMENTATION = "RandomResizedCrop(scale=(0.5, 1), bicubic) + h-flip + RandomAugment(2, 5)"
BLIP_PAPER = {
    "pretrain": {
        **BLIP_PAPER_COMMON,
        "learning_rate": 3e-4,
        "schedule": "warm-up 1e-6 -> 3e-4 over the first 3,000 steps, then max(1e-6, 3e-4 * 0.9^epoch) per epoch",
        "epochs": 20,
        "batch_size_per_gpu": 75,
        "global_batch_size": "2880 (paper, ViT-B)",
        "image_size": 224,
        "max_text_tokens": 30,
        "alpha_warm_up": "linear over the first two epochs",
        "itm_negative_eps": 1e-4,
        "losses": "ITC (momentum distillation) + ITM (hard negatives) + LM (label smoothing 0.1)",
        "augmentation": "RandomResizedCrop(224, scale=(0.2, 1), bicubic) + h-flip + RandomAugment(2, 5)",
        "init": "ViT-B/16 from DeiT-B, text encoder and decoder from bert-base-uncased",
    },
    "retrieval": {
        **BLIP_PAPER_COMMON,
        "learning_rate": 1e-5,
        "schedule": "cosine per epoch to 0",
        "epochs": 6,
        "batch_size_per_gpu": 32,
        "image_size": 384,
        "max_text_tokens": 35,
        "k_test": "256 (COCO) / 128 (Flickr30k)",
        "negative_all_rank": "True (COCO) / False (Flickr30k)",
        "alpha_warm_up": "linear over epoch 0",
        "score": "ITM match logit + ITC cosine over the top-k",
        "augmentation": BLIP_FINETUNE_AUGMENTATION,
    },
    "caption": {
        **BLIP_PAPER_COMMON,
        "learning_rate": 1e-5,
        "schedule": "cosine per epoch to 0",
        "epochs": 5,
        "batch_size_per_gpu": 32,
        "image_size": 384,
        "max_text_tokens": 40,
        "max_words": 30,
        "prompt": "a picture of ",
        "decoding": "beam 3, max_length 20, min_length 5 (COCO); repetition penalty 1.1 (NoCaps)",
        "augmentation": BLIP_FINETUNE_AUGMENTATION,
    },
    "vqa": {
        **BLIP_PAPER_COMMON,
        "learning_rate": 2e-5,
        "schedule": "cosine per epoch to 0",
        "epochs": 10,
        "batch_size_per_gpu": 16,
        "image_size": 480,
        "k_test": 128,
        "inference": "rank over the answer list",
        "drop_path_rate": 0.1,
        "answer_decoder": "initialised from the pre-trained decoder role",
        "augmentation": BLIP_FINETUNE_AUGMENTATION,
    },
    "nlvr2": {
        **BLIP_PAPER_COMMON,
        "learning_rate": 3e-5,
        "schedule": "cosine per epoch to 0",
        "epochs": 15,
        "batch_size_per_gpu": 16,
        "image_size": 384,
        "drop_path_rate": 0.1,
        "merge_layers": "layers 6-11 concatenate the two images' cross-attention outputs (new Linear(2D, D))",
        "augmentation": BLIP_FINETUNE_AUGMENTATION + "; image order swapped with 'left'/'right' exchanged",
    },
}

# The tiny BLIP: 2-layer ViT on 64 px (16 patches) and a 2-layer MED (cross-attention in every layer, as BLIP's),
# 64 wide. The departures from the paper are ALBEF's above, for learning from scratch in a few hundred CPU steps
# (measured on synthetic-shapes, see tests/training/test_tasks_blip.py): initializer_range 0.1, a queue of two batches
# (64) instead of 57,600, momentum 0.99 instead of 0.995, no dropout. (Patches of 8 px or a third text layer cost
# 1.3-1.6x the time without better recall or accuracy in these runs.)
BLIP_TINY_CONFIG = {
    **{key: value for key, value in ALBEF_TINY_CONFIG.items() if key != "text_config"},
    "text_config": dict(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=40,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.1,
    ),
}

BLIP_TRAINING_DEFAULTS = {**ALBEF_TRAINING_DEFAULTS, "weight_decay": 0.05}

# text lengths of the original per task (tokens, [CLS]/[SEP] included)
BLIP_CONTEXT_LENGTHS = {"pretrain": 30, "retrieval": 35, "caption": 40, "vqa": 35, "nlvr2": 35}


def _blip(task: str, run: tuple[dict[str, Any], dict[str, Any]], notes: str) -> Recipe:
    return _fusion_recipe(
        "blip", task, run, notes, tiny_config=BLIP_TINY_CONFIG, context_length=BLIP_CONTEXT_LENGTHS[task],
        training_defaults=BLIP_TRAINING_DEFAULTS, paper=BLIP_PAPER,
    )


# Captioning is sized to learn from scratch; from scratch VQA first learns the answer priors of each question type and
# NLVR2 stays near chance for hundreds of steps (see PRETRAIN_RUN above for the others).
BLIP_PRETRAIN = _blip(
    "pretrain", PRETRAIN_RUN,
    "AdamW lr 3e-4 (warm-up from 1e-6 over 3k steps, x0.9 per epoch), wd 0.05, 20 epochs, batch 2880, 224 px.",
)
BLIP_RETRIEVAL = _blip(
    "retrieval", RETRIEVAL_RUN, "AdamW lr 1e-5, wd 0.05, cosine, 6 epochs, batch 256, 384 px, k_test 256/128."
)
BLIP_CAPTION = _blip(
    "caption", ({"max_steps": 500}, {"dataset": "synthetic-shapes:n=2000", "eval_max_samples": 200}),
    "AdamW lr 1e-5, wd 0.05, cosine, 5 epochs, batch 256, 384 px, prompt 'a picture of ', beam 3.",
)
BLIP_VQA = _blip(
    "vqa", VQA_RUN,
    "AdamW lr 2e-5, wd 0.05, cosine, 10 epochs, batch 128, 480 px, rank over the answer list (k_test 128).",
)
BLIP_NLVR2 = _blip(
    "nlvr2", ({"learning_rate": 5e-4, "max_steps": 600}, NLVR2_JOB),
    "AdamW lr 3e-5, wd 0.05, cosine, 15 epochs, batch 128, 384 px.",
)

RECIPES.update(
    {
        (recipe.architecture, recipe.task): recipe
        for recipe in (BLIP_PRETRAIN, BLIP_RETRIEVAL, BLIP_CAPTION, BLIP_VQA, BLIP_NLVR2)
    }
)
