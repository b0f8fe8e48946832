"""Per-architecture training defaults.

``paper`` values follow the original recipes; ``main_job`` values size the built-in tiny run (``hf-vlp train clip``
with no arguments) so that it finishes in a few minutes on two CPU cores and still learns the synthetic data.
Everything here is a default: every Trainer argument given on the command line wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGED_BPE = Path(__file__).resolve().parent.parent / "data" / "bpe_simple_vocab_2k.txt.gz"


@dataclass(frozen=True)
class Recipe:
    """Model size and Trainer defaults for one architecture."""

    architecture: str
    tiny_config: dict[str, Any]
    image_size: int
    context_length: int
    training_defaults: dict[str, Any] = field(default_factory=dict)
    paper_notes: str = ""


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
        "logging_steps": 25,
        "save_steps": 200,
        "save_total_limit": 2,
        "eval_strategy": "no",
        "dataloader_drop_last": True,
        "remove_unused_columns": False,
        "report_to": "none",
        "seed": 0,
    },
    paper_notes="AdamW(0.9, 0.98, eps 1e-6), wd 0.2, cosine, logit scale clamp ln 100, batch 32,768 (global).",
)

RECIPES: dict[str, Recipe] = {"clip": CLIP}


def get_recipe(architecture: str) -> Recipe:
    if architecture not in RECIPES:
        raise ValueError(f"No training recipe for {architecture!r}; available: {sorted(RECIPES)}")
    return RECIPES[architecture]
