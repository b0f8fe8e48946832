"""Convert an original BLIP checkpoint (salesforce/BLIP ``{'model': state_dict, ...}``) to hf_vlp, plus its tokenizer.

The source layout is recognised from its keys (pre-training, retrieval, ITM, captioning, VQA, NLVR2) and written as a
*head*: a target class and a small table of key rules (:data:`HEADS`). ``--head auto`` picks the head matching the
checkpoint; any head can be asked for where the source holds its weights (e.g. ``--head model`` keeps the encoders of a
pre-training checkpoint, ``--head caption`` its decoder, ``--head retrieval`` its encoders with the momentum towers and
queues), the other keys being dropped explicitly. A head whose class is not in this version of hf_vlp yet is refused
with a message naming the missing class; feature-extractor checkpoints (``BLIP_Base``) are refused.

BLIP's pre-training checkpoint stores the encoder/decoder tie twice: ``text_decoder.bert.*`` equals ``text_encoder.*``
for everything except the self-attention. The duplicates are checked equal and consumed once (hf_vlp's MED holds one
tensor). Sizes come from tensor shapes; head counts default to ``width // 64`` (ViT-B/L, BERT-base) unless
``--original-config`` (the original yaml keys as JSON, the med/bert json content under ``med_config``) or the
checkpoint's own ``config`` entry gives them. An ``image_size`` there different from the checkpoint's grid interpolates
the position embeddings bicubically, as the original's ``load_checkpoint`` does.

    python conversion/convert_blip.py --checkpoint model_base_caption_capfilt_large.pth --output out/blip-caption \\
        --original-config caption_coco.json --tokenizer bert-base-uncased/vocab.txt --verify
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.integrations.model_card import render_model_card
from hf_vlp.models.blip.configuration_blip import BLIP_PRESETS, VlpBlipConfig
from hf_vlp.models.blip.image_processing_blip import VlpBlipImageProcessor
from hf_vlp.models.blip.processing_blip import (
    DEFAULT_PROMPT,
    VlpBlipProcessor,
    add_blip_special_tokens,
    blip_special_token_ids,
)
from hf_vlp.modules.vision import interpolate_grid_embeddings

from conversion.common import (
    ConversionError,
    Drop,
    Fuse,
    MappedStateDict,
    MappingRule,
    Rename,
    check_differences,
    check_output_dir,
    command_line,
    format_differences,
    load_mapped_state_dict,
    map_state_dict,
    max_abs_differences,
    read_checkpoint,
    run_cli,
    write_output_dir,
)
from conversion.convert_albef import tower_rules

logger = logging.getLogger("conversion.blip")

HEAD_DIM = 64  # ViT-B/16, ViT-L/16 and BERT-base
VERIFY_ATOL = 1e-4
P = r"(?P<p>weight|bias)"
ENCODER, DECODER = r"text_encoder\.", r"text_decoder\.bert\."
MOMENTUM_TOWERS = ("visual_encoder_m", "text_encoder_m", "vision_proj_m", "text_proj_m")
QUEUE_KEYS = ("image_queue", "text_queue", "idx_queue", "queue_ptr", "ptr_queue")
# the decoder's own self-attention; everything else of text_decoder.bert.* is the encoder's tensor in pre-training
_DECODER_OWN = re.compile(r"encoder\.layer\.\d+\.attention\..+|embeddings\.position_ids")


# --------------------------------------------------------------------------------------------------- source layouts

SOURCE_DESCRIPTIONS = {
    "pretraining": "pre-training (models/blip_pretrain.py: encoders, decoder, momentum towers, queues)",
    "retrieval": "retrieval fine-tuning (models/blip_retrieval.py: encoders, momentum towers, queues with image ids)",
    "itm": "image-text matching (models/blip_itm.py: encoders, projections, ITM head)",
    "caption": "captioning (models/blip.py:BLIP_Decoder: ViT + image-grounded decoder)",
    "vqa": "VQA (models/blip_vqa.py: question encoder + answer decoder)",
    "nlvr": "NLVR2 (models/blip_nlvr.py: encoder with two cross-attentions per layer)",
    "feature_extractor": "feature extractor (models/blip.py:BLIP_Base: encoders without projections)",
}


def source_kind(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Which original model class saved ``state_dict`` (a key of :data:`SOURCE_DESCRIPTIONS`)."""
    keys = list(state_dict)
    if not any(key.startswith("visual_encoder.") for key in keys):
        raise ConversionError(
            f"The checkpoint has no visual_encoder.* keys, so it is not an original BLIP state dict "
            f"({len(keys)} keys, e.g. {sorted(keys)[:5]})."
        )
    has_encoder = any(key.startswith("text_encoder.") for key in keys)
    has_decoder = any(key.startswith("text_decoder.") for key in keys)
    if any(".crossattention.self0." in key for key in keys):
        return "nlvr"
    if "idx_queue" in state_dict or "ptr_queue" in state_dict:
        return "retrieval"
    if any(key.startswith("text_encoder_m.") for key in keys):
        return "pretraining"
    if has_encoder and has_decoder:
        return "vqa"
    if has_decoder:
        return "caption"
    if has_encoder:
        return "itm" if "itm_head.weight" in state_dict else "feature_extractor"
    raise ConversionError("The checkpoint has a visual encoder but no text_encoder.* or text_decoder.* keys.")


# --------------------------------------------------------------------------------------------------- rule blocks


