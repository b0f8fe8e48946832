"""Convert an original ViLT checkpoint (dandelin/ViLT: a PyTorch Lightning ``.ckpt`` holding ``state_dict`` and
``hyper_parameters.config``) or a transformers ViLT directory to hf_vlp's ViLT, plus a ``VlpViltProcessor``.

The head is chosen from the head modules the checkpoint holds, as the releases differ only in them:
``vilt_200k_mlm_itm.ckpt`` (``mlm_score`` + ``itm_score``) -> ``VlpViltForPretraining``; ``vilt_vqa.ckpt``
(``vqa_classifier``) -> ``VlpViltForQuestionAnswering``; ``vilt_nlvr2.ckpt`` (``nlvr2_classifier``, three modality
rows, the third becoming ``second_image_modality_embedding``) -> ``VlpViltForVisualReasoning``; ``vilt_irtr_*.ckpt``
(``itm_score`` + ``rank_output``) -> ``VlpViltForImageTextRetrieval``. A checkpoint holding the heads of several tasks
needs ``--head``; any head whose weights the checkpoint holds can be asked for (``--head model`` keeps the encoder
alone, ``--head masked_lm`` the MLM head, ``--head retrieval`` on the pre-trained checkpoint starts ``rank_output`` as
the ITM "match" row, as the original's zero-shot retrieval); the weights the head does not hold are dropped by name.

Sizes come from the tensor shapes. Head counts are not stored in them: the original builds its ViT from the timm
variant named by the config's ``vit`` (``vit_base_patch32_384``: 12 heads, patch 32, a 384 px position grid), so the
head count comes from that name, from a ``_vit_variant`` entry of the config, or from ``--num-attention-heads``. The
config is the checkpoint's ``hyper_parameters.config`` or ``--original-config`` (the same sacred config as JSON).
``--answers`` names the VQA answers (the release's ``vqa_dict.json``: id -> answer). ``--verify`` runs the original
tensors through transformers' own ViLT modules with the original's LayerNorm epsilon at every site and compares.

A transformers ViLT directory (``save_pretrained`` of ``ViltForQuestionAnswering``,
``ViltForImagesAndTextClassification``, ``ViltForImageAndTextRetrieval``, ``ViltForMaskedLM`` or ``ViltModel``) converts
too: its keys are put back under the original names first (q/k/v fused into ``qkv``, the MLM decoder that transformers
ties to the word embeddings restored from them). transformers' ViLT has ONE ``layer_norm_eps`` for every LayerNorm,
where the original uses 1e-12 (text embeddings, MLM transform) and 1e-6 (ViT blocks, final norm): a transformers ViLT is
therefore not numerically the original, and the converted model takes the directory's epsilon at all those sites so
that it reproduces transformers' model (within 1e-5; the classifier LayerNorms keep 1e-5, as in both).
transformers' retrieval model has no ITM head: ours gets row 1 = ``rank_output`` and row 0 = 0.

    python conversion/convert_vilt.py --checkpoint vilt_vqa.ckpt --output out/vilt-vqa \\
        --tokenizer bert-base-uncased/vocab.txt --answers vqa_dict.json --verify
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.models.vilt.configuration_vilt import VlpViltConfig
from hf_vlp.models.vilt.image_processing_vilt import DEFAULT_SIZE_DIVISOR, LONGER_EDGE_RATIO, VlpViltImageProcessor
from hf_vlp.models.vilt.modeling_vilt import VlpViltForMaskedLM, VlpViltForQuestionAnswering
from hf_vlp.models.vilt.modeling_vilt import VlpViltForVisualReasoning, VlpViltModel
from hf_vlp.models.vilt.modeling_vilt_pretraining import VlpViltForImageTextRetrieval, VlpViltForPretraining
from hf_vlp.models.vilt.processing_vilt import VlpViltProcessor
from hf_vlp.utils.key_rules import bert_embedding_rules

from conversion.common import NUMBER, POSITIVE_INT, TEXT, ConversionError, MappedStateDict, MappingRule, Rename
from conversion.common import check_config_fields, check_differences, converter_options, converter_parser
from conversion.common import input_paths, load_mapped_state_dict, map_state_dict, positive_int, run_cli
from conversion.common import write_conversion
from conversion.lightning_releases import MODALITY_ROWS, HeadCatalog, default_special_ids, first_two_rows
from conversion.lightning_releases import lightning_config, make_config, modality_table_rows, read_answers
from conversion.lightning_releases import read_lightning_source, require_key, special_token_ids
from conversion.lightning_releases import conversion_provenance as provenance
from conversion.lightning_releases import load_sized_bert_tokenizer as load_tokenizer
from conversion.rules import P, timm_vit_rules

logger = logging.getLogger("conversion.vilt")

VERIFY_ATOL = 1e-4
VIT_LAYER_NORM_EPS = 1e-6  # every ViT variant of the original's vision_transformer.py


# --------------------------------------------------------------------------------------------------- heads

HEADS = ("auto", "pretraining", "masked_lm", "vqa", "nlvr2", "retrieval", "model")
MODEL_CLASSES: dict[str, type] = {
    "pretraining": VlpViltForPretraining, "masked_lm": VlpViltForMaskedLM, "vqa": VlpViltForQuestionAnswering,
    "nlvr2": VlpViltForVisualReasoning, "retrieval": VlpViltForImageTextRetrieval, "model": VlpViltModel,
}
# the original's head modules (state-dict prefixes of ViLTransformerSS) and what each head needs from the checkpoint
VILT_HEADS = HeadCatalog(
    model_classes=MODEL_CLASSES,
    modules={
        "mlm_score": "the MLM head", "itm_score": "the ITM head", "vqa_classifier": "the VQA classifier",
        "nlvr2_classifier": "the NLVR2 classifier", "rank_output": "the retrieval head",
    },
    required={
        "pretraining": ("mlm_score", "itm_score"), "masked_lm": ("mlm_score",), "vqa": ("vqa_classifier",),
        "nlvr2": ("nlvr2_classifier",), "retrieval": ("itm_score",), "model": (),
    },
)
# what each head keeps (the rest is dropped by name)
KEPT_MODULES = {**VILT_HEADS.required, "retrieval": ("itm_score", "rank_output")}
VILT_STATE_DICT = "a ViLT state dict (dandelin/ViLT's ViLTransformerSS)"


def head_modules(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The original head modules present in ``state_dict``."""
    return VILT_HEADS.present(state_dict)


