"""Convert an original VLMo checkpoint (microsoft/unilm vlmo/: the released ``.pt`` files are bare state dicts; a
PyTorch Lightning ``.ckpt`` holds ``state_dict`` and ``hyper_parameters.config``; DeepSpeed's ``{'module': ...}`` and
``{'model': ...}`` are read as the original's loader reads them) to hf_vlp's VLMo, plus a ``VlpVlmoProcessor``.

The head is chosen from the head modules the checkpoint holds, as the releases differ only in them: pre-training
``vlmo_*_224.pt`` (``mlm_score`` + ``itm_score`` + both contrasts' ``itc_*``) -> ``VlpVlmoForPretraining``; the
text-only stage ``*_stage2.pt`` (``mlm_score`` alone, no VL-FFN, 196 text positions) -> ``VlpVlmoForMaskedLM``;
``*_480_vqa.pt`` (``vqa_classifier``) -> ``VlpVlmoForQuestionAnswering``; ``*_384_nlvr2.pt`` (``nlvr2_classifier``,
three modality rows, the third becoming ``second_image_modality_embedding``) -> ``VlpVlmoForVisualReasoning``;
``*_384_coco.pt`` / ``*_384_f30k.pt`` (``itc_image_proj``, ``itc_text_proj``, ``logit_scale``) ->
``VlpVlmoForImageTextRetrieval``; none -> ``VlpVlmoModel``. A checkpoint holding several tasks' heads needs ``--head``;
the weights the head does not hold are dropped by name. Two kinds of tensors the releases lack are initialised fresh,
named in the log, the result (``initialized``) and the model card: the retrieval head's ITM head (the released
retrieval models rank with the dual encoder alone) and the dual encoder's projections and temperature of the
checkpoints trained without them (VQA, NLVR2, text-only stage).

Sizes come from the tensor shapes: width from ``transformer.cls_token``, depth from the blocks, the VL-FFN's first
block from the first ``mlp_vl``, the head count from the relative-position table's columns / depth, the patch grid from
its rows (``rows - 2 * max_text_len_of_initckpt - 5 = (2w - 1)^2``, 196 text rows in every release) or the config's
``image_size``, the text length from the config's ``max_text_len`` or the stored BERT positions. VLMo-Base-plus has no
table (absolute positions, no layer scale): its head count comes from ``--variant base_plus``, the config's
``model_arch`` (``vlmo_base_plus_patch16``) or a ``model_arch_kwargs`` object. The four index tensors the releases
carry are checked against the indices the converted model builds, then dropped. ``--answers`` names the VQA answers
(JSON, id -> answer). ``--verify`` runs the original tensors through transformers' own BEiT layers
(:mod:`conversion.vlmo_reference`) and compares.

    python conversion/convert_vlmo.py --checkpoint vlmo_base_patch16_480_vqa.pt --output out/vlmo-vqa \\
        --tokenizer bert-base-uncased/vocab.txt --answers answers.json --verify
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.models.vlmo.configuration_vlmo import VLMO_PRESETS, VlpVlmoConfig
from hf_vlp.models.vlmo.image_processing_vlmo import VlpVlmoImageProcessor
from hf_vlp.models.vlmo.modeling_vlmo import VlpVlmoForMaskedLM, VlpVlmoForQuestionAnswering
from hf_vlp.models.vlmo.modeling_vlmo import VlpVlmoForVisualReasoning, VlpVlmoModel
from hf_vlp.models.vlmo.modeling_vlmo_pretraining import VlpVlmoForImageTextRetrieval, VlpVlmoForPretraining
from hf_vlp.models.vlmo.processing_vlmo import VlpVlmoProcessor
from hf_vlp.modules.relative_position import fused_relative_position_index, multimodal_table_rows
from hf_vlp.modules.relative_position import num_relative_distances, relative_position_index
from hf_vlp.modules.relative_position import text_relative_position_index

from conversion.common import NON_NEGATIVE_INT, NUMBER, POSITIVE_INT, TEXT, ConversionError, Drop, MappedStateDict
from conversion.common import MappingRule, Rename, check_config_fields, check_differences, converter_options
from conversion.common import converter_parser, input_paths, load_mapped_state_dict, map_state_dict
from conversion.common import max_abs_differences, run_cli, write_conversion
from conversion.lightning_releases import MODALITY_ROWS, HeadCatalog, conversion_provenance, default_special_ids
from conversion.lightning_releases import first_two_rows, lightning_config, load_sized_bert_tokenizer, make_config
from conversion.lightning_releases import modality_table_rows, read_answers, read_lightning_source, require_key
from conversion.lightning_releases import special_token_ids
from conversion.rules import VLMO_INDEX_BUFFERS, vlmo_head_rules, vlmo_rules
from conversion.vlmo_reference import converted_outputs, output_names, random_inputs, reference_outputs

logger = logging.getLogger("conversion.vlmo")

VERIFY_ATOL = 1e-4
VERIFIED_AGAINST = "the original tensors run through transformers' BEiT layers (one BeitLayer per expert)"
TEXT_TABLE_LENGTH = 196  # max_text_len_of_initckpt of every release: the text rows were learned for 196 tokens
LAYER_NORM_EPS = 1e-6  # every norm of the original's MultiWayTransformer
LAYER_SCALE = 0.1  # layer_scale_init_values of vlmo_base/large_patch16 (the value only matters at initialisation)
VLMO_STATE_DICT = "a VLMo state dict (microsoft/unilm's VLMo LightningModule)"


# --------------------------------------------------------------------------------------------------- heads

HEADS = ("auto", "pretraining", "masked_lm", "vqa", "nlvr2", "retrieval", "model")
MODEL_CLASSES: dict[str, type] = {
    "pretraining": VlpVlmoForPretraining, "masked_lm": VlpVlmoForMaskedLM, "vqa": VlpVlmoForQuestionAnswering,
    "nlvr2": VlpVlmoForVisualReasoning, "retrieval": VlpVlmoForImageTextRetrieval, "model": VlpVlmoModel,
}
# the original's head modules (state-dict prefixes of the VLMo LightningModule) and what each head needs
VLMO_HEADS = HeadCatalog(
    model_classes=MODEL_CLASSES,
    modules={
        "mlm_score": "the MLM head", "itm_score": "the ITM head",
        "itc": "the dual encoder's projections and temperature",
        "itc_vl": "the VL-FFN contrast's projections and temperature",
        "vqa_classifier": "the VQA classifier", "nlvr2_classifier": "the NLVR2 classifier",
    },
    required={
        "pretraining": ("mlm_score", "itm_score", "itc", "itc_vl"), "masked_lm": ("mlm_score",),
        "vqa": ("vqa_classifier",), "nlvr2": ("nlvr2_classifier",), "retrieval": ("itc",), "model": (),
    },
    keys={
        "itc": ("itc_image_proj.", "itc_text_proj.", "logit_scale"),
        "itc_vl": ("itc_vl_image_proj.", "itc_vl_text_proj.", "logit_vl_scale"),
    },
)
# what each head keeps (the rest is dropped by name): the dual encoder's projections belong to every head's model,
# the ITM head to retrieval too (its optional fused re-ranking)
KEPT_MODULES = {
    "pretraining": ("mlm_score", "itm_score", "itc", "itc_vl"), "masked_lm": ("mlm_score", "itc"),
    "vqa": ("vqa_classifier", "itc"), "nlvr2": ("nlvr2_classifier", "itc"), "retrieval": ("itc", "itm_score"),
    "model": ("itc",),
}
INDEX_CHECKED = "an index of the original, checked equal to the model's own"
NO_DUAL_ENCODER = (
    "initialised fresh: the checkpoint holds no dual-encoder projections (itc_image_proj, itc_text_proj, logit_scale; "
    "VQA, NLVR2 and text-only checkpoints have none), so the image/text features and the dual encoder's scores are "
    "untrained"
)
NO_ITM_HEAD = (
    "initialised fresh: the checkpoint holds no ITM head (itm_score; the released retrieval models rank with the "
    "dual encoder alone), so re-ranking with k needs it trained first (retrieval_itm_weight)"
)


def task_heads(modules: Sequence[str]) -> list[str]:
    """The heads the checkpoint's head modules were trained for (the releases): VQA, NLVR2, pre-training (MLM + ITM),
    masked LM (MLM alone: the text-only stage) or retrieval (the dual encoder's projections and no other task's
    head; every head keeps them)."""
    heads = [head for module, head in (("vqa_classifier", "vqa"), ("nlvr2_classifier", "nlvr2")) if module in modules]
    if "mlm_score" in modules:
        heads.append("pretraining" if "itm_score" in modules else "masked_lm")
    elif "itc" in modules and not heads:
        heads.append("retrieval")
    return heads


def fresh_tensors(head: str, modules: Sequence[str]) -> dict[str, str]:
    """Target-name prefixes the checkpoint cannot fill and the model's initialisation may, with the reason."""
    model = "" if head == "model" else "vlmo."
    fresh = {}
    if "itc" not in modules:
        fresh.update({f"{model}{name}": NO_DUAL_ENCODER for name in ("image_projection.", "text_projection.")})
        fresh[f"{model}logit_scale"] = NO_DUAL_ENCODER
    if head == "retrieval" and "itm_score" not in modules:
        fresh["itm_head."] = NO_ITM_HEAD
    return fresh


