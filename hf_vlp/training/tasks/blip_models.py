"""Building BLIP models and processors for ``hf-vlp train blip``: the tiny recipe model, a model whose towers start
from transformers ViT/DeiT + BERT checkpoints, or a task model fed by a saved BLIP directory.

One pre-trained BLIP feeds every task, as the original's ``load_checkpoint`` does: retrieval and captioning load the
pre-training directory directly (the weights a head does not use are ignored), VQA starts through
``VlpBlipForQuestionAnswering.from_pretraining`` (answer decoder from the pre-trained decoder role) and NLVR2 through
``VlpBlipForVisualReasoning.from_blip_pretrained`` (each cross-attention duplicated per image). A directory that lacks
weights the task needs (a captioner has no bidirectional encoder, an encoder no decoder) is refused by name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoProcessor, PreTrainedTokenizerBase

from ...models.blip import (
    VlpBlipConfig,
    VlpBlipForPretraining,
    VlpBlipForQuestionAnswering,
    VlpBlipForVisualReasoning,
    VlpBlipImageProcessor,
    VlpBlipModel,
    VlpBlipProcessor,
    add_blip_special_tokens,
    blip_special_token_ids,
)
from ..job import JobArguments
from ..recipes import Recipe
from ..tokenizers import load_bert_tokenizer, synthetic_wordpiece_tokenizer
from .base import saved_model_class

logger = logging.getLogger(__name__)

# ViT/DeiT and BERT config fields that size BLIP's towers (VlpBlipVisionConfig / VlpBlipTextConfig fields)
VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                 "num_channels", "hidden_act")  # fmt: skip
TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "max_position_embeddings", "hidden_act", "layer_norm_eps", "hidden_dropout_prob",
               "attention_probs_dropout_prob")  # fmt: skip
# weights a task model may miss when it starts from another BLIP head's directory: they are rebuilt (momentum towers
# copy the online ones) or start empty (queues)
REBUILT_PREFIXES = ("momentum_", "image_queue.", "text_queue.", "idx_queue.")


def blip_tokenizer(job: JobArguments) -> PreTrainedTokenizerBase:
    """``--tokenizer``, else the ``--text-init`` BERT directory's tokenizer, else the synthetic WordPiece one; with
    BLIP's ``[DEC]`` (BOS) and ``[ENC]`` added, as the original's ``init_tokenizer``."""
    if job.tokenizer:
        tokenizer = load_bert_tokenizer(job.tokenizer)
    elif job.text_init:
        tokenizer = load_bert_tokenizer(job.text_init)
    else:
        tokenizer = synthetic_wordpiece_tokenizer()
    return add_blip_special_tokens(tokenizer)


def blip_processor(
    tokenizer: PreTrainedTokenizerBase, image_size: int, max_length: int, answer_list: list[str] | None = None
) -> VlpBlipProcessor:
    """BLIP's processor at ``image_size`` px with ``max_length`` text tokens (and VQA candidates); the caption prompt
    is the original's ``"a picture of "``."""
    return VlpBlipProcessor(
        VlpBlipImageProcessor(size=image_size), tokenizer, max_length=max_length, answer_list=answer_list
    )


def _shared_settings(recipe: Recipe, job: JobArguments) -> dict[str, Any]:
    """The recipe's non-tower settings (embedding width, queue, momentum, ...) with ``--queue-size``."""
    settings = {key: value for key, value in recipe.tiny_config.items() if not key.endswith("_config")}
    if job.queue_size is not None:
        settings["queue_size"] = job.queue_size
    return settings


def tiny_blip_config(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, job: JobArguments) -> VlpBlipConfig:
    """The recipe's tiny BLIP sized to the tokenizer (vocabulary, special ids) and ``--image-size``."""
    vision = dict(recipe.tiny_config["vision_config"])
    text = dict(recipe.tiny_config["text_config"])
    if job.image_size:
        vision["image_size"] = job.image_size
    text.update(vocab_size=len(tokenizer), **blip_special_token_ids(tokenizer))
    text["max_position_embeddings"] = max(text.get("max_position_embeddings", 0), recipe.context_length)
    return VlpBlipConfig(vision_config=vision, text_config=text, **_shared_settings(recipe, job))