def task_heads(modules: Sequence[str]) -> list[str]:
    """The heads the checkpoint's head modules were trained for (the release subsets): VQA, NLVR2, retrieval
    (``rank_output``, or an ITM head without MLM), pre-training (MLM + ITM) or masked LM (MLM alone)."""
    heads = [head for module, head in (("vqa_classifier", "vqa"), ("nlvr2_classifier", "nlvr2")) if module in modules]
    if "rank_output" in modules or ("itm_score" in modules and "mlm_score" not in modules):
        heads.append("retrieval")
    if "mlm_score" in modules:
        heads.append("pretraining" if "itm_score" in modules else "masked_lm")
    return heads


def resolve_head(modules: Sequence[str], head: str, modality_rows: int) -> str:
    """The head to write (:meth:`~conversion.lightning_releases.HeadCatalog.resolve` with :func:`task_heads`)."""
    return VILT_HEADS.resolve(modules, head, task_heads(modules), modality_rows)


# --------------------------------------------------------------------------------------------------- key rules


HEAD_RULES: dict[str, list[MappingRule]] = {
    "mlm_score": [
        Rename(r"mlm_score\.transform\.dense\." + P, r"mlm_head.dense.\g<p>"),
        Rename(r"mlm_score\.transform\.LayerNorm\." + P, r"mlm_head.norm.\g<p>"),
        Rename(r"mlm_score\.decoder\.weight", "mlm_head.decoder.weight"),  # not tied to the word embeddings
        Rename(r"mlm_score\.bias", "mlm_head.decoder.bias"),
    ],
    "itm_score": [Rename(r"itm_score\.fc\." + P, r"itm_head.\g<p>")],
    "vqa_classifier": [Rename(r"vqa_classifier\.(?P<i>[013])\." + P, r"classifier.\g<i>.\g<p>")],
    "nlvr2_classifier": [Rename(r"nlvr2_classifier\.(?P<i>[013])\." + P, r"classifier.\g<i>.\g<p>")],
    "rank_output": [Rename(r"rank_output\." + P, r"rank_output.\g<p>")],
}


