"""What building an ALBEF or a BLIP for ``hf-vlp train`` has in common: the tokenizer choice, the tiny recipe config,
a config sized to ``--vision-init``/``--text-init`` towers, the processor saved next to a model, and momentum towers
rebuilt when a saved directory lacks them. The architecture modules (:mod:`.albef_models`, :mod:`.blip_models`) add
their special tokens and task-specific loading rules.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch import nn
from transformers import AutoProcessor, PretrainedConfig, PreTrainedTokenizerBase

from ..job import JobArguments
from ..recipes import Recipe
from ..tokenizers import load_bert_tokenizer, synthetic_wordpiece_tokenizer

logger = logging.getLogger(__name__)

# ViT/DeiT config fields that size ALBEF's and BLIP's vision towers (tower_init checks the same ones)
VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                 "num_channels", "hidden_act")  # fmt: skip
# BERT config fields that size the text tower of both (ALBEF adds ``type_vocab_size``; tower_init checks the same ones)
BERT_TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "max_position_embeddings", "hidden_act", "layer_norm_eps", "hidden_dropout_prob",
                    "attention_probs_dropout_prob")  # fmt: skip


def bert_tokenizer(job: JobArguments) -> PreTrainedTokenizerBase:
    """``--tokenizer``, else the ``--text-init`` BERT directory's tokenizer, else the synthetic WordPiece one."""
    if job.tokenizer:
        return load_bert_tokenizer(job.tokenizer)
    if job.text_init:
        return load_bert_tokenizer(job.text_init)
    return synthetic_wordpiece_tokenizer()


def shared_settings(recipe: Recipe, job: JobArguments) -> dict[str, Any]:
    """The recipe's non-tower settings (embedding width, queue, momentum, ...) with ``--queue-size``."""
    settings = {key: value for key, value in recipe.tiny_config.items() if not key.endswith("_config")}
    if job.queue_size is not None:
        settings["queue_size"] = job.queue_size
    return settings


def tiny_config(
    config_class: type[PretrainedConfig],
    recipe: Recipe,
    tokenizer: PreTrainedTokenizerBase,
    job: JobArguments,
    special_token_ids: dict[str, int | None],
) -> PretrainedConfig:
    """The recipe's tiny model sized to the tokenizer (vocabulary, ``special_token_ids``) and ``--image-size``."""
    vision = dict(recipe.tiny_config["vision_config"])
    text = dict(recipe.tiny_config["text_config"])
    if job.image_size:
        vision["image_size"] = job.image_size
    text.update(vocab_size=len(tokenizer), **special_token_ids)
    text["max_position_embeddings"] = max(text.get("max_position_embeddings", 0), recipe.context_length)
    return config_class(vision_config=vision, text_config=text, **shared_settings(recipe, job))


def read_tower_config(directory: str, flag: str) -> dict[str, Any]:
    """The ``config.json`` of a ``--vision-init``/``--text-init`` directory (``flag`` names it in errors)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{flag} {directory!r} has no config.json; pass a transformers save_pretrained directory."
        )
    return json.loads(path.read_text())


def tower_sizes(
    job: JobArguments, tokenizer: PreTrainedTokenizerBase, text_fields: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The vision and text config entries of towers sized like the ``--vision-init`` ViT/DeiT and the ``--text-init``
    BERT (``text_fields`` of BERT's config), and BERT's config itself. The image size is ``--image-size`` or the ViT's
    (positions are interpolated when they differ); the vocabulary covers BERT's and the tokenizer's."""
    vit = read_tower_config(job.vision_init, "--vision-init")
    bert = read_tower_config(job.text_init, "--text-init")
    if vit.get("hidden_size") is None or bert.get("hidden_size") is None:
        raise ValueError("--vision-init / --text-init configs lack hidden_size; pass ViT/DeiT and BERT directories.")
    vision = {key: vit[key] for key in VISION_FIELDS if key in vit}
    vision["image_size"] = job.image_size or vit.get("image_size", 224)
    text = {key: bert[key] for key in text_fields if key in bert}
    text["vocab_size"] = max(int(bert.get("vocab_size", 0)), len(tokenizer))
    return vision, text, bert


def load_processor(directory: str) -> Any:
    """The processor saved next to a model (``hf-vlp train`` and the converters write one)."""
    try:
        return AutoProcessor.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"{directory} holds no processor files ({error}); save the processor with the model "
            "(processor.save_pretrained(directory))."
        ) from error


def rebuild_missing_momentum(model: nn.Module, missing_keys: list[str]) -> nn.Module:
    """Momentum towers the loaded checkpoint lacks start as copies of the loaded online towers, not random weights."""
    if hasattr(model, "init_momentum") and any(key.startswith("momentum_") for key in missing_keys):
        model.init_momentum()
    return model


__all__ = [
    "VISION_FIELDS",
    "bert_tokenizer",
    "load_processor",
    "read_tower_config",
    "rebuild_missing_momentum",
    "shared_settings",
    "tiny_config",
    "tower_sizes",
]