# --------------------------------------------------------------------------------------------------- key rules


def vlmo_state_rules(head: str, relative: bool) -> list[MappingRule]:
    """Original names -> the ``head``'s: the index tensors (checked first, :func:`check_index_tensors`), the modality
    table's text and image rows (NLVR2's third row is :func:`map_vlmo_state_dict`'s), the backbone
    (:func:`~conversion.rules.vlmo_rules`), the head's modules (:func:`~conversion.rules.vlmo_head_rules`) and the
    other head modules dropped by name."""
    model = "" if head == "model" else "vlmo."
    return [
        *(Drop(re.escape(name), INDEX_CHECKED) for name in VLMO_INDEX_BUFFERS),
        Rename(re.escape(MODALITY_ROWS), f"{model}modality_embeddings.weight", first_two_rows),
        *vlmo_rules(model, relative),
        *vlmo_head_rules(head),
        *VLMO_HEADS.drop_rules(head, KEPT_MODULES[head]),
    ]


def map_vlmo_state_dict(state_dict: Mapping[str, torch.Tensor], head: str, relative: bool) -> MappedStateDict:
    """Apply :func:`vlmo_state_rules` strictly; NLVR2's third modality row becomes ``second_image_modality_embedding``
    (or is dropped by name for the other heads)."""
    mapped = map_state_dict(state_dict, vlmo_state_rules(head, relative))
    target = f"{'' if head == 'model' else 'vlmo.'}modality_embeddings.weight"
    VLMO_HEADS.split_modality_rows(mapped, state_dict, head, target)
    return mapped