def vilt_rules(head: str) -> list[MappingRule]:
    """Original ``ViLTransformerSS`` names -> the ``head``'s names: BERT's text embeddings (``position_ids`` dropped),
    the modality table's text and image rows, the timm ViT (``transformer.*``: class token, position grid, patch
    projection, blocks, final norm), the pooler and the head modules the head keeps (the others dropped by name)."""
    model = "" if head == "model" else "vilt."
    rules: list[MappingRule] = [
        *bert_embedding_rules(r"text_", f"{model}text_"),  # text_embeddings.* -> {model}text_embeddings.*
        Rename(re.escape(MODALITY_ROWS), f"{model}modality_embeddings.weight", first_two_rows),
        *timm_vit_rules(r"transformer\.", model),
        Rename(r"pooler\.dense\." + P, model + r"pooler.dense.\g<p>"),
    ]
    for module in KEPT_MODULES[head]:
        rules += HEAD_RULES[module]
    return rules + VILT_HEADS.drop_rules(head, KEPT_MODULES[head])


def modality_rows(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Rows of the modality table: 2 (text, image), or 3 in NLVR2 checkpoints."""
    return modality_table_rows(state_dict, "ViLT", VILT_STATE_DICT)


def map_vilt_state_dict(state_dict: Mapping[str, torch.Tensor], head: str) -> MappedStateDict:
    """Apply :func:`vilt_rules` strictly. NLVR2's third modality row becomes ``second_image_modality_embedding`` (or
    is dropped by name for the other heads); a retrieval head without ``rank_output`` gets the ITM head's "match" row,
    as the original initialises it."""
    mapped = map_state_dict(state_dict, vilt_rules(head))
    target = f"{'' if head == 'model' else 'vilt.'}modality_embeddings.weight"
    VILT_HEADS.split_modality_rows(mapped, state_dict, head, target)
    if head == "retrieval" and "rank_output.weight" not in mapped.tensors:
        for name in ("weight", "bias"):
            mapped.tensors[f"rank_output.{name}"] = state_dict[f"itm_score.fc.{name}"][1:].clone()
            mapped.sources[f"rank_output.{name}"] = [
                f"(new: itm_score.fc.{name} row 1, the match logit, as the original initialises rank_output)"
            ]
    return mapped


# --------------------------------------------------------------------------------------------------- configuration

ORIGINAL_CONFIG = "the original sacred config (hyper_parameters['config'] of the checkpoint)"
ORIGINAL_CONFIG_FIELDS = {
    "vit": TEXT, "hidden_size": POSITIVE_INT, "vocab_size": POSITIVE_INT, "max_text_len": POSITIVE_INT,
    "image_size": POSITIVE_INT, "drop_rate": NUMBER, "vqav2_label_size": POSITIVE_INT, "mlm_prob": NUMBER,
    "_vit_variant.num_heads": POSITIVE_INT, "_vit_variant.embed_dim": POSITIVE_INT, "_vit_variant.depth": POSITIVE_INT,
    "_vit_variant.patch_size": POSITIVE_INT, "_vit_variant.img_size": POSITIVE_INT, "_vit_variant.mlp_ratio": NUMBER,
    "_vit_variant.norm_layer": TEXT,
}
# the timm ViT families the original's vision_transformer.py names: width and head count
VIT_FAMILIES = {"base": (768, 12), "large": (1024, 16), "huge": (1280, 16)}
VIT_NAME = re.compile(r"vit_(?P<family>base|large|huge)_patch(?P<patch_size>\d+)_(?P<img_size>\d+)")


def require_tensor(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    return require_key(state_dict, key, VILT_STATE_DICT)


def _layer_count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({int(match.group(1)) for key in state_dict if (match := regex.match(key))})


def vit_variant(original: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The sizes of the ViT the original built, as far as its config tells them: a ``_vit_variant`` object, else the
    sizes a timm variant name (``vit``) implies; with where they come from."""
    variant = original.get("_vit_variant")
    if variant is not None:
        if not isinstance(variant, Mapping):
            raise ConversionError(f"_vit_variant must be a JSON object of the ViT's sizes, got {variant!r}.")
        return dict(variant), "the config's _vit_variant"
    name = original.get("vit")
    match = VIT_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        return {}, f"the ViT variant {name!r}" if name is not None else "the config (which names no ViT variant)"
    width, heads = VIT_FAMILIES[match["family"]]
    sizes = {"embed_dim": width, "num_heads": heads, "patch_size": int(match["patch_size"]),
             "img_size": int(match["img_size"])}
    return sizes, f"the ViT variant {name!r}"