def _read_config(directory: str, flag: str) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{flag} {directory!r} has no config.json; pass a transformers save_pretrained directory."
        )
    return json.loads(path.read_text())


def tower_blip_config(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, job: JobArguments) -> VlpBlipConfig:
    """A BLIP whose towers have the sizes of the ``--vision-init`` ViT/DeiT and the ``--text-init`` BERT (every MED
    layer cross-attends, as BLIP's); the image size is ``--image-size`` or the ViT's (positions are interpolated when
    they differ), the vocabulary BERT's plus ``[DEC]``/``[ENC]``."""
    vit = _read_config(job.vision_init, "--vision-init")
    bert = _read_config(job.text_init, "--text-init")
    if vit.get("hidden_size") is None or bert.get("hidden_size") is None:
        raise ValueError("--vision-init / --text-init configs lack hidden_size; pass ViT/DeiT and BERT directories.")
    vision = {key: vit[key] for key in VISION_FIELDS if key in vit}
    vision["image_size"] = job.image_size or vit.get("image_size", 224)
    text = {key: bert[key] for key in TEXT_FIELDS if key in bert}
    text.update(vocab_size=max(int(bert.get("vocab_size", 0)), len(tokenizer)), **blip_special_token_ids(tokenizer))
    return VlpBlipConfig(vision_config=vision, text_config=text, **_shared_settings(recipe, job))


def load_processor(directory: str) -> Any:
    """The processor saved next to a model (``hf-vlp train`` and the converters write one)."""
    try:
        return AutoProcessor.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"{directory} holds no processor files ({error}); save the processor with the model "
            "(processor.save_pretrained(directory))."
        ) from error


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
    if hasattr(model, "init_momentum") and any(key.startswith("momentum_") for key in info["missing_keys"]):
        model.init_momentum()
    return model


def question_answering_from_saved(directory: str) -> VlpBlipForQuestionAnswering:
    """A VQA model from a saved VQA model, or from a saved pre-trained BLIP (``from_pretraining``)."""
    if saved_model_class(directory) == VlpBlipForQuestionAnswering.__name__:
        return load_task_model(VlpBlipForQuestionAnswering, directory)
    return VlpBlipForQuestionAnswering.from_pretraining(directory, dtype=torch.float32)


def question_answering_from_towers(config: VlpBlipConfig, vision: str, text: str) -> tuple[nn.Module, dict]:
    """A VQA model whose encoder and answer decoder both start from the BERT (through a pre-training model, as the
    original VQA model loads BLIP's), the ViT from the ViT/DeiT."""
    source, reports = VlpBlipForPretraining.from_pretrained_towers(config, vision=vision, text=text)
    return VlpBlipForQuestionAnswering.from_pretraining(source), reports


def visual_reasoning_from_saved(directory: str, image_size: int | None = None) -> VlpBlipForVisualReasoning:
    """An NLVR2 model from a saved NLVR2 model, or from a saved BLIP holding the image-grounded encoder (pre-training,
    retrieval, ``VlpBlipModel``) through ``from_blip_pretrained`` (at ``image_size`` px when given)."""
    if saved_model_class(directory) == VlpBlipForVisualReasoning.__name__:
        return load_task_model(VlpBlipForVisualReasoning, directory)
    return VlpBlipForVisualReasoning.from_blip_pretrained(directory, image_size=image_size, dtype=torch.float32)


def visual_reasoning_from_towers(config: VlpBlipConfig, vision: str, text: str) -> tuple[nn.Module, dict]:
    """An NLVR2 model from a ViT/DeiT and a BERT: the encoder towers first, then ``from_blip_pretrained`` pairs the
    (fresh) cross-attentions."""
    source, reports = VlpBlipModel.from_pretrained_towers(config, vision=vision, text=text)
    return VlpBlipForVisualReasoning.from_blip_pretrained(source), reports


__all__ = [
    "blip_processor",
    "blip_tokenizer",
    "load_processor",
    "load_task_model",
    "question_answering_from_saved",
    "question_answering_from_towers",
    "tiny_blip_config",
    "tower_blip_config",
    "visual_reasoning_from_saved",
    "visual_reasoning_from_towers",
]