def fill_fresh(mapped: MappedStateDict, model: torch.nn.Module, fresh: Mapping[str, str]) -> dict[str, str]:
    """Give the target keys of ``fresh``'s prefixes that the checkpoint does not fill the model's initial values;
    returns them with the reason (every other unfilled key stays an error of the strict load)."""
    initialized = {}
    for key, tensor in model.state_dict().items():
        reason = next((why for prefix, why in fresh.items() if key.startswith(prefix)), None)
        if reason is not None and key not in mapped.tensors:
            mapped.tensors[key] = tensor.detach().clone()
            mapped.sources[key] = ["(new: initialised fresh)"]
            initialized[key] = reason
    return initialized


# --------------------------------------------------------------------------------------------------- configuration

ORIGINAL_CONFIG = "the original sacred config (hyper_parameters['config'] of the checkpoint)"
ARCH_KWARGS = "model_arch_kwargs"
ORIGINAL_CONFIG_FIELDS = {
    "model_arch": TEXT, "image_size": POSITIVE_INT, "max_text_len": POSITIVE_INT,
    "max_text_len_of_initckpt": POSITIVE_INT, "vocab_size": POSITIVE_INT, "vqav2_label_size": POSITIVE_INT,
    "drop_path_rate": NUMBER, "mlm_prob": NUMBER,
    **{f"{ARCH_KWARGS}.{name}": POSITIVE_INT for name in ("patch_size", "embed_dim", "depth", "num_heads")},
    **{f"{ARCH_KWARGS}.{name}": NUMBER for name in ("mlp_ratio", "layer_scale_init_values", "norm_eps")},
    f"{ARCH_KWARGS}.vlffn_start_layer_index": NON_NEGATIVE_INT,
}
# the timm factories of the original's multiway_transformer.py, as the config's model_arch names them
ARCH_NAME = re.compile(r"vlmo_(?P<variant>base_plus|base|large)_patch(?P<patch>\d+)(_\d+)?")
# model_arch_kwargs (the MultiWayTransformer's arguments) -> our config's names
ARCH_KWARG_NAMES = {
    "embed_dim": "hidden_size", "depth": "num_hidden_layers", "num_heads": "num_attention_heads",
    "patch_size": "patch_size",
}
SIZE_NAMES = {
    "hidden_size": "width", "num_hidden_layers": "depth", "num_attention_heads": "head count",
    "intermediate_size": "FFN width", "patch_size": "patch size", "position_embedding_type": "position scheme",
    "layer_scale": "layer scale",
}