def _variant_layer_norm_eps(variant: Mapping[str, Any]) -> float:
    """``norm_layer`` as ``"LayerNorm(eps=1e-6)"`` (the fixtures' note), else the ViT's 1e-6."""
    match = re.search(r"eps=([0-9.eE+-]+)", str(variant.get("norm_layer", "")))
    return float(match.group(1)) if match else VIT_LAYER_NORM_EPS


def check_original_config(original: Mapping[str, Any], described: str) -> None:
    """Type checks of the config fields the converter reads (one line each, not a traceback)."""
    check_config_fields(original, ORIGINAL_CONFIG_FIELDS, described)
    length = original.get("max_image_len")
    if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length == 0 or length < -1):
        raise ConversionError(
            f"{described}: 'max_image_len' must be -1 (every patch) or a positive integer, got {length!r}."
        )
    if "whole_word_masking" in original and not isinstance(original["whole_word_masking"], bool):
        value = original["whole_word_masking"]
        raise ConversionError(f"{described}: 'whole_word_masking' must be true or false, got {value!r}.")


def vilt_config(
    state_dict: Mapping[str, torch.Tensor],
    original: Mapping[str, Any],
    head: str,
    num_attention_heads: int | None = None,
    special_ids: Mapping[str, int | None] | None = None,
    id2label: Mapping[int, str] | None = None,
) -> VlpViltConfig:
    """``VlpViltConfig`` from the tensor shapes; the head count from ``num_attention_heads``, else the ViT variant
    (:func:`vit_variant`); training settings (dropout, patch sampling, masking) from the original config."""
    words = require_tensor(state_dict, "text_embeddings.word_embeddings.weight")
    vocab_size, width = words.shape
    positions = require_tensor(state_dict, "text_embeddings.position_embeddings.weight").shape[0]
    patch_weight = require_tensor(state_dict, "transformer.patch_embed.proj.weight")
    patch, channels = patch_weight.shape[-1], patch_weight.shape[1]
    grid_positions = require_tensor(state_dict, "transformer.pos_embed").shape[1] - 1
    grid = math.isqrt(grid_positions)
    if grid * grid != grid_positions:
        raise ConversionError(
            f"transformer.pos_embed has {grid_positions} patch positions, which is not a square grid."
        )
    layers = _layer_count(state_dict, r"transformer\.blocks\.(\d+)\.")
    intermediate = require_tensor(state_dict, "transformer.blocks.0.mlp.fc1.weight").shape[0]
    for name, value in (("hidden_size", width), ("vocab_size", vocab_size), ("max_text_len", positions)):
        if name in original and original[name] != value:
            raise ConversionError(f"The config's {name} {original[name]} contradicts the checkpoint's {value}.")
    variant, described = vit_variant(original)
    measured = {"embed_dim": width, "depth": layers, "patch_size": patch, "img_size": grid * patch}
    for name, value in measured.items():
        if name in variant and variant[name] != value:
            raise ConversionError(f"{described} has {name} {variant[name]}, but the checkpoint's ViT has {value}.")
    if "mlp_ratio" in variant and variant["mlp_ratio"] * width != intermediate:
        raise ConversionError(
            f"{described} has mlp_ratio {variant['mlp_ratio']}, but the checkpoint's MLP is {intermediate} wide for "
            f"width {width}."
        )
    heads = num_attention_heads if num_attention_heads is not None else variant.get("num_heads")
    if heads is None:
        raise ConversionError(
            f"The attention head count is not stored in the weights and {described} does not give it (the original "
            "builds its ViT from the timm variant named by the config's 'vit', e.g. vit_base_patch32_384: 12 heads). "
            "Pass --num-attention-heads N, or an --original-config naming a known variant or holding "
            "_vit_variant.num_heads."
        )
    if width % heads:
        raise ConversionError(f"The width {width} cannot be split into {heads} attention heads.")
    max_image_length = original.get("max_image_len", 200 if head in ("pretraining", "masked_lm") else -1)
    settings: dict[str, Any] = dict(
        hidden_size=width, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        layer_norm_eps=_variant_layer_norm_eps(variant), image_size=grid * patch, patch_size=patch,
        num_channels=channels, vocab_size=vocab_size, max_position_embeddings=positions,
        type_vocab_size=require_tensor(state_dict, "text_embeddings.token_type_embeddings.weight").shape[0],
        modality_type_vocab_size=2, max_image_length=max_image_length,
        hidden_dropout_prob=original.get("drop_rate", VlpViltConfig().hidden_dropout_prob),
    )
    if "mlm_prob" in original:
        settings["mlm_probability"] = original["mlm_prob"]
    if "whole_word_masking" in original:
        settings["whole_word_masking"] = original["whole_word_masking"]
    settings.update(special_ids if special_ids is not None else default_special_ids(vocab_size))
    if head == "nlvr2":
        settings["id2label"] = {0: "False", 1: "True"}
    elif id2label is not None:
        settings["id2label"] = dict(id2label)
    elif "vqa_classifier.3.weight" in state_dict:
        settings["num_labels"] = state_dict["vqa_classifier.3.weight"].shape[0]
    elif "vqav2_label_size" in original:
        settings["num_labels"] = original["vqav2_label_size"]
    return build_config(settings)