def vit_rules(source: str, target: str) -> list[MappingRule]:
    """timm ViT ``visual_encoder{source}.*`` -> ``{target}transformer.*`` (ALBEF's rules: the same ``models/vit.py``)."""
    rules = tower_rules(source, target, "unused.", None, "unused.", "unused.")
    return [rule for rule in rules if rule.pattern.startswith("visual_encoder")]


def med_rules(
    source: str,
    target: str | None = None,
    self_attention: str | None = None,
    *,
    drop_self_attention: str = "",
    drop_shared: str | None = None,
) -> list[MappingRule]:
    """A ``med.py`` ``BertModel`` under the regex prefix ``source`` -> ``{target}transformer.*`` of a
    :class:`~hf_vlp.modules.text.MedTextTransformer`.

    ``self_attention`` is the target of the layers' ``attention.*``: ``"attn"`` (encoder role), ``"causal_attn"``
    (decoder role) or ``None`` (dropped, ``drop_self_attention`` saying why). ``drop_shared`` drops the embeddings,
    cross-attention and FFN with that reason instead of mapping them (the decoder's tied duplicates in pre-training,
    checked equal beforehand, or a part the head does not hold).
    """
    layer = source + r"encoder\.layer\.(?P<i>\d+)\."
    rules: list[MappingRule] = [Drop(source + r"embeddings\.position_ids", "index buffer; positions are computed")]
    if self_attention is None:
        if not drop_self_attention:
            raise ValueError("say why the self-attention is dropped (drop_self_attention)")
        rules.append(Drop(layer + r"attention\..+", drop_self_attention))
    else:
        norm = "norm1" if self_attention == "attn" else "norm_causal"
        out = f"{target}transformer.encoder.layers.\\g<i>."
        rules += [
            Fuse(layer + r"attention\.self\.(?P<part>query|key|value)\." + P, out + self_attention + r".qkv.\g<p>",
                 parts=("query", "key", "value")),
            Rename(layer + r"attention\.output\.dense\." + P, out + self_attention + r".out_proj.\g<p>"),
            Rename(layer + r"attention\.output\.LayerNorm\." + P, out + norm + r".\g<p>"),
        ]
    if drop_shared is not None:
        rules.append(Drop(source + r"(?:embeddings|encoder\.layer\.\d+\.(?:crossattention|intermediate|output))\..+",
                          drop_shared))
        return rules
    tower, out = f"{target}transformer.", f"{target}transformer.encoder.layers.\\g<i>."
    return rules + [
        Rename(source + r"embeddings\.(?P<e>word|position)_embeddings\.weight",
               tower + r"embeddings.\g<e>_embeddings.weight"),
        Rename(source + r"embeddings\.LayerNorm\." + P, tower + r"embeddings.norm.\g<p>"),
        Rename(layer + r"crossattention\.self\.query\." + P, out + r"cross_attn.q.\g<p>"),
        Fuse(layer + r"crossattention\.self\.(?P<part>key|value)\." + P, out + r"cross_attn.kv.\g<p>",
             parts=("key", "value")),
        Rename(layer + r"crossattention\.output\.dense\." + P, out + r"cross_attn.out_proj.\g<p>"),
        Rename(layer + r"crossattention\.output\.LayerNorm\." + P, out + r"norm_cross.\g<p>"),
        Rename(layer + r"intermediate\.dense\." + P, out + r"mlp.fc1.\g<p>"),
        Rename(layer + r"output\.dense\." + P, out + r"mlp.fc2.\g<p>"),
        Rename(layer + r"output\.LayerNorm\." + P, out + r"norm2.\g<p>"),
    ]


def lm_head_rules(target: str | None, drop_reason: str = "") -> list[MappingRule]:
    """``text_decoder.cls.predictions.*`` -> BERT's prediction head ``{target}*`` (``decoder.weight`` is tied to the
    word embeddings; ``predictions.bias`` is the same tensor as ``decoder.bias``, checked equal), or all dropped."""
    head = r"text_decoder\.cls\.predictions\."
    if target is None:
        return [Drop(head + r".+", drop_reason)]
    return [
        Drop(head + "bias", "same tensor as cls.predictions.decoder.bias (tied; checked equal)"),
        Rename(head + r"transform\.dense\." + P, target + r"dense.\g<p>"),
        Rename(head + r"transform\.LayerNorm\." + P, target + r"norm.\g<p>"),
        Rename(head + r"decoder\." + P, target + r"decoder.\g<p>"),
    ]


def contrastive_rules(source: str = "", target: str = "") -> list[MappingRule]:
    """Projections (``vision_proj{source}``, ``text_proj{source}`` -> ``{target}vision_proj`` ...); online only: the
    ITM head and ``temp``."""
    rules: list[MappingRule] = [
        Rename(rf"vision_proj{source}\.{P}", target + r"vision_proj.\g<p>"),
        Rename(rf"text_proj{source}\.{P}", target + r"text_proj.\g<p>"),
    ]
    if not source:
        rules += [Rename(r"itm_head\." + P, r"itm_head.\g<p>"), Rename(r"temp", "temp")]
    return rules


def momentum_rules() -> list[MappingRule]:
    """The frozen EMA copies under the names of the pre-training heads (``momentum_vision_model`` ...)."""
    return [
        *vit_rules("_m", "momentum_vision_model."),
        *med_rules(r"text_encoder_m\.", "momentum_text_model.", "attn"),
        *contrastive_rules("_m", "momentum_"),
    ]


