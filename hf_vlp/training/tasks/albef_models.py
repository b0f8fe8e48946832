"""Building ALBEF models and processors for ``hf-vlp train albef``: the tiny recipe model, a model whose towers
start from transformers ViT/DeiT + BERT checkpoints, or a task model fed by a saved (pre-trained) ALBEF.

Every task model can start from a pre-trained ALBEF, as the original fine-tuning scripts do: retrieval loads the
pre-training checkpoint directly (MLM heads ignored), NLVR2 and SNLI-VE use their ``from_albef_pretrained``, and
VQA gets its answer decoder from the fusion layers (``VlpAlbefForQuestionAnswering.from_pretraining``, ``VQA.py``'s rule).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoProcessor, PreTrainedTokenizerBase

from ...models.albef import (
    VlpAlbefConfig,
    VlpAlbefForMaskedLM,
    VlpAlbefForQuestionAnswering,
    VlpAlbefImageProcessor,
    VlpAlbefProcessor,
)
from ..job import JobArguments
from ..recipes import Recipe
from ..tokenizers import load_bert_tokenizer, synthetic_wordpiece_tokenizer
from .base import saved_model_class

logger = logging.getLogger(__name__)

# ViT/DeiT and BERT config fields that size ALBEF's towers (tower_init checks the same ones)
VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                 "num_channels", "hidden_act")  # fmt: skip
TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "max_position_embeddings", "type_vocab_size", "hidden_act", "layer_norm_eps", "hidden_dropout_prob",
               "attention_probs_dropout_prob")  # fmt: skip


def albef_tokenizer(job: JobArguments) -> PreTrainedTokenizerBase:
    """``--tokenizer``, else the ``--text-init`` BERT directory's tokenizer, else the synthetic WordPiece one."""
    if job.tokenizer:
        return load_bert_tokenizer(job.tokenizer)
    if job.text_init:
        return load_bert_tokenizer(job.text_init)
    return synthetic_wordpiece_tokenizer()


def albef_processor(
    tokenizer: PreTrainedTokenizerBase, image_size: int, max_length: int, answer_list: list[str] | None = None
) -> VlpAlbefProcessor:
    """ALBEF's processor at ``image_size`` px with ``max_length`` text tokens (and VQA candidates)."""
    return VlpAlbefProcessor(
        VlpAlbefImageProcessor(size=image_size), tokenizer, max_length=max_length, answer_list=answer_list
    )


def _token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "mask_token_id": tokenizer.mask_token_id,
    }


def _shared_settings(recipe: Recipe, job: JobArguments) -> dict[str, Any]:
    """The recipe's non-tower settings (embedding width, queue, momentum, ...) with ``--queue-size``."""
    settings = {key: value for key, value in recipe.tiny_config.items() if not key.endswith("_config")}
    if job.queue_size is not None:
        settings["queue_size"] = job.queue_size
    return settings


def tiny_albef_config(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, job: JobArguments) -> VlpAlbefConfig:
    """The recipe's tiny ALBEF sized to the tokenizer (vocabulary, special ids) and ``--image-size``."""
    vision = dict(recipe.tiny_config["vision_config"])
    text = dict(recipe.tiny_config["text_config"])
    if job.image_size:
        vision["image_size"] = job.image_size
    text.update(vocab_size=len(tokenizer), **_token_ids(tokenizer))
    text["max_position_embeddings"] = max(text.get("max_position_embeddings", 0), recipe.context_length)
    return VlpAlbefConfig(vision_config=vision, text_config=text, **_shared_settings(recipe, job))


def _read_config(directory: str, what: str) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{what} {directory!r} has no config.json; pass a transformers save_pretrained directory.")
    return json.loads(path.read_text())


def tower_albef_config(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, job: JobArguments) -> VlpAlbefConfig:
    """An ALBEF whose towers have the sizes of the ``--vision-init`` ViT/DeiT and the ``--text-init`` BERT: the
    upper half of BERT's layers become the fusion layers (6 of 12, as ALBEF-base); the image size is
    ``--image-size`` or the ViT's (positions are interpolated when they differ)."""
    vit = _read_config(job.vision_init, "--vision-init")
    bert = _read_config(job.text_init, "--text-init")
    vision = {key: vit[key] for key in VISION_FIELDS if key in vit}
    vision["image_size"] = job.image_size or vit.get("image_size", 224)
    text = {key: bert[key] for key in TEXT_FIELDS if key in bert}
    text.update(
        vocab_size=max(int(bert.get("vocab_size", 0)), len(tokenizer)),
        fusion_layer=int(bert["num_hidden_layers"]) // 2,
        **_token_ids(tokenizer),
    )
    if vision.get("hidden_size") is None or text.get("hidden_size") is None:
        raise ValueError("--vision-init / --text-init configs lack hidden_size; pass ViT/DeiT and BERT directories.")
    return VlpAlbefConfig(vision_config=vision, text_config=text, **_shared_settings(recipe, job))


def load_processor(directory: str) -> Any:
    """The processor saved next to a model (every hf_vlp save writes one)."""
    try:
        return AutoProcessor.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"{directory} holds no processor files ({error}); save the processor with the model "
            "(processor.save_pretrained(directory))."
        ) from error


def load_albef_model(cls: type, directory: str) -> nn.Module:
    """``cls.from_pretrained(directory)``; momentum towers the checkpoint lacks (a ``VlpAlbefForMaskedLM`` save)
    start as copies of the loaded online towers instead of random weights."""
    model, info = cls.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    if hasattr(model, "init_momentum") and any(key.startswith("momentum_") for key in info["missing_keys"]):
        model.init_momentum()
    return model


def question_answering_from_saved(directory: str) -> VlpAlbefForQuestionAnswering:
    """A VQA model from a saved VQA model, or from a saved pre-trained ALBEF (any save holding ``albef.*``)."""
    if saved_model_class(directory) == VlpAlbefForQuestionAnswering.__name__:
        return load_albef_model(VlpAlbefForQuestionAnswering, directory)
    source, info = VlpAlbefForMaskedLM.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    if any(key.startswith("mlm_head.") for key in info["missing_keys"]):
        logger.warning("%s has no MLM head; the VQA answer head starts from its initialisation.", directory)
        source.mlm_head = None
    return VlpAlbefForQuestionAnswering.from_pretraining(source)