def flat_original_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The sacred config, also from a ``{"config": {...}, "model_arch_kwargs": {...}}`` JSON (the reference fixtures'
    ``original_config.json``)."""
    if isinstance(raw.get("config"), Mapping) and "model_arch" not in raw:
        flat = dict(raw["config"])
        if ARCH_KWARGS in raw:
            flat[ARCH_KWARGS] = raw[ARCH_KWARGS]
        return flat
    return dict(raw)


def check_original_config(original: Mapping[str, Any], described: str) -> None:
    """Type checks of the config fields the converter reads (one line each, not a traceback)."""
    kwargs = original.get(ARCH_KWARGS)
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ConversionError(f"{described}: {ARCH_KWARGS!r} must be a JSON object of the MultiWayTransformer's sizes.")
    check_config_fields(original, ORIGINAL_CONFIG_FIELDS, described)
    flags = [("whole_word_masking", original)]
    flags += [(name, kwargs) for name in ("use_abs_pos_emb", "need_relative_position_embed") if kwargs]
    for name, holder in flags:
        if name in holder and not isinstance(holder[name], bool):
            raise ConversionError(f"{described}: {name!r} must be true or false, got {holder[name]!r}.")


def preset_sizes(variant: str) -> dict[str, Any]:
    """The sizes of a released variant (:data:`~hf_vlp.models.vlmo.configuration_vlmo.VLMO_PRESETS`)."""
    if variant not in VLMO_PRESETS:
        raise ConversionError(f"Unknown VLMo variant {variant!r}; choose one of {sorted(VLMO_PRESETS)}.")
    config = VlpVlmoConfig.from_preset(variant)
    sizes = {name: getattr(config, name) for name in SIZE_NAMES if name != "layer_scale"}
    return {**sizes, "layer_scale": config.layer_scale_init_value is not None}


def size_claims(original: Mapping[str, Any], variant: str | None) -> list[tuple[str, dict[str, Any]]]:
    """What ``--variant``, the config's ``model_arch_kwargs`` and its ``model_arch`` name say of the sizes, in that
    order of precedence: ``[(source, {size: value})]``."""
    claims = []
    if variant is not None:
        claims.append((f"--variant {variant}", preset_sizes(variant)))
    kwargs = original.get(ARCH_KWARGS)
    if isinstance(kwargs, Mapping):
        sizes = {ours: kwargs[name] for name, ours in ARCH_KWARG_NAMES.items() if name in kwargs}
        if "mlp_ratio" in kwargs and "embed_dim" in kwargs:
            sizes["intermediate_size"] = int(kwargs["embed_dim"] * kwargs["mlp_ratio"])
        if "need_relative_position_embed" in kwargs:
            sizes["position_embedding_type"] = "relative" if kwargs["need_relative_position_embed"] else "absolute"
        if "layer_scale_init_values" in kwargs:
            sizes["layer_scale"] = kwargs["layer_scale_init_values"] is not None
        claims.append((f"the config's {ARCH_KWARGS}", sizes))
    name = original.get("model_arch")
    match = ARCH_NAME.fullmatch(name) if isinstance(name, str) else None
    if match:
        claims.append((f"model_arch {name!r}", {**preset_sizes(match["variant"]), "patch_size": int(match["patch"])}))
    return claims


def _block_indices(state_dict: Mapping[str, torch.Tensor], module: str = "") -> set[int]:
    pattern = re.compile(rf"transformer\.blocks\.(\d+)\.{re.escape(module)}")
    return {int(match.group(1)) for key in state_dict if (match := pattern.match(key))}


def block_layout(state_dict: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """``(depth, first block with a VL-FFN)``; the depth when no block has one (the text-only stage)."""
    blocks = _block_indices(state_dict)
    depth = len(blocks)
    if blocks != set(range(depth)):
        raise ConversionError(f"The blocks are numbered {sorted(blocks)}, not 0..{depth - 1}.")
    experts = _block_indices(state_dict, "mlp_vl.")
    vl_start = min(experts, default=depth)
    if experts != set(range(vl_start, depth)):
        raise ConversionError(
            f"The VL-FFN (mlp_vl) is in blocks {sorted(experts)}; VLMo holds it in every block from the first one "
            f"that has it to the last ({depth - 1})."
        )
    return depth, vl_start


def text_length(state_dict: Mapping[str, torch.Tensor], original: Mapping[str, Any]) -> int:
    """``max_text_len``: the config's, else the stored BERT position table's (dead with relative positions, but sized
    by it) or ``position_ids``; the stored ones must agree with the config's."""
    stored = [
        (key, tensor.shape[-1] if key.endswith("position_ids") else tensor.shape[0])
        for key in ("text_embeddings.position_embeddings.weight", "text_embeddings.position_ids")
        if (tensor := state_dict.get(key)) is not None
    ]
    length = original.get("max_text_len", stored[0][1] if stored else None)
    if length is None:
        raise ConversionError(
            "The text length is not stored (no text_embeddings.position_embeddings / position_ids) and the config "
            "gives no max_text_len: pass --original-config with the checkpoint's max_text_len."
        )
    for key, value in stored:
        if value != length:
            raise ConversionError(
                f"The config's max_text_len {length} contradicts the checkpoint's {key} ({value} positions); pass the "
                "config the checkpoint was trained with."
            )
    return length