def build_config(settings: Mapping[str, Any]) -> VlpViltConfig:
    return make_config(VlpViltConfig, settings)


# --------------------------------------------------------------------------------------------------- processor


def build_processor(
    tokenizer: Any,
    config: VlpViltConfig,
    shortest_edge: int,
    size_divisor: int = DEFAULT_SIZE_DIVISOR,
    image_settings: Mapping[str, Any] | None = None,
) -> VlpViltProcessor:
    """ViLT's processor: shorter side ``shortest_edge`` (the original config's ``image_size``), longer side at most
    ``int(1333 / 800 * shortest_edge)``, sides floored to ``size_divisor``; text padded to the position table."""
    size = {"shortest_edge": shortest_edge, "longest_edge": int(LONGER_EDGE_RATIO * shortest_edge)}
    image_processor = VlpViltImageProcessor(size=size, size_divisor=size_divisor, **dict(image_settings or {}))
    return VlpViltProcessor(image_processor, tokenizer, max_length=config.max_position_embeddings)


# --------------------------------------------------------------------------------------------------- conversion


@dataclass
class ViltConversion:
    """Result of :func:`convert_vilt_checkpoint` (and :func:`convert_transformers_vilt`)."""

    model: (
        VlpViltForPretraining | VlpViltForMaskedLM | VlpViltForQuestionAnswering | VlpViltForVisualReasoning
        | VlpViltForImageTextRetrieval | VlpViltModel
    )
    processor: VlpViltProcessor | None
    head: str
    dropped: dict[str, str]
    differences: dict[str, float] | None = None  # None when no verification ran
    output: Path | None = None