def queue_rules(with_ids: bool) -> list[MappingRule]:
    """Feature queues as ``hf_vlp.objectives.momentum.FeatureQueue`` buffers; the single pointer (``queue_ptr`` in pre-training,
    ``ptr_queue`` in retrieval) goes to ``image_queue.ptr`` and is copied to the others by :func:`map_blip_state_dict`."""
    queues = "image|text|idx" if with_ids else "image|text"
    return [
        Rename(rf"(?P<q>{queues})_queue", r"\g<q>_queue.queue"),
        Rename(r"queue_ptr|ptr_queue", "image_queue.ptr", _as_scalar),
    ]


def dropped(pattern: str, reason: str) -> list[MappingRule]:
    """Source keys a head does not hold, dropped on purpose with ``reason`` (shown in logs and the model card)."""
    return [Drop(pattern, reason)]


def _as_scalar(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(())


# --------------------------------------------------------------------------------------------------- heads

DECODER_TIE = "tied copy of the same text_encoder.* tensor (the MED holds it once; checked equal)"
MOMENTUM_AND_QUEUES = rf"(?:{'|'.join(MOMENTUM_TOWERS)})\..+|{'|'.join(QUEUE_KEYS)}"


def model_rules(kind: str) -> list[MappingRule]:
    """-> ``VlpBlipModel``: online ViT, MED with the encoder's self-attention, projections, ITM head, ``temp``."""
    rules = [*vit_rules("", "vision_model."), *med_rules(ENCODER, "text_model.", "attn"), *contrastive_rules()]
    if kind in ("pretraining", "retrieval"):
        rules += dropped(MOMENTUM_AND_QUEUES, "momentum towers and queues (kept by the pre-training/retrieval heads)")
    if kind == "pretraining":
        no_decoder = "VlpBlipModel holds no decoder; --head caption keeps it"
        rules += med_rules(DECODER, drop_self_attention=f"the decoder's causal self-attention ({no_decoder})",
                           drop_shared=DECODER_TIE)
        rules += lm_head_rules(None, f"the decoder's LM head ({no_decoder})")
    return rules


def caption_rules(kind: str) -> list[MappingRule]:
    """-> ``VlpBlipForConditionalGeneration``: online ViT, MED with the decoder's causal self-attention, LM head."""
    rules = [*vit_rules("", "vision_model."), *med_rules(DECODER, "text_model.", "causal_attn"), *lm_head_rules("lm_head.")]
    if kind == "pretraining":
        rules += med_rules(
            ENCODER,
            drop_self_attention="the encoder's bidirectional self-attention (the captioning model has no encoder role)",
            drop_shared="the encoder's copy of the tensors it shares with the decoder (checked equal)",
        )
        rules += dropped(r"(?:vision_proj|text_proj|itm_head)\..+|temp",
                         "contrastive projections and ITM head (the captioning model has none)")
        rules += dropped(MOMENTUM_AND_QUEUES, "momentum towers and queues (pre-training only)")
    return rules


def pretraining_rules(kind: str) -> list[MappingRule]:
    """-> ``VlpBlipForPretraining``: everything; the decoder's shared tensors once, its own self-attention into
    ``causal_attn``; momentum towers as ``momentum_*``; queues as ``image_queue``/``text_queue``."""
    return [
        *vit_rules("", "vision_model."),
        *med_rules(ENCODER, "text_model.", "attn"),
        *med_rules(DECODER, "text_model.", "causal_attn", drop_shared=DECODER_TIE),
        *lm_head_rules("lm_head."),
        *contrastive_rules(),
        *momentum_rules(),
        *queue_rules(with_ids=False),
    ]


def retrieval_rules(kind: str) -> list[MappingRule]:
    """-> ``VlpBlipForImageTextRetrieval``: online and momentum encoders, queues with image ids (a pre-training source
    gets an ``idx_queue`` of -100, as ``blip_retrieval.py`` starts it; its decoder is dropped)."""
    rules = [
        *vit_rules("", "vision_model."),
        *med_rules(ENCODER, "text_model.", "attn"),
        *contrastive_rules(),
        *momentum_rules(),
        *queue_rules(with_ids=True),
    ]
    if kind == "pretraining":
        rules += dropped(r"text_decoder\..+", "image-grounded decoder (the retrieval model has none)")
    return rules


def vqa_rules(kind: str) -> list[MappingRule]:
    """-> ``VlpBlipForQuestionAnswering``: ViT, question encoder ``text_model`` (encoder role), answer decoder
    ``answer_decoder`` (decoder role, its own tensors: not tied to the encoder after VQA fine-tuning) and its LM head
    ``answer_head``."""
    return [
        *vit_rules("", "vision_model."),
        *med_rules(ENCODER, "text_model.", "attn"),
        *med_rules(DECODER, "answer_decoder.", "causal_attn"),
        *lm_head_rules("answer_head."),
    ]


def nlvr_rules(kind: str) -> list[MappingRule]:
    """-> ``VlpBlipForVisualReasoning``: ViT, the encoder (``models/nlvr_encoder.py``) whose per-image cross-attentions
    ``crossattention.self0/self1`` + ``output.dense0/dense1`` become ``cross_attn.attn0/attn1`` (q, fused kv,
    out_proj), ``output.merge_layer`` ``cross_attn.merge`` (layers >= 6), and ``cls_head``."""
    layer = ENCODER + r"encoder\.layer\.(?P<i>\d+)\.crossattention\."
    out = r"text_model.transformer.encoder.layers.\g<i>.cross_attn."
    return [
        *vit_rules("", "vision_model."),
        Rename(layer + r"self(?P<b>[01])\.query\." + P, out + r"attn\g<b>.q.\g<p>"),
        Fuse(layer + r"self(?P<b>[01])\.(?P<part>key|value)\." + P, out + r"attn\g<b>.kv.\g<p>",
             parts=("key", "value")),
        Rename(layer + r"output\.dense(?P<b>[01])\." + P, out + r"attn\g<b>.out_proj.\g<p>"),
        Rename(layer + r"output\.merge_layer\." + P, out + r"merge.\g<p>"),
        *med_rules(ENCODER, "text_model.", "attn"),  # embeddings, self-attention, the shared LayerNorm, FFN
        Rename(r"cls_head\.(?P<n>[02])\." + P, r"cls_head.\g<n>.\g<p>"),
    ]


@dataclass(frozen=True)
class BlipHead:
    """A conversion target: the hf_vlp class (looked up by name in ``module``, by default the ``hf_vlp.models.blip``
    package, so a head starts working once its class exists), the source layouts it converts from, and its key rules
    (source kind -> rules)."""

    model_class: str
    sources: tuple[str, ...]
    rules: Callable[[str], list[MappingRule]]
    module: str = "hf_vlp.models.blip"


HEADS: dict[str, BlipHead] = {
    "model": BlipHead("VlpBlipModel", ("pretraining", "retrieval", "itm"), model_rules),
    "caption": BlipHead("VlpBlipForConditionalGeneration", ("caption", "pretraining"), caption_rules),
    "pretraining": BlipHead(
        "VlpBlipForPretraining", ("pretraining",), pretraining_rules, "hf_vlp.models.blip.modeling_blip_pretraining"
    ),
    "retrieval": BlipHead(
        "VlpBlipForImageTextRetrieval", ("retrieval", "pretraining"), retrieval_rules,
        "hf_vlp.models.blip.modeling_blip_pretraining",
    ),
    "vqa": BlipHead("VlpBlipForQuestionAnswering", ("vqa",), vqa_rules),
    "nlvr2": BlipHead("VlpBlipForVisualReasoning", ("nlvr",), nlvr_rules, "hf_vlp.models.blip.modeling_blip_reasoning"),
}
AUTO_HEADS = {
    "pretraining": "pretraining", "retrieval": "retrieval", "itm": "model", "caption": "caption", "vqa": "vqa",
    "nlvr": "nlvr2",
}
HEAD_CHOICES = ("auto", *HEADS)


def model_class_of(head: str) -> type | None:
    """The head's class, or ``None`` while this version of hf_vlp does not have it."""
    spec = HEADS[head]
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as error:
        if error.name != spec.module:
            raise
        return None
    return getattr(module, spec.model_class, None)


def resolve_head(kind: str, head: str) -> str:
    """The head to write for a source of ``kind``; a clear error when it cannot be written (yet)."""
    if head not in HEAD_CHOICES:
        raise ConversionError(f"head must be one of {HEAD_CHOICES}, got {head!r}")
    if kind == "feature_extractor":
        raise ConversionError(
            f"The checkpoint is a BLIP {SOURCE_DESCRIPTIONS[kind]} checkpoint, which this converter does not support "
            "yet (no hf_vlp head holds it)."
        )
    if head == "auto":
        head = AUTO_HEADS[kind]
    spec = HEADS[head]
    if kind not in spec.sources:
        possible = sorted(name for name, other in HEADS.items() if kind in other.sources)
        raise ConversionError(
            f"--head {head} ({spec.model_class}) cannot be written from a BLIP {SOURCE_DESCRIPTIONS[kind]} checkpoint; "
            f"it converts from {', '.join(spec.sources)} checkpoints. Heads for this checkpoint: {', '.join(possible)}."
        )
    if model_class_of(head) is None:
        available = sorted(name for name, other in HEADS.items() if kind in other.sources and model_class_of(name))
        hint = f" Convert what hf_vlp holds today with --head {' or --head '.join(available)}." if available else ""
        raise ConversionError(
            f"--head {head} is not supported yet: hf_vlp has no {spec.model_class} class in this version (its "
            f"conversion rules are ready in conversion/convert_blip.py).{hint}"
        )
    return head


def map_blip_state_dict(state_dict: Mapping[str, torch.Tensor], kind: str, head: str) -> MappedStateDict:
    """Apply the head's rules strictly; every ``FeatureQueue`` gets its own copy of the single pointer, a retrieval head
    from a pre-training source a fresh ``idx_queue`` of -100, and an ITM source (no ``temp``) the initial 0.07."""
    mapped = map_state_dict(state_dict, HEADS[head].rules(kind))
    if kind == "itm" and "temp" not in mapped.tensors:  # blip_itm.py scores cosines without a temperature
        mapped.tensors["temp"] = torch.tensor(VlpBlipConfig().temp)
        mapped.sources["temp"] = ["(new: the initial 0.07; models/blip_itm.py has no temperature)"]
    if head == "retrieval" and "idx_queue.queue" not in mapped.tensors and "image_queue.queue" in mapped.tensors:
        size = mapped.tensors["image_queue.queue"].shape[1]
        mapped.tensors["idx_queue.queue"] = torch.full((1, size), -100, dtype=torch.long)
        mapped.sources["idx_queue.queue"] = ["(new: -100, as blip_retrieval.py initialises it)"]
    if "image_queue.ptr" in mapped.tensors:
        for queue in ("text_queue", "idx_queue"):
            if f"{queue}.queue" in mapped.tensors:
                mapped.tensors[f"{queue}.ptr"] = mapped.tensors["image_queue.ptr"].clone()
                mapped.sources[f"{queue}.ptr"] = list(mapped.sources["image_queue.ptr"])
    return mapped


# --------------------------------------------------------------------------------------------------- tie checks


def check_ties(state_dict: Mapping[str, torch.Tensor], kind: str) -> None:
    """The original ties the LM decoder to the word embeddings (and its bias to ``predictions.bias``) and, in
    pre-training, every ``text_decoder.bert.*`` tensor except the self-attention to ``text_encoder.*``. hf_vlp keeps one
    tensor for each tie, so copies that differ cannot be represented: raise naming them."""
    pairs = [
        ("text_decoder.cls.predictions.decoder.weight", "text_decoder.bert.embeddings.word_embeddings.weight"),
        ("text_decoder.cls.predictions.decoder.bias", "text_decoder.cls.predictions.bias"),
    ]
    if kind == "pretraining":
        prefix = "text_decoder.bert."
        shared = [key[len(prefix) :] for key in state_dict if key.startswith(prefix)]
        shared = [key for key in shared if not _DECODER_OWN.fullmatch(key)]
        missing = [f"text_encoder.{key}" for key in shared if f"text_encoder.{key}" not in state_dict]
        if missing:
            raise ConversionError(
                f"The pre-training checkpoint lacks the encoder tensors its decoder shares: {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}."
            )
        pairs += [(prefix + key, f"text_encoder.{key}") for key in shared]
    differing = [
        f"{copy} != {source}"
        for copy, source in pairs
        if copy in state_dict and source in state_dict and not torch.equal(state_dict[copy], state_dict[source])
    ]
    if differing:
        raise ConversionError(
            f"{len(differing)} tensors differ from the tensor the original ties them to: {differing[:5]}"
            f"{' ...' if len(differing) > 5 else ''}. hf_vlp keeps one tensor per tie; the checkpoint was not saved "
            "by BLIP's models (or was edited)."
        )


# --------------------------------------------------------------------------------------------------- configuration


def read_original_config(path: str | Path) -> dict[str, Any]:
    """Load ``--original-config``: the original yaml keys as a JSON object (``med_config`` = the json content)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Original config not found: {path}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"Original config {path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ConversionError(f"Original config {path} must be a JSON object of the original yaml keys.")
    if "med_config" in config and not isinstance(config["med_config"], dict):
        raise ConversionError(
            f"'med_config' in {path} must hold the CONTENT of the med/bert json (configs/med_config.json), not "
            f"{config['med_config']!r}."
        )
    return config


def _require(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise ConversionError(f"Missing key {key!r}: the checkpoint is not a complete original BLIP state dict.")
    return state_dict[key]


def text_prefix(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Where the text transformer's tensors are: the encoder's when there is one, else the decoder's."""
    return "text_encoder." if "text_encoder.embeddings.word_embeddings.weight" in state_dict else "text_decoder.bert."


def _layer_count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({int(match.group(1)) for key in state_dict if (match := regex.match(key))})


def blip_config(
    state_dict: Mapping[str, torch.Tensor], original: Mapping[str, Any], tokenizer_ids: Mapping[str, int] | None
) -> VlpBlipConfig:
    """``VlpBlipConfig`` from tensor shapes, head counts and training settings from the original config, special-token
    ids from the tokenizer."""
    med = dict(original.get("med_config") or {})
    width = _require(state_dict, "visual_encoder.cls_token").shape[-1]
    patch = _require(state_dict, "visual_encoder.patch_embed.proj.weight").shape[-1]
    grid = math.isqrt(_require(state_dict, "visual_encoder.pos_embed").shape[1] - 1)
    text = text_prefix(state_dict)
    words = _require(state_dict, f"{text}embeddings.word_embeddings.weight")
    text_width = words.shape[1]
    if "vit_patch_size" in original and original["vit_patch_size"] != patch:
        raise ConversionError(f"vit_patch_size {original['vit_patch_size']} contradicts the checkpoint's patch size {patch}")
    vision = dict(
        hidden_size=width,
        intermediate_size=_require(state_dict, "visual_encoder.blocks.0.mlp.fc1.weight").shape[0],
        num_hidden_layers=_layer_count(state_dict, r"visual_encoder\.blocks\.(\d+)\."),
        num_attention_heads=original.get("vit_num_heads", width // HEAD_DIM),
        image_size=original.get("image_size", patch * grid),
        patch_size=patch,
        drop_path_rate=vision_drop_path_rate(source_kind(state_dict), width),
    )
    text_settings: dict[str, Any] = dict(
        vocab_size=words.shape[0],
        hidden_size=text_width,
        intermediate_size=_require(state_dict, f"{text}encoder.layer.0.intermediate.dense.weight").shape[0],
        num_hidden_layers=_layer_count(state_dict, re.escape(text) + r"encoder\.layer\.(\d+)\."),
        num_attention_heads=med.get("num_attention_heads", text_width // HEAD_DIM),
        max_position_embeddings=_require(state_dict, f"{text}embeddings.position_embeddings.weight").shape[0],
        hidden_act=med.get("hidden_act", "gelu"),
        layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        hidden_dropout_prob=med.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=med.get("attention_probs_dropout_prob", 0.1),
    )
    if tokenizer_ids is not None:
        text_settings.update(tokenizer_ids)
    checks = (("vision", vision, "vit_num_heads"), ("text", text_settings, "med_config.num_attention_heads"))
    for tower, settings, key in checks:
        heads = settings["num_attention_heads"]
        if not heads or settings["hidden_size"] % heads:
            raise ConversionError(
                f"The {tower} tower's width {settings['hidden_size']} cannot be split into {heads} attention heads "
                f"(the default is width // {HEAD_DIM}); pass --original-config with the right {key!r}."
            )
    constructor = dict(original.get("constructor_kwargs") or {})
    settings = {key: original[key] for key in ("queue_size", "alpha") if key in original}
    settings.update({key: constructor[key] for key in ("embed_dim", "momentum") if key in constructor})
    if "vision_proj.weight" in state_dict:
        settings["embed_dim"] = state_dict["vision_proj.weight"].shape[0]
    if "image_queue" in state_dict:  # the model's queues must hold the checkpoint's
        settings["queue_size"] = state_dict["image_queue"].shape[1]
    try:
        return VlpBlipConfig(vision_config=vision, text_config=text_settings, **settings)
    except (StrictDataclassError, ValueError, TypeError) as error:
        hint = "" if tokenizer_ids is not None else " Pass --tokenizer so the special-token ids are read by name."
        raise ConversionError(f"The resulting configuration is invalid: {error}{hint}") from error


def vision_drop_path_rate(kind: str, width: int) -> float:
    """The ViT's stochastic depth as the original builds it: 0.1 for ViT-L (``create_vit`` forces it) and for NLVR2
    (``blip_nlvr.py``), else 0 (training only; no effect on outputs in eval mode)."""
    large = width == BLIP_PRESETS["large"]["hidden_size"]
    return 0.1 if large or kind == "nlvr" else 0.0


def resize_position_embeddings(mapped: MappedStateDict, config: VlpBlipConfig) -> list[str]:
    """Bicubically interpolate every ViT position grid to the configured image size (the original's
    ``interpolate_pos_embed`` on load); returns what was resized."""
    vision = config.vision_config
    grid = vision.image_size // vision.patch_size
    notes = []
    for key in [key for key in mapped.tensors if key.endswith("vision_model.transformer.position_embedding")]:
        positions = mapped.tensors[key]
        source_grid = math.isqrt(positions.shape[0] - 1)
        if source_grid != grid:
            mapped.tensors[key] = interpolate_grid_embeddings(positions, 1, source_grid, (grid, grid))
            notes.append(f"{key}: {source_grid}x{source_grid} -> {grid}x{grid} patch grid (bicubic)")
    return notes


# --------------------------------------------------------------------------------------------------- tokenizer


def load_tokenizer(path: str | Path, vocab_size: int) -> Any:
    """BLIP's tokenizer: a lower-casing ``BertTokenizer`` from a WordPiece ``vocab.txt`` or a tokenizer directory, with
    ``[DEC]``/``[ENC]`` added as the original ``init_tokenizer`` does; its size must equal the checkpoint's vocabulary."""
    from transformers import AutoTokenizer, BertTokenizer

    path = Path(path)
    if path.is_dir():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as error:
            raise ConversionError(f"{path} is not a tokenizer directory: {error}") from error
    elif path.is_file():
        tokens = path.read_text(encoding="utf-8").splitlines()
        missing = [token for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if token not in tokens]
        if missing:
            raise ConversionError(f"{path} lacks the special tokens {missing}; pass a BERT WordPiece vocab.txt.")
        tokenizer = BertTokenizer(vocab=str(path), do_lower_case=True)
    else:
        raise ConversionError(f"Tokenizer not found: {path}. Pass the vocab.txt (or tokenizer directory) of the checkpoint.")
    add_blip_special_tokens(tokenizer)
    if len(tokenizer) != vocab_size:
        raise ConversionError(
            f"The tokenizer has {len(tokenizer)} tokens with [DEC] and [ENC] added but the checkpoint's vocabulary has "
            f"{vocab_size}; pass the vocabulary the checkpoint was trained with (bert-base-uncased for the releases)."
        )
    return tokenizer


# --------------------------------------------------------------------------------------------------- verification


def transformers_reference(state_dict: Mapping[str, torch.Tensor], config: VlpBlipConfig, head: str) -> torch.nn.Module:
    """transformers' own BLIP (``BlipForImageTextRetrieval`` for ``model``, ``BlipForConditionalGeneration`` for
    ``caption``) loaded from the ORIGINAL state dict with its conversion script's key renames - an independent
    implementation to compare with (vision LayerNorm eps as the checkpoint's, 1e-6 for the releases)."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval

    vision, text = config.vision_config, config.text_config
    reference_config = BlipConfig(
        vision_config=dict(
            hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
            num_hidden_layers=vision.num_hidden_layers, num_attention_heads=vision.num_attention_heads,
            image_size=vision.image_size, patch_size=vision.patch_size, layer_norm_eps=vision.layer_norm_eps,
            hidden_act=vision.hidden_act,
        ),
        text_config=dict(
            vocab_size=text.vocab_size, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
            num_hidden_layers=text.num_hidden_layers, num_attention_heads=text.num_attention_heads,
            max_position_embeddings=text.max_position_embeddings, encoder_hidden_size=vision.hidden_size,
            layer_norm_eps=text.layer_norm_eps, hidden_act=text.hidden_act, pad_token_id=text.pad_token_id,
            bos_token_id=text.bos_token_id, sep_token_id=text.sep_token_id, eos_token_id=text.sep_token_id,
        ),
        image_text_hidden_size=config.embed_dim,
    )
    model_class = BlipForImageTextRetrieval if head == "model" else BlipForConditionalGeneration
    reference = model_class(reference_config).eval()
    renamed = {_transformers_name(key): tensor for key, tensor in state_dict.items()}
    expected = reference.state_dict()
    missing = [key for key in expected if key not in renamed]
    if missing:
        raise ConversionError(f"Verification: transformers' BLIP needs keys the checkpoint lacks: {missing[:5]}")
    reference.load_state_dict({key: renamed[key] for key in expected}, strict=True)
    return reference


_VIT_RENAMES = (
    (r"visual_encoder\.cls_token", "vision_model.embeddings.class_embedding"),
    (r"visual_encoder\.pos_embed", "vision_model.embeddings.position_embedding"),
    (r"visual_encoder\.patch_embed\.proj\.", "vision_model.embeddings.patch_embedding."),
    (r"visual_encoder\.norm\.", "vision_model.post_layernorm."),
    (r"visual_encoder\.blocks\.(\d+)\.norm(\d)\.", r"vision_model.encoder.layers.\1.layer_norm\2."),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"vision_model.encoder.layers.\1.self_attn.projection."),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.", r"vision_model.encoder.layers.\1.self_attn."),
    (r"visual_encoder\.blocks\.(\d+)\.mlp\.", r"vision_model.encoder.layers.\1.mlp."),
)


def _transformers_name(key: str) -> str:
    for pattern, replacement in _VIT_RENAMES:
        renamed, count = re.subn("^" + pattern, replacement, key)
        if count:
            return renamed
    return key


def verify(model: torch.nn.Module, reference: torch.nn.Module, head: str, seed: int = 0) -> dict[str, float]:
    """Max |difference| between the converted model and transformers' BLIP on random images and texts: ITM logits and
    contrastive cosines (``model``) or teacher-forced decoder logits (``caption``)."""
    config = model.config
    vision, text = config.vision_config, config.text_config
    generator = torch.Generator().manual_seed(seed)
    batch, length = 2, min(12, text.max_position_embeddings)
    pixel_values = torch.randn(batch, 3, vision.image_size, vision.image_size, generator=generator)
    special = {getattr(text, name) for name in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id",
                                                "bos_token_id", "enc_token_id")}
    words = torch.tensor([index for index in range(text.vocab_size) if index not in special])
    input_ids = words[torch.randint(len(words), (batch, length), generator=generator)]
    input_ids[:, 0], input_ids[:, -1] = text.cls_token_id, text.sep_token_id
    attention_mask = torch.ones_like(input_ids)
    with torch.no_grad():
        if head == "model":
            ours = model(input_ids, pixel_values, attention_mask, output_itm=True)
            itm_ids = input_ids.clone()
            itm_ids[:, 0] = text.enc_token_id
            theirs_itm = reference(input_ids=itm_ids, pixel_values=pixel_values, attention_mask=attention_mask).itm_score
            theirs_cosine = reference(
                input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, use_itm_head=False
            ).itm_score
            return max_abs_differences(
                {"itm_logits": theirs_itm, "cosine_similarity": theirs_cosine},
                {"itm_logits": ours.itm_logits, "cosine_similarity": ours.logits_per_image * model.temp},
            )
        decoder_ids = input_ids.clone()
        decoder_ids[:, 0] = text.bos_token_id
        theirs = reference(pixel_values=pixel_values, input_ids=decoder_ids, attention_mask=attention_mask).logits
        ours = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask).logits
        return max_abs_differences({"decoder_logits": theirs}, {"decoder_logits": ours})


# --------------------------------------------------------------------------------------------------- conversion


@dataclass
class BlipConversion:
    """Result of :func:`convert_blip_checkpoint`."""

    model: Any
    processor: VlpBlipProcessor | None
    kind: str
    head: str
    dropped: dict[str, str]
    differences: dict[str, float] | None = None
    output: Path | None = None


def convert_blip_checkpoint(
    checkpoint: str | Path,
    output: str | Path | None = None,
    original_config: str | Path | Mapping[str, Any] | None = None,
    tokenizer: str | Path | None = None,
    head: str = "auto",
    verify_outputs: bool = False,
    overwrite: bool = False,
    command: str | None = None,
) -> BlipConversion:
    """Convert an original BLIP checkpoint (+ tokenizer) to the hf_vlp ``head``; write it to ``output`` if given.

    Every source key is mapped or explicitly dropped (``position_ids``, tied duplicates checked equal, weights the head
    does not hold) and every target key filled, or a :class:`ConversionError` names the keys and nothing is written.
    ``verify_outputs`` compares with transformers' BLIP built from the same original tensors (atol 1e-4).
    """
    if Path(checkpoint).is_dir():  # a transformers BLIP directory: conversion/blip_transformers.py
        from conversion.blip_transformers import convert_transformers_blip

        if original_config is not None:
            raise ConversionError("--original-config applies to original checkpoints; a transformers directory has "
                                  "its own config.json.")
        return convert_transformers_blip(checkpoint, output, tokenizer, head, verify_outputs, overwrite, command)
    if output is not None:
        check_output_dir(output, overwrite)
    source = read_checkpoint(checkpoint, allow_torchscript=False)
    state_dict = source.state_dict
    logger.info(f"Source: {source.path} ({len(state_dict)} tensors)")
    if original_config is None:
        embedded = source.extra.get("config")
        original: Mapping[str, Any] = embedded if isinstance(embedded, dict) else {}
        if not isinstance(original.get("med_config", {}), dict):  # the training scripts store the json's path
            original = {key: value for key, value in original.items() if key != "med_config"}
    elif isinstance(original_config, Mapping):
        original = original_config
    else:
        original = read_original_config(original_config)
    kind = source_kind(state_dict)
    head = resolve_head(kind, head)
    check_ties(state_dict, kind)
    try:
        mapped = map_blip_state_dict(state_dict, kind, head)
    except ConversionError as error:
        raise ConversionError(
            f"{error}\n(read as a BLIP {SOURCE_DESCRIPTIONS[kind]} checkpoint, written as --head {head})"
        ) from error
    vocab_size = _require(state_dict, f"{text_prefix(state_dict)}embeddings.word_embeddings.weight").shape[0]
    blip_tokenizer = load_tokenizer(tokenizer, vocab_size) if tokenizer is not None else None
    tokenizer_ids = blip_special_token_ids(blip_tokenizer) if blip_tokenizer is not None else None
    config = blip_config(state_dict, original, tokenizer_ids)
    processor = None
    if blip_tokenizer is not None:
        size = config.vision_config.image_size
        processor = VlpBlipProcessor(
            VlpBlipImageProcessor(size={"height": size, "width": size}),
            blip_tokenizer,
            prompt=original.get("prompt", DEFAULT_PROMPT),
        )
    resized = resize_position_embeddings(mapped, config)
    model = model_class_of(head)(config)
    load_mapped_state_dict(model, mapped)
    model.eval()
    differences = None
    if verify_outputs:
        if head not in ("model", "caption"):
            raise ConversionError(f"--verify compares with transformers' BLIP, which has no counterpart of --head {head}.")
        if resized:
            raise ConversionError("--verify needs the checkpoint's own resolution; drop image_size from the config.")
        differences = verify(model, transformers_reference(state_dict, config, head), head)
        check_differences(differences, VERIFY_ATOL, "transformers' BLIP")
        logger.info(f"Verified against transformers' BLIP: max |diff| {format_differences(differences)}")
    logger.info(
        f"Wrote {type(model).__name__} from a {kind} checkpoint: mapped {len(mapped.tensors)} tensors, dropped "
        f"{len(mapped.dropped)} ({', '.join(sorted(set(mapped.dropped.values())))})."
    )
    if blip_tokenizer is None:
        logger.warning("No tokenizer given (--tokenizer): writing the model without a processor.")
    result = BlipConversion(model, processor, kind, head, mapped.dropped, differences)
    if output is not None:
        call = command or f"convert_blip_checkpoint({source.path.name!r}, ...)"
        readme = provenance(source.path.name, call, result, resized)
        result.output = write_output_dir(output, lambda directory: _write(directory, result, readme), overwrite)
        logger.info(f"Wrote {result.output}")
    return result


def provenance(checkpoint_name: str, command: str, result: BlipConversion, resized: Sequence[str]) -> str:
    """The conversion's provenance paragraph for the BLIP model card."""
    reasons = sorted(set(result.dropped.values()))
    verified = (
        f"Compared with transformers' BLIP on random inputs: max |diff| {format_differences(result.differences)}."
        if result.differences is not None
        else "Not compared with another implementation (pass `--verify`)."
    )
    lines = [
        f"Converted from `{checkpoint_name}` (salesforce/BLIP {SOURCE_DESCRIPTIONS[result.kind]}) to "
        f"`{type(result.model).__name__}` with\n\n```bash\n{command}\n```\n",
        "Tensors carried over exactly; dropped on purpose: " + "; ".join(reasons) + "." if reasons else "",
        "Position embeddings interpolated: " + "; ".join(resized) + "." if resized else "",
        verified,
    ]
    return "\n".join(line for line in lines if line)


def _write(directory: Path, result: BlipConversion, readme: str) -> None:
    result.model.save_pretrained(directory)
    if result.processor is not None:
        result.processor.save_pretrained(directory)
    render_model_card(result.model, provenance=readme, tags=["converted"]).save(directory / "README.md")


# --------------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="original {'model': state_dict} file (e.g. model_base.pth)")
    parser.add_argument("--output", required=True, help="directory to write (absent or empty unless --overwrite)")
    parser.add_argument("--original-config", help="JSON of the original yaml keys, med json content under med_config")
    parser.add_argument("--tokenizer", help="the WordPiece vocab.txt (or tokenizer directory) of the checkpoint")
    parser.add_argument(
        "--head", choices=HEAD_CHOICES, default="auto",
        help="auto: the head matching the checkpoint; model: VlpBlipModel (encoders, ITC/ITM); caption: "
        "VlpBlipForConditionalGeneration (decoder); pretraining: VlpBlipForPretraining (everything, momentum towers, "
        "queues); retrieval: VlpBlipForImageTextRetrieval; nlvr2: VlpBlipForVisualReasoning; vqa: "
        "VlpBlipForQuestionAnswering",
    )
    parser.add_argument("--verify", action="store_true", help="compare with transformers' BLIP on random inputs")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> BlipConversion:
    args = parse_args(argv)
    return convert_blip_checkpoint(
        args.checkpoint,
        output=args.output,
        original_config=args.original_config,
        tokenizer=args.tokenizer,
        head=args.head,
        verify_outputs=args.verify,
        overwrite=args.overwrite,
        command=command_line(argv, program="python conversion/convert_blip.py"),
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
