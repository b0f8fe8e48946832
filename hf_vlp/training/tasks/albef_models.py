"""Building ALBEF models and processors for ``hf-vlp train albef``: the tiny recipe model, a model whose towers
start from transformers ViT/DeiT + BERT checkpoints, or a task model fed by a saved (pre-trained) ALBEF.

Every task model can start from a pre-trained ALBEF, as the original fine-tuning scripts do: retrieval loads the
pre-training checkpoint directly (MLM heads ignored), NLVR2 and SNLI-VE use their ``from_albef_pretrained``, and
VQA gets its answer decoder from the fusion layers (``VlpAlbefForQuestionAnswering.from_pretraining``, ``VQA.py``'s rule).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ...models.albef import (
    VlpAlbefConfig,
    VlpAlbefForMaskedLM,
    VlpAlbefForQuestionAnswering,
    VlpAlbefImageProcessor,
    VlpAlbefProcessor,
)
from ..job import JobArguments
from ..recipes import Recipe
from .base import saved_model_class
from .fusion_models import BERT_TEXT_FIELDS, rebuild_missing_momentum, shared_settings, tiny_config, tower_sizes

logger = logging.getLogger(__name__)

# BERT config fields that size ALBEF's text tower and fusion layers: BLIP's and the token types
TEXT_FIELDS = (*BERT_TEXT_FIELDS, "type_vocab_size")

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


def tiny_albef_config(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, job: JobArguments) -> VlpAlbefConfig:
    """The recipe's tiny ALBEF sized to the tokenizer (vocabulary, special ids) and ``--image-size``."""
    return tiny_config(VlpAlbefConfig, recipe, tokenizer, job, _token_ids(tokenizer))


def tower_albef_config(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, job: JobArguments) -> VlpAlbefConfig:
    """An ALBEF whose towers have the sizes of the ``--vision-init`` ViT/DeiT and the ``--text-init`` BERT: the
    upper half of BERT's layers become the fusion layers (6 of 12, as ALBEF-base); the image size is
    ``--image-size`` or the ViT's (positions are interpolated when they differ)."""
    vision, text, bert = tower_sizes(job, tokenizer, TEXT_FIELDS)
    text.update(fusion_layer=int(bert["num_hidden_layers"]) // 2, **_token_ids(tokenizer))
    return VlpAlbefConfig(vision_config=vision, text_config=text, **shared_settings(recipe, job))


def load_albef_model(cls: type, directory: str) -> nn.Module:
    """``cls.from_pretrained(directory)``; momentum towers the checkpoint lacks (a ``VlpAlbefForMaskedLM`` save)
    start as copies of the loaded online towers instead of random weights."""
    model, info = cls.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    return rebuild_missing_momentum(model, info["missing_keys"])


def question_answering_from_saved(directory: str) -> VlpAlbefForQuestionAnswering:
    """A VQA model from a saved VQA model, or from a saved pre-trained ALBEF (any save holding ``albef.*``)."""
    if saved_model_class(directory) == VlpAlbefForQuestionAnswering.__name__:
        return load_albef_model(VlpAlbefForQuestionAnswering, directory)
    source, info = VlpAlbefForMaskedLM.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    if any(key.startswith("mlm_head.") for key in info["missing_keys"]):
        logger.warning("%s has no MLM head; the VQA answer head starts from its initialisation.", directory)
        source.mlm_head = None
    return VlpAlbefForQuestionAnswering.from_pretraining(source)