def convert_vilt_checkpoint(
    checkpoint: str | Path,
    output: str | Path | None = None,
    original_config: str | Path | Mapping[str, Any] | None = None,
    tokenizer: str | Path | None = None,
    *,
    head: str = "auto",
    num_attention_heads: int | None = None,
    answers: str | Path | None = None,
    verify: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    allow_non_finite: bool = False,
) -> ViltConversion:
    """Convert an original ViLT checkpoint (+ tokenizer, as a ``VlpViltProcessor``) to the hf_vlp ``head``; write it to
    ``output`` if given. A directory is read as a transformers ViLT (:func:`convert_transformers_vilt`).

    Every source key is mapped or dropped by name (``position_ids``, the head modules the head does not hold, NLVR2's
    third modality row outside the NLVR2 head) and every target key filled, or a :class:`ConversionError` names the
    keys and nothing is written. ``answers`` (VQA) names the answers; ``num_attention_heads`` overrides the head count
    of the ViT variant; ``verify`` compares with transformers' ViLT run on the original tensors (atol 1e-4).
    """
    if Path(checkpoint).is_dir():
        given = [name for name, value in (("--original-config", original_config), ("--answers", answers),
                                          ("--num-attention-heads", num_attention_heads)) if value is not None]
        if given:
            raise ConversionError(f"{', '.join(given)} apply to original checkpoints; a transformers directory has its "
                                  "own config.json.")
        from conversion.vilt_transformers import convert_transformers_vilt  # it builds on this module

        return convert_transformers_vilt(checkpoint, output, tokenizer, head=head, verify=verify, overwrite=overwrite,
                                         command=command, allow_non_finite=allow_non_finite)
    inputs = input_paths(checkpoint, original_config, tokenizer, answers)
    source = read_lightning_source(checkpoint, "vilt", inputs, output, overwrite, allow_non_finite)
    state_dict = source.state_dict
    original, described = lightning_config(source, original_config, ORIGINAL_CONFIG)
    check_original_config(original, described)
    modules = head_modules(state_dict)
    head = resolve_head(modules, head, modality_rows(state_dict))
    mapped = map_vilt_state_dict(state_dict, head)
    vocab_size = require_tensor(state_dict, "text_embeddings.word_embeddings.weight").shape[0]
    bert_tokenizer = load_tokenizer(tokenizer, vocab_size) if tokenizer is not None else None
    id2label = None
    if answers is not None:
        if head != "vqa":
            raise ConversionError(f"--answers names the VQA answers; --head {head} has no VQA classifier.")
        id2label = read_answers(answers, state_dict["vqa_classifier.3.weight"].shape[0])
    special_ids = special_token_ids(bert_tokenizer) if bert_tokenizer is not None else None
    config = vilt_config(state_dict, original, head, num_attention_heads, special_ids, id2label)
    model = MODEL_CLASSES[head](config)
    load_mapped_state_dict(model, mapped)
    model.eval()
    differences = None
    if verify:
        itm = (state_dict["itm_score.fc.weight"], state_dict["itm_score.fc.bias"]) if head == "pretraining" else None
        from conversion.vilt_transformers import compare_with_transformers, transformers_reference

        differences = compare_with_transformers(model, transformers_reference(state_dict, config, head), head, itm)
        check_differences(differences, VERIFY_ATOL, "transformers' ViLT on the original tensors")
    processor = None
    if bert_tokenizer is not None:
        processor = build_processor(bert_tokenizer, config, original.get("image_size", config.image_size))
    else:
        logger.warning("No tokenizer given (--tokenizer): writing the model without a processor.")
    if head == "vqa" and id2label is None:
        logger.warning("No --answers given: the VQA answers are named LABEL_0 ... (pass the release's vqa_dict.json).")
    logger.info(
        f"Converted to {type(model).__name__}: mapped {len(mapped.tensors)} tensors, dropped {len(mapped.dropped)} "
        f"({'; '.join(sorted(set(mapped.dropped.values())))})."
    )
    result = ViltConversion(model, processor, head, mapped.dropped, differences)
    if output is not None:
        readme = provenance(
            f"`{source.path.name}` (dandelin/ViLT checkpoint holding {', '.join(modules) or 'no head module'})",
            command or f"convert_vilt_checkpoint({source.path.name!r}, ...)", result,
            "Compared with transformers' ViLT run on the original tensors (the original's LayerNorm epsilon at every "
            "site) on random inputs",
        )
        result.output = write_conversion(output, model, processor, readme, overwrite, inputs)
    return result


# --------------------------------------------------------------------------------------------------- CLI


OPTION_HELP = {
    "checkpoint": "original PyTorch Lightning .ckpt (e.g. vilt_200k_mlm_itm.ckpt) or a transformers ViLT directory",
    "original_config": "the sacred config as JSON (default: the checkpoint's hyper_parameters['config'])",
    "tokenizer": "the WordPiece vocab.txt (or tokenizer directory) of the checkpoint (bert-base-uncased)",
    "verify": "compare with transformers' ViLT run on the same tensors, on random inputs (atol 1e-4)",
    "head": "auto: the checkpoint's task - VlpViltForQuestionAnswering (vqa_classifier), VlpViltForVisualReasoning "
    "(nlvr2_classifier), VlpViltForImageTextRetrieval (rank_output), VlpViltForPretraining (mlm_score + itm_score), "
    "VlpViltForMaskedLM (mlm_score alone), VlpViltModel (no head); a checkpoint holding several tasks' heads needs one "
    "named",
}


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = converter_parser(__doc__, OPTION_HELP, heads=HEADS, prog=prog)
    parser.add_argument(
        "--num-attention-heads", type=positive_int,
        help="the ViT's head count, for a variant the config does not name (default: from the config's 'vit', e.g. "
        "vit_base_patch32_384: 12, or its _vit_variant.num_heads)",
    )
    parser.add_argument("--answers", help="the VQA answers: the release's vqa_dict.json (id -> answer)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, program: str = "python conversion/convert_vilt.py") -> ViltConversion:
    """``convert_vilt.py`` / ``hf-vlp convert vilt``: convert as the command line says."""
    args = parse_args(argv, program)
    return convert_vilt_checkpoint(
        **converter_options(args, argv, program), head=args.head, num_attention_heads=args.num_attention_heads,
        answers=args.answers,
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
