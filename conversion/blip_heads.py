"""BLIP's conversion family: the original layouts (source kinds), the heads they convert to with their key rules, the
tie checks, the tokenizer and the comparison with transformers' BLIP.

Shared by ``convert_blip.py`` (original checkpoints) and ``blip_transformers.py`` (transformers BLIP directories,
whose tensors are first put back under the original names), so neither converter imports the other.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hf_vlp.models.blip.configuration_blip import VlpBlipConfig
from hf_vlp.models.blip.image_processing_blip import VlpBlipImageProcessor
from hf_vlp.models.blip.processing_blip import DEFAULT_PROMPT, VlpBlipProcessor, add_blip_special_tokens
from hf_vlp.utils.key_rules import bert_embedding_rules, bert_layer_rules, position_ids_rule

from conversion.common import ConversionError, Drop, MappedStateDict, MappingRule, Rename, load_bert_tokenizer
from conversion.common import fused_projection, map_state_dict, max_abs_differences
from conversion.rules import P, as_scalar, bert_prediction_head_rules
from conversion.rules import timm_vit_rules

VERIFY_ATOL = 1e-4

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
    """timm ViT ``visual_encoder{source}.*`` -> ``{target}transformer.*`` (ALBEF's ``models/vit.py``, as BLIP's)."""
    return timm_vit_rules(rf"visual_encoder{source}\.", target)


def med_rules(
    source: str,
    target: str | None = None,
    self_attention: str | None = None,
    *,
    drop_self_attention: str = "",
    drop_shared: str | None = None,
) -> list[MappingRule]:
    """A ``med.py`` ``BertModel`` under the regex prefix ``source`` -> ``{target}transformer.*`` of a
    :class:`~hf_vlp.models.blip.modeling_blip_text.MedTextTransformer`.

    ``self_attention`` is the target of the layers' ``attention.*``: ``"attn"`` (encoder role), ``"causal_attn"``
    (decoder role) or ``None`` (dropped, ``drop_self_attention`` saying why). ``drop_shared`` drops the embeddings,
    cross-attention and FFN with that reason instead of mapping them (the decoder's tied duplicates in pre-training,
    checked equal beforehand, or a part the head does not hold).
    """
    tower = f"{target or ''}transformer."
    if drop_shared is None:
        return [
            *bert_embedding_rules(source, tower, token_types=False),
            *bert_layer_rules(source, tower, self_attention, drop_self_attention=drop_self_attention),
        ]
    return [
        position_ids_rule(source),
        *bert_layer_rules(
            source, tower, self_attention, drop_self_attention=drop_self_attention, cross_attention=False, ffn=False
        ),
        Drop(source + r"(?:embeddings|encoder\.layer\.\d+\.(?:crossattention|intermediate|output))\..+", drop_shared),
    ]


def lm_head_rules(target: str | None, drop_reason: str = "") -> list[MappingRule]:
    """The decoder's LM head ``text_decoder.cls.predictions.*`` -> ``{target}*``, or all dropped with ``drop_reason``."""
    return bert_prediction_head_rules(r"text_decoder\.", target, drop_reason)


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
    """Feature queues as ``hf_vlp.objectives.momentum.FeatureQueue`` buffers; the single pointer (``queue_ptr`` in
    pre-training, ``ptr_queue`` in retrieval) goes to ``image_queue.ptr`` and is copied to the others by
    :func:`map_blip_state_dict`."""
    queues = "image|text|idx" if with_ids else "image|text"
    return [
        Rename(rf"(?P<q>{queues})_queue", r"\g<q>_queue.queue"),
        Rename(r"queue_ptr|ptr_queue", "image_queue.ptr", as_scalar),
    ]


def dropped(pattern: str, reason: str) -> list[MappingRule]:
    """Source keys a head does not hold, dropped on purpose with ``reason`` (shown in logs and the model card)."""
    return [Drop(pattern, reason)]


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
        fused_projection(layer + r"self(?P<b>[01])\.", ("key", "value"), out + r"attn\g<b>.kv"),
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
            f"conversion rules are ready in conversion/blip_heads.py).{hint}"
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


# --------------------------------------------------------------------------------------------------- tokenizer