def _patch_offsets(rows: int, text_rows: int) -> int | None:
    """``w`` when ``rows - 2 * text_rows - 5`` is the ``(2w - 1)^2`` patch offsets of a square grid, else None."""
    offsets = rows - multimodal_table_rows((1, 1), text_rows) + 1
    width = math.isqrt(max(offsets, 0))
    return (width + 1) // 2 if offsets >= 1 and width * width == offsets and width % 2 else None


def relative_grid(
    rows: int, patch: int, original: Mapping[str, Any], image_tokens: int | None = None
) -> tuple[int, int]:
    """``(grid side, text rows)`` of a relative-position table of ``rows = (2w-1)^2 + 5 + 2 * text`` rows: from the
    config's ``image_size`` when given, else from its ``max_text_len_of_initckpt`` or the releases' 196 text rows;
    when 196 does not fit either, from the stored ``relative_position_index``'s ``image_tokens`` (``1 + w^2``)."""
    text_rows = original.get("max_text_len_of_initckpt")
    image_size, source = original.get("image_size"), "the config's image_size"
    if image_size is None and text_rows is None and image_tokens and _patch_offsets(rows, TEXT_TABLE_LENGTH) is None:
        image_size, source = math.isqrt(image_tokens - 1) * patch, "the stored relative_position_index's grid"
    if image_size is not None:
        side = image_size // patch
        image_rows = multimodal_table_rows((side, side), 0)
        if image_size % patch or (text_rows is None and ((rows - image_rows) % 2 or rows <= image_rows)):
            raise ConversionError(
                f"{source} {image_size} (patch {patch}) does not fit the relative_position_bias_table's {rows} rows; "
                "pass the config the checkpoint was trained with."
            )
        text_rows = text_rows if text_rows is not None else (rows - image_rows) // 2
        if multimodal_table_rows((side, side), text_rows) != rows:
            raise ConversionError(
                f"relative_position_bias_table has {rows} rows, but a {side}x{side} grid ({source} {image_size}) and "
                f"text rows for {text_rows} tokens (max_text_len_of_initckpt) make "
                f"{multimodal_table_rows((side, side), text_rows)}; pass the config the checkpoint was trained with."
            )
        return side, text_rows
    text_rows = text_rows if text_rows is not None else TEXT_TABLE_LENGTH
    side = _patch_offsets(rows, text_rows)
    if side is None:
        raise ConversionError(
            f"relative_position_bias_table has {rows} rows: less 2 x {text_rows} text rows (max_text_len_of_initckpt) "
            f"and 5 they are not the (2w-1)^2 patch offsets of a square grid. Pass --original-config with the "
            "checkpoint's image_size (and max_text_len_of_initckpt)."
        )
    return side, text_rows


