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
import logging
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.models.blip.configuration_blip import BLIP_PRESETS, VlpBlipConfig
from hf_vlp.models.blip.processing_blip import DEFAULT_PROMPT, blip_special_token_ids
from hf_vlp.modules.vision import interpolate_grid_embeddings

from conversion.blip_heads import HEAD_CHOICES, SOURCE_DESCRIPTIONS, VERIFY_ATOL, BlipConversion, build_processor
from conversion.blip_heads import check_ties, compare_with_transformers, load_tokenizer, map_blip_state_dict
from conversion.blip_heads import model_class_of, resolve_head, source_kind
from conversion.blip_transformers import convert_transformers_blip
from conversion.common import NUMBER, POSITIVE_INT, TEXT, ConversionError, MappedStateDict
from conversion.common import check_config_fields, check_differences, converter_options, converter_parser
from conversion.common import format_differences, input_paths, load_mapped_state_dict, read_original_config
from conversion.common import read_original_source, run_cli
from conversion.common import write_conversion
from conversion.rules import to_transformers_vit_name

logger = logging.getLogger("conversion.blip")

HEAD_DIM = 64  # ViT-B/16, ViT-L/16 and BERT-base


# --------------------------------------------------------------------------------------------------- configuration


MED_CONFIG = ("med_config", "the med/bert json (configs/med_config.json)")
ORIGINAL_CONFIG = "the original yaml keys"
# the kinds of the fields the converter reads (checked before use: a wrong type is one line, not a traceback)
ORIGINAL_CONFIG_FIELDS = {
    "image_size": POSITIVE_INT, "vit_patch_size": POSITIVE_INT, "vit_num_heads": POSITIVE_INT,
    "queue_size": POSITIVE_INT, "alpha": NUMBER, "prompt": TEXT,
    "constructor_kwargs.embed_dim": POSITIVE_INT, "constructor_kwargs.momentum": NUMBER,
    "med_config.num_attention_heads": POSITIVE_INT, "med_config.hidden_act": TEXT, "med_config.layer_norm_eps": NUMBER,
    "med_config.hidden_dropout_prob": NUMBER, "med_config.attention_probs_dropout_prob": NUMBER,
}


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
    renamed = {to_transformers_vit_name(key): tensor for key, tensor in state_dict.items()}
    expected = reference.state_dict()
    missing = [key for key in expected if key not in renamed]
    if missing:
        raise ConversionError(f"Verification: transformers' BLIP needs keys the checkpoint lacks: {missing[:5]}")
    reference.load_state_dict({key: renamed[key] for key in expected}, strict=True)
    return reference


# --------------------------------------------------------------------------------------------------- conversion


def convert_blip_checkpoint(
    checkpoint: str | Path,
    output: str | Path | None = None,
    original_config: str | Path | Mapping[str, Any] | None = None,
    tokenizer: str | Path | None = None,
    head: str = "auto",
    verify: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    allow_non_finite: bool = False,
) -> BlipConversion:
    """Convert an original BLIP checkpoint (+ tokenizer) to the hf_vlp ``head``; write it to ``output`` if given.

    Every source key is mapped or explicitly dropped (``position_ids``, tied duplicates checked equal, weights the head
    does not hold) and every target key filled, or a :class:`ConversionError` names the keys and nothing is written.
    ``verify`` compares with transformers' BLIP built from the same original tensors (atol 1e-4). Tensors holding
    inf/NaN are refused unless ``allow_non_finite``.
    """
    if Path(checkpoint).is_dir():  # a transformers BLIP directory: conversion/blip_transformers.py
        if original_config is not None:
            raise ConversionError("--original-config applies to original checkpoints; a transformers directory has "
                                  "its own config.json.")
        return convert_transformers_blip(
            checkpoint, output, tokenizer, head, verify, overwrite, command, allow_non_finite=allow_non_finite
        )
    inputs = input_paths(checkpoint, original_config, tokenizer)
    source = read_original_source(checkpoint, "blip", inputs, output, overwrite, allow_non_finite)
    state_dict = source.state_dict
    if original_config is None:
        embedded = source.extra.get("config")
        original: Mapping[str, Any] = embedded if isinstance(embedded, dict) else {}
        if not isinstance(original.get("med_config", {}), dict):  # the training scripts store the json's path
            original = {key: value for key, value in original.items() if key != "med_config"}
        described = f"The config stored in {source.path}"
    elif isinstance(original_config, Mapping):
        original, described = original_config, "original_config"
    else:
        original = read_original_config(original_config, ORIGINAL_CONFIG, nested=MED_CONFIG)
        described = f"Original config {original_config}"
    check_config_fields(original, ORIGINAL_CONFIG_FIELDS, described)
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
        processor = build_processor(blip_tokenizer, config, prompt=original.get("prompt", DEFAULT_PROMPT))
    resized = resize_position_embeddings(mapped, config)
    model = model_class_of(head)(config)
    load_mapped_state_dict(model, mapped)
    model.eval()
    differences = None
    if verify:
        if head not in ("model", "caption"):
            raise ConversionError(f"--verify compares with transformers' BLIP, which has no counterpart of --head {head}.")
        if resized:
            raise ConversionError("--verify needs the checkpoint's own resolution; drop image_size from the config.")
        differences = compare_with_transformers(model, transformers_reference(state_dict, config, head), head)
        check_differences(differences, VERIFY_ATOL, "transformers' BLIP")
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
        result.output = write_conversion(output, model, processor, readme, overwrite, inputs)
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


# --------------------------------------------------------------------------------------------------- CLI


OPTION_HELP = {
    "checkpoint": "original {'model': state_dict} file (e.g. model_base.pth) or a transformers BLIP directory",
    "original_config": "JSON of the original yaml keys, med json content under med_config",
    "tokenizer": "the WordPiece vocab.txt (or tokenizer directory) of the checkpoint",
    "verify": "compare with transformers' BLIP on random inputs (atol 1e-4)",
    "head": "auto: the head matching the checkpoint; model: VlpBlipModel (encoders, ITC/ITM); caption: "
    "VlpBlipForConditionalGeneration (decoder); pretraining: VlpBlipForPretraining (everything, momentum towers, "
    "queues); retrieval: VlpBlipForImageTextRetrieval; nlvr2: VlpBlipForVisualReasoning; vqa: "
    "VlpBlipForQuestionAnswering",
}


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    return converter_parser(__doc__, OPTION_HELP, heads=HEAD_CHOICES, prog=prog).parse_args(argv)


def main(argv: Sequence[str] | None = None, program: str = "python conversion/convert_blip.py") -> BlipConversion:
    """``convert_blip.py`` / ``hf-vlp convert blip``: convert as the command line says."""
    args = parse_args(argv, program)
    return convert_blip_checkpoint(**converter_options(args, argv, program), head=args.head)


if __name__ == "__main__":
    sys.exit(run_cli(main))