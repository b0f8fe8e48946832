"""Building BLIP models and processors for ``hf-vlp train blip``: the tiny recipe model, a model whose towers start
from transformers ViT/DeiT + BERT checkpoints, or a task model fed by a saved BLIP directory.

One pre-trained BLIP feeds every task, as the original's ``load_checkpoint`` does: retrieval and captioning load the
pre-training directory directly (the weights a head does not use are ignored), VQA starts through
``VlpBlipForQuestionAnswering.from_pretraining`` (answer decoder from the pre-trained decoder role) and NLVR2 through
``VlpBlipForVisualReasoning.from_blip_pretrained`` (each cross-attention duplicated per image). A directory that lacks
weights the task needs (a captioner has no bidirectional encoder, an encoder no decoder) is refused by name.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ...models.blip import (
    VlpBlipConfig,
    VlpBlipForQuestionAnswering,
    VlpBlipForVisualReasoning,
    VlpBlipImageProcessor,
    VlpBlipProcessor,
    add_blip_special_tokens,
    blip_special_token_ids,
)
from ..job import JobArguments
from ..recipes import Recipe
from .base import saved_model_class
from .fusion_models import BERT_TEXT_FIELDS, bert_tokenizer, rebuild_missing_momentum, shared_settings, tiny_config
from .fusion_models import tower_sizes

logger = logging.getLogger(__name__)

# weights a task model may miss when it starts from another BLIP head's directory: they are rebuilt (momentum towers
# copy the online ones) or start empty (queues)
REBUILT_PREFIXES = ("momentum_", "image_queue.", "text_queue.", "idx_queue.")


def blip_tokenizer(job: JobArguments) -> PreTrainedTokenizerBase:
    """``--tokenizer``, else the ``--text-init`` BERT directory's tokenizer, else the synthetic WordPiece one; with
    BLIP's ``[DEC]`` (BOS) and ``[ENC]`` added, as the original's ``init_tokenizer``."""
    return add_blip_special_tokens(bert_tokenizer(job))


def blip_processor(
    tokenizer: PreTrainedTokenizerBase, image_size: int, max_length: int, answer_list: list[str] | None = None
) -> VlpBlipProcessor:
    """BLIP's processor at ``image_size`` px with ``max_length`` text tokens (and VQA candidates); the caption prompt
    is the original's ``"a picture of "``."""
    return VlpBlipProcessor(
        VlpBlipImageProcessor(size=image_size), tokenizer, max_length=max_length, answer_list=answer_list
    )


def tiny_blip_config(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, job: JobArguments) -> VlpBlipConfig:
    """The recipe's tiny BLIP sized to the tokenizer (vocabulary, special ids) and ``--image-size``."""
    return tiny_config(VlpBlipConfig, recipe, tokenizer, job, blip_special_token_ids(tokenizer))


def tower_blip_config(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, job: JobArguments) -> VlpBlipConfig:
    """A BLIP whose towers have the sizes of the ``--vision-init`` ViT/DeiT and the ``--text-init`` BERT (every MED
    layer cross-attends, as BLIP's); the image size is ``--image-size`` or the ViT's (positions are interpolated when
    they differ), the vocabulary BERT's plus ``[DEC]``/``[ENC]``."""
    vision, text, _ = tower_sizes(job, tokenizer, BERT_TEXT_FIELDS)
    text.update(blip_special_token_ids(tokenizer))
    return VlpBlipConfig(vision_config=vision, text_config=text, **shared_settings(recipe, job))


def load_task_model(cls: type, directory: str) -> nn.Module:
    """``cls.from_pretrained(directory)`` refusing a directory that lacks weights ``cls`` needs (e.g. a captioner
    directory for retrieval); momentum towers the directory lacks (a ``VlpBlipModel`` save) start as copies of the
    loaded online towers, missing queues start empty."""
    model, info = cls.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    missing = [key for key in info["missing_keys"] if not key.startswith(REBUILT_PREFIXES)]
    if missing:
        raise ValueError(
            f"{directory} ({saved_model_class(directory)}) lacks {len(missing)} weights a {cls.__name__} needs (e.g. "
            f"{', '.join(sorted(missing)[:3])}): start from a BLIP pre-training directory (VlpBlipForPretraining) or "
            f"from a {cls.__name__} directory."
        )
    return rebuild_missing_momentum(model, info["missing_keys"])


def question_answering_from_saved(directory: str) -> VlpBlipForQuestionAnswering:
    """A VQA model from a saved VQA model, or from a saved pre-trained BLIP (``from_pretraining``)."""
    if saved_model_class(directory) == VlpBlipForQuestionAnswering.__name__:
        return load_task_model(VlpBlipForQuestionAnswering, directory)
    return VlpBlipForQuestionAnswering.from_pretraining(directory, dtype=torch.float32)


def visual_reasoning_from_saved(directory: str, image_size: int | None = None) -> VlpBlipForVisualReasoning:
    """An NLVR2 model from a saved NLVR2 model, or from a saved BLIP holding the image-grounded encoder (pre-training,
    retrieval, ``VlpBlipModel``) through ``from_blip_pretrained`` (at ``image_size`` px when given)."""
    if saved_model_class(directory) == VlpBlipForVisualReasoning.__name__:
        return load_task_model(VlpBlipForVisualReasoning, directory)
    return VlpBlipForVisualReasoning.from_blip_pretrained(directory, image_size=image_size, dtype=torch.float32)


__all__ = [
    "blip_processor",
    "blip_tokenizer",
    "load_task_model",
    "question_answering_from_saved",
    "tiny_blip_config",
    "tower_blip_config",
    "visual_reasoning_from_saved",
]