def vlmo_config(
    state_dict: Mapping[str, torch.Tensor],
    original: Mapping[str, Any],
    head: str,
    variant: str | None = None,
    special_ids: Mapping[str, int | None] | None = None,
    id2label: Mapping[int, str] | None = None,
) -> VlpVlmoConfig:
    """``VlpVlmoConfig`` from the tensor shapes; the head count of a variant without relative-position table from
    ``variant``, ``model_arch_kwargs`` or ``model_arch`` (:func:`size_claims`, each checked against the shapes);
    training settings (drop path, MLM masking) from the original config."""
    require = functools.partial(require_key, state_dict, what=VLMO_STATE_DICT)
    width = require("transformer.cls_token").shape[-1]
    patch_weight = require("transformer.patch_embed.proj.weight")
    patch, channels = patch_weight.shape[-1], patch_weight.shape[1]
    depth, vl_start = block_layout(state_dict)
    words = require("text_embeddings.word_embeddings.weight")
    relative = "relative_position_bias_table" in state_dict
    measured: dict[str, Any] = {
        "hidden_size": width, "num_hidden_layers": depth, "patch_size": patch,
        "intermediate_size": require("transformer.blocks.0.mlp_imag.fc1.weight").shape[0],
        "position_embedding_type": "relative" if relative else "absolute",
        "layer_scale": "transformer.blocks.0.gamma_1" in state_dict,
    }
    claims = size_claims(original, variant)
    described = "the config"
    if relative:
        rows, columns = state_dict["relative_position_bias_table"].shape
        if columns % depth:
            raise ConversionError(
                f"relative_position_bias_table has {columns} columns, not a head count times the {depth} blocks."
            )
        measured["num_attention_heads"] = columns // depth
        stored = state_dict.get("relative_position_index")
        side, text_rows = relative_grid(rows, patch, original, stored.shape[0] if stored is not None else None)
    else:
        positions = require("transformer.pos_embed").shape[1] - 1
        side, text_rows = math.isqrt(positions), original.get("max_text_len_of_initckpt", TEXT_TABLE_LENGTH)
        if side * side != positions:
            raise ConversionError(f"transformer.pos_embed has {positions} patch positions, not a square grid.")
        given = [(source, sizes["num_attention_heads"]) for source, sizes in claims if "num_attention_heads" in sizes]
        if not given:
            raise ConversionError(
                "The attention head count is not stored in the weights of a VLMo without relative-position table "
                "(VLMo-Base-plus: absolute positions) and no variant is named. Pass --variant base_plus (16 heads), or "
                "an --original-config whose model_arch names the variant (vlmo_base_plus_patch16) or whose "
                "model_arch_kwargs hold num_heads."
            )
        described, measured["num_attention_heads"] = given[0]
    for source, sizes in claims:
        for name, value in sizes.items():
            if name in measured and measured[name] != value:
                raise ConversionError(
                    f"{source} has {SIZE_NAMES[name]} {value}, but the checkpoint's is {measured[name]} "
                    f"(from {described if name == 'num_attention_heads' and not relative else 'the tensor shapes'})."
                )
    if "image_size" in original and original["image_size"] != side * patch:
        raise ConversionError(
            f"The config's image_size {original['image_size']} contradicts the checkpoint's {side}x{side} grid of "
            f"{patch}-pixel patches ({side * patch} px)."
        )
    if "vocab_size" in original and original["vocab_size"] != words.shape[0]:
        raise ConversionError(
            f"The config's vocab_size {original['vocab_size']} contradicts the checkpoint's {words.shape[0]}."
        )
    kwargs = original.get(ARCH_KWARGS) or {}
    layer_scale = (kwargs.get("layer_scale_init_values") or LAYER_SCALE) if measured["layer_scale"] else None
    settings: dict[str, Any] = dict(
        hidden_size=width, intermediate_size=measured["intermediate_size"], num_hidden_layers=depth,
        num_attention_heads=measured["num_attention_heads"], layer_norm_eps=kwargs.get("norm_eps", LAYER_NORM_EPS),
        vl_ffn_start_layer=vl_start, layer_scale_init_value=layer_scale,
        position_embedding_type=measured["position_embedding_type"], relative_position_text_length=text_rows,
        image_size=side * patch, patch_size=patch, num_channels=channels, vocab_size=words.shape[0],
        max_text_length=text_length(state_dict, original), modality_type_vocab_size=2,
        type_vocab_size=require("text_embeddings.token_type_embeddings.weight").shape[0],
    )
    if "drop_path_rate" in original:  # the original's BERT embeddings drop with the same rate
        settings["drop_path_rate"] = settings["embedding_dropout_prob"] = original["drop_path_rate"]
    if "mlm_prob" in original:
        settings["mlm_probability"] = original["mlm_prob"]
    if "whole_word_masking" in original:
        settings["whole_word_masking"] = original["whole_word_masking"]
    settings.update(special_ids if special_ids is not None else default_special_ids(words.shape[0]))
    if head == "nlvr2":
        settings["id2label"] = {0: "False", 1: "True"}
    elif id2label is not None:
        settings["id2label"] = dict(id2label)
    elif "vqa_classifier.3.weight" in state_dict:
        settings["num_labels"] = state_dict["vqa_classifier.3.weight"].shape[0]
    elif "vqav2_label_size" in original:
        settings["num_labels"] = original["vqav2_label_size"]
    if width % settings["num_attention_heads"]:
        raise ConversionError(f"The width {width} cannot be split into {settings['num_attention_heads']} heads.")
    return make_config(VlpVlmoConfig, settings)