def load_tokenizer(path: str | Path, vocab_size: int) -> Any:
    """BLIP's tokenizer: a lower-casing BERT tokenizer (a WordPiece ``vocab.txt`` or a tokenizer directory) with
    ``[DEC]``/``[ENC]`` added as the original ``init_tokenizer`` does; its size must equal the checkpoint's vocabulary."""
    tokenizer = load_bert_tokenizer(path)
    add_blip_special_tokens(tokenizer)
    if len(tokenizer) != vocab_size:
        raise ConversionError(
            f"The tokenizer has {len(tokenizer)} tokens with [DEC] and [ENC] added but the checkpoint's vocabulary has "
            f"{vocab_size}; pass the vocabulary the checkpoint was trained with (bert-base-uncased for the releases)."
        )
    return tokenizer


def build_processor(tokenizer: Any, config: VlpBlipConfig, prompt: str = DEFAULT_PROMPT) -> VlpBlipProcessor:
    """The processor of a converted model: BLIP's square bicubic resize at the model's resolution and ``tokenizer``."""
    size = config.vision_config.image_size
    return VlpBlipProcessor(VlpBlipImageProcessor(size={"height": size, "width": size}), tokenizer, prompt=prompt)


# --------------------------------------------------------------------------------------------------- conversion


@dataclass
class BlipConversion:
    """Result of a BLIP conversion (``convert_blip_checkpoint``, ``convert_transformers_blip``)."""

    model: Any
    processor: VlpBlipProcessor | None
    kind: str
    head: str
    dropped: dict[str, str]
    differences: dict[str, float] | None = None
    output: Path | None = None



# --------------------------------------------------------------------------------------------------- verification


def random_inputs(config: VlpBlipConfig, batch: int = 2, length: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random images and unpadded ``[CLS] words.. [SEP]`` rows without special tokens inside (verification inputs)."""
    vision, text = config.vision_config, config.text_config
    generator = torch.Generator().manual_seed(seed)
    length = min(length, text.max_position_embeddings)
    special = {getattr(text, name) for name in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id",
                                                "bos_token_id", "enc_token_id")}
    words = torch.tensor([index for index in range(text.vocab_size) if index not in special])
    input_ids = words[torch.randint(len(words), (batch, length), generator=generator)]
    input_ids[:, 0], input_ids[:, -1] = text.cls_token_id, text.sep_token_id
    pixel_values = torch.randn(batch, vision.num_channels, vision.image_size, vision.image_size, generator=generator)
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


@torch.no_grad()
def compare_with_transformers(model: torch.nn.Module, reference: torch.nn.Module, head: str) -> dict[str, float]:
    """Max |difference| between the converted model and transformers' on random inputs, the special first tokens
    given to transformers explicitly: decoder logits (``caption``), ITM logits and cosine similarities (``model``),
    question states and answer-decoder logits (``vqa``)."""
    text = model.config.text_config
    inputs = random_inputs(model.config)
    pixel_values, input_ids, mask = inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]

    def first(ids: torch.Tensor, token: int) -> torch.Tensor:
        ids = ids.clone()
        ids[:, 0] = token
        return ids

    if head == "caption":
        theirs = reference(pixel_values=pixel_values, input_ids=first(input_ids, text.bos_token_id), attention_mask=mask)
        ours = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=mask)
        return max_abs_differences({"decoder_logits": theirs.logits}, {"decoder_logits": ours.logits})
    if head == "model":
        itm = reference(input_ids=first(input_ids, text.enc_token_id), pixel_values=pixel_values, attention_mask=mask)
        cosine = reference(input_ids=input_ids, pixel_values=pixel_values, attention_mask=mask, use_itm_head=False)
        ours = model(input_ids, pixel_values, mask, output_itm=True)
        return max_abs_differences(
            {"itm_logits": itm.itm_score, "cosine_similarity": cosine.itm_score},
            {"itm_logits": ours.itm_logits, "cosine_similarity": ours.logits_per_image * model.temp},
        )
    images = reference.vision_model(pixel_values=pixel_values).last_hidden_state
    theirs_questions = reference.text_encoder(
        input_ids=first(input_ids, text.enc_token_id), attention_mask=mask, encoder_hidden_states=images
    ).last_hidden_state
    theirs_logits = reference.text_decoder(
        input_ids=first(input_ids, text.bos_token_id), attention_mask=mask, encoder_hidden_states=theirs_questions
    ).logits
    ours_questions = model.encode_question(pixel_values, input_ids, mask)
    ours_logits = model.decode_answers(input_ids, ours_questions, mask)
    return max_abs_differences(
        {"question_states": theirs_questions, "answer_decoder_logits": theirs_logits},
        {"question_states": ours_questions, "answer_decoder_logits": ours_logits},
    )