def check_index_tensors(state_dict: Mapping[str, torch.Tensor], config: VlpVlmoConfig) -> list[str]:
    """Compare the index tensors the checkpoint stores (:data:`~conversion.rules.VLMO_INDEX_BUFFERS`) with the ones
    the converted model builds from the inferred sizes: a difference means those sizes are wrong. Returns the names
    checked."""
    grid, length, text_rows = config.patch_grid, config.max_text_length, config.relative_position_text_length
    built = {"text_embeddings.position_ids": torch.arange(length)[None]}
    if config.uses_relative_positions:
        built["relative_position_index"] = relative_position_index(grid)
        built["text_relative_position_index"] = text_relative_position_index(
            length, text_rows, num_relative_distances(grid)
        )
        built["text_imag_relative_position_index"] = fused_relative_position_index(length, grid, text_rows)
    sizes = (
        f"a {grid[0]}x{grid[1]} patch grid (image_size {config.image_size}), {length} text tokens (max_text_len)"
        + (f", text rows for {text_rows} tokens (max_text_len_of_initckpt)" if config.uses_relative_positions else "")
    )
    checked = []
    for name in VLMO_INDEX_BUFFERS:
        if name not in state_dict:
            continue
        stored, expected = state_dict[name], built.get(name)
        if expected is None:
            raise ConversionError(
                f"The checkpoint stores {name}, an index into a relative-position table, but has no "
                "relative_position_bias_table; it is not a VLMo state dict as the original saves it."
            )
        if tuple(stored.shape) != tuple(expected.shape) or not torch.equal(stored.double(), expected.double()):
            differs = (
                f"has shape {list(stored.shape)} where the model's is {list(expected.shape)}"
                if tuple(stored.shape) != tuple(expected.shape)
                else f"differs at {int((stored.double() != expected.double()).sum())} positions"
            )
            raise ConversionError(
                f"The checkpoint's {name} {differs}, built for {sizes}: the sizes were inferred wrongly. Pass "
                "--original-config with the checkpoint's image_size, max_text_len and max_text_len_of_initckpt."
            )
        checked.append(name)
    return checked


# --------------------------------------------------------------------------------------------------- conversion


def build_processor(tokenizer: Any, config: VlpVlmoConfig) -> VlpVlmoProcessor:
    """VLMo's processor: square bicubic resize to the model's ``image_size``, text padded to ``max_text_length``."""
    return VlpVlmoProcessor(VlpVlmoImageProcessor(size=config.image_size), tokenizer, max_length=config.max_text_length)


@dataclass
class VlmoConversion:
    """Result of :func:`convert_vlmo_checkpoint`; ``initialized`` names the tensors the checkpoint lacked and the model
    initialised (with the reason)."""

    model: (
        VlpVlmoForPretraining | VlpVlmoForMaskedLM | VlpVlmoForQuestionAnswering | VlpVlmoForVisualReasoning
        | VlpVlmoForImageTextRetrieval | VlpVlmoModel
    )
    processor: VlpVlmoProcessor | None
    head: str
    dropped: dict[str, str]
    differences: dict[str, float] | None = None  # None when no verification ran
    output: Path | None = None
    initialized: dict[str, str] = field(default_factory=dict)


def verify_conversion(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], head: str, modules: Sequence[str]
) -> dict[str, float]:
    """Max |difference| between the converted model and the original tensors run through transformers' BEiT layers
    (:mod:`conversion.vlmo_reference`) on random inputs; raises above :data:`VERIFY_ATOL`."""
    names = output_names(head, dual_encoder="itc" in modules, itm="itm_score" in modules)
    inputs = random_inputs(model.config)
    reference = reference_outputs(state_dict, model.config, inputs, names)
    differences = max_abs_differences(reference, converted_outputs(model, inputs, names))
    return check_differences(differences, VERIFY_ATOL, VERIFIED_AGAINST)


def convert_vlmo_checkpoint(
    checkpoint: str | Path,
    output: str | Path | None = None,
    original_config: str | Path | Mapping[str, Any] | None = None,
    tokenizer: str | Path | None = None,
    *,
    head: str = "auto",
    variant: str | None = None,
    answers: str | Path | None = None,
    verify: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    allow_non_finite: bool = False,
) -> VlmoConversion:
    """Convert an original VLMo checkpoint (+ tokenizer, as a ``VlpVlmoProcessor``) to the hf_vlp ``head``; write it
    to ``output`` if given.

    Every source key is mapped or dropped by name (the index tensors after :func:`check_index_tensors`, the dead BERT
    position table of the relative-position variants, the head modules the head does not hold, NLVR2's third modality
    row outside the NLVR2 head) and every target key filled (or initialised fresh where no release has it:
    :func:`fresh_tensors`), or a :class:`ConversionError` names the keys and nothing is written. ``variant`` (``base``,
    ``base_plus``, ``large``) names the sizes the shapes do not tell; ``answers`` the VQA answers; ``verify``
    compares with the original tensors run through transformers' BEiT layers (atol 1e-4).
    """
    inputs = input_paths(checkpoint, original_config, tokenizer, answers)
    source = read_lightning_source(checkpoint, "vlmo", inputs, output, overwrite, allow_non_finite)
    state_dict = source.state_dict
    raw, described = lightning_config(source, original_config, ORIGINAL_CONFIG)
    original = flat_original_config(raw)
    check_original_config(original, described)
    modules = VLMO_HEADS.present(state_dict)
    rows = modality_table_rows(state_dict, "VLMo", VLMO_STATE_DICT)
    head = VLMO_HEADS.resolve(modules, head, task_heads(modules), rows)
    vocab_size = require_key(state_dict, "text_embeddings.word_embeddings.weight", VLMO_STATE_DICT).shape[0]
    bert_tokenizer = load_sized_bert_tokenizer(tokenizer, vocab_size) if tokenizer is not None else None
    id2label = None
    if answers is not None:
        if head != "vqa":
            raise ConversionError(f"--answers names the VQA answers; --head {head} has no VQA classifier.")
        id2label = read_answers(answers, state_dict["vqa_classifier.3.weight"].shape[0])
    special_ids = special_token_ids(bert_tokenizer) if bert_tokenizer is not None else None
    config = vlmo_config(state_dict, original, head, variant, special_ids, id2label)
    checked = check_index_tensors(state_dict, config)
    mapped = map_vlmo_state_dict(state_dict, head, config.uses_relative_positions)
    model = MODEL_CLASSES[head](config)
    initialized = fill_fresh(mapped, model, fresh_tensors(head, modules))
    load_mapped_state_dict(model, mapped)
    model.eval()
    for reason in sorted(set(initialized.values())):
        keys = ", ".join(key for key, why in initialized.items() if why == reason)
        logger.warning(f"Not in the checkpoint: {keys}: {reason}.")
    differences = verify_conversion(model, state_dict, head, modules) if verify else None
    processor = build_processor(bert_tokenizer, config) if bert_tokenizer is not None else None
    if processor is None:
        logger.warning("No tokenizer given (--tokenizer): writing the model without a processor.")
    if head == "vqa" and id2label is None:
        logger.warning("No --answers given: the VQA answers are named LABEL_0 ... (pass the answers as JSON).")
    logger.info(
        f"Converted to {type(model).__name__}: mapped {len(mapped.tensors) - len(initialized)} tensors, dropped "
        f"{len(mapped.dropped)} ({'; '.join(sorted(set(mapped.dropped.values())))}); index tensors checked: "
        f"{', '.join(checked) or 'none stored'}."
    )
    result = VlmoConversion(model, processor, head, mapped.dropped, differences, initialized=initialized)
    if output is not None:
        note = " ".join(
            f"Initialised fresh, not in the checkpoint: {', '.join(f'`{key}`' for key in initialized)} "
            f"({reason.removeprefix('initialised fresh: ')})."
            for reason in sorted(set(initialized.values()))
        )
        readme = conversion_provenance(
            f"`{source.path.name}` (microsoft/unilm VLMo checkpoint holding "
            f"{', '.join(VLMO_HEADS.shown(module) for module in modules) or 'no head module'})",
            command or f"convert_vlmo_checkpoint({source.path.name!r}, ...)", result,
            f"Compared with {VERIFIED_AGAINST} on random inputs", note,
        )
        result.output = write_conversion(output, model, processor, readme, overwrite, inputs)
    return result


# --------------------------------------------------------------------------------------------------- CLI


OPTION_HELP = {
    "checkpoint": "original VLMo weights: a released .pt (bare state dict), a Lightning .ckpt, or {'module'|'model': "
    "...}",
    "original_config": "the sacred config as JSON (default: the checkpoint's hyper_parameters['config']); a "
    "model_arch_kwargs object in it gives the MultiWayTransformer's sizes",
    "tokenizer": "the WordPiece vocab.txt (or tokenizer directory) of the checkpoint (bert-base-uncased)",
    "verify": "compare with the original tensors run through transformers' BEiT layers, on random inputs (atol 1e-4)",
    "head": "auto: the checkpoint's task - VlpVlmoForQuestionAnswering (vqa_classifier), VlpVlmoForVisualReasoning "
    "(nlvr2_classifier), VlpVlmoForPretraining (mlm_score + itm_score), VlpVlmoForMaskedLM (mlm_score alone), "
    "VlpVlmoForImageTextRetrieval (itc_*_proj without MLM), VlpVlmoModel (no head); a checkpoint holding several "
    "tasks' heads needs one named",
}


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = converter_parser(__doc__, OPTION_HELP, heads=HEADS, prog=prog)
    parser.add_argument(
        "--variant", choices=sorted(VLMO_PRESETS),
        help="the released variant, for the sizes the weights do not store (VLMo-Base-plus's head count); checked "
        "against the shapes (default: from the config's model_arch or model_arch_kwargs)",
    )
    parser.add_argument("--answers", help="the VQA answers as JSON (id -> answer)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, program: str = "python conversion/convert_vlmo.py") -> VlmoConversion:
    """``convert_vlmo.py`` / ``hf-vlp convert vlmo``: convert as the command line says."""
    args = parse_args(argv, program)
    return convert_vlmo_checkpoint(
        **converter_options(args, argv, program), head=args.head, variant=args.variant, answers=args.answers
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
