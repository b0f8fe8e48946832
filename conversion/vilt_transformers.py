"""The transformers side of the ViLT converter: transformers' ViLT names (q/k/v fused into ``qkv``, the tied MLM
decoder restored), conversion of a transformers ViLT directory (:func:`convert_transformers_vilt`, which
``conversion/convert_vilt.py`` dispatches a directory to), and transformers' ViLT classes as the independent reference
that ``--verify`` compares a converted model with.

transformers' ViLT has ONE ``layer_norm_eps`` for every LayerNorm, where the original uses 1e-12 (text embeddings, MLM
transform) and 1e-6 (ViT blocks, final norm): a converted transformers directory takes the directory's epsilon at all
those sites, so that it reproduces transformers' model (the classifier LayerNorms keep 1e-5, as in both).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_vlp.models.vilt.configuration_vilt import VlpViltConfig
from hf_vlp.models.vilt.image_processing_vilt import DEFAULT_SIZE_DIVISOR

from conversion.common import ConversionError, Drop, Rename, check_differences, check_output_dir, fused_projection
from conversion.common import check_source_tensors, input_paths, load_mapped_state_dict, map_state_dict
from conversion.common import max_abs_differences, read_transformers_config
from conversion.common import read_transformers_weights, write_conversion
from conversion.convert_vilt import MODALITY_ROWS, MODEL_CLASSES, VERIFY_ATOL, ViltConversion
from conversion.convert_vilt import build_processor, default_special_ids, head_modules, load_tokenizer
from conversion.convert_vilt import logger, map_vilt_state_dict, modality_rows, provenance, require_tensor
from conversion.convert_vilt import build_config, resolve_head, special_token_ids
from conversion.rules import prefix_renames, rename_prefix

# --------------------------------------------------------------------------------------------------- transformers names

# original name <-> transformers ViLT name, as ``{i}`` (layer) templates. ``attention.attention.qkv`` stands for
# transformers' separate query/key/value (the rows of the original's qkv, in thirds).
TRANSFORMERS_NAMES = (
    ("text_embeddings.", "vilt.embeddings.text_embeddings."),
    ("token_type_embeddings.", "vilt.embeddings.token_type_embeddings."),
    ("transformer.cls_token", "vilt.embeddings.cls_token"),
    ("transformer.pos_embed", "vilt.embeddings.position_embeddings"),
    ("transformer.patch_embed.proj.", "vilt.embeddings.patch_embeddings.projection."),
    ("transformer.blocks.{i}.norm1.", "vilt.encoder.layer.{i}.layernorm_before."),
    ("transformer.blocks.{i}.norm2.", "vilt.encoder.layer.{i}.layernorm_after."),
    ("transformer.blocks.{i}.attn.qkv.", "vilt.encoder.layer.{i}.attention.attention.qkv."),
    ("transformer.blocks.{i}.attn.proj.", "vilt.encoder.layer.{i}.attention.output.dense."),
    ("transformer.blocks.{i}.mlp.fc1.", "vilt.encoder.layer.{i}.intermediate.dense."),
    ("transformer.blocks.{i}.mlp.fc2.", "vilt.encoder.layer.{i}.output.dense."),
    ("transformer.norm.", "vilt.layernorm."),
    ("pooler.", "vilt.pooler."),
    ("mlm_score.bias", "mlm_score.decoder.bias"),
)
QKV = ("query", "key", "value")
_FUSED_QKV = re.compile(r"(?P<layer>vilt\.encoder\.layer\.\d+\.attention\.attention\.)qkv\.(?P<p>weight|bias)")
# transformers class -> the hf_vlp head it converts to, and the original module its ``classifier`` is
TRANSFORMERS_ARCHITECTURES = {
    "ViltForMaskedLM": ("masked_lm", None),
    "ViltForQuestionAnswering": ("vqa", "vqa_classifier"),
    "ViltForImagesAndTextClassification": ("nlvr2", "nlvr2_classifier"),
    "ViltForImageAndTextRetrieval": ("retrieval", None),
    "ViltModel": ("model", None),
}


def _name_table(classifier: str | None) -> tuple[tuple[str, str], ...]:
    return TRANSFORMERS_NAMES + (((f"{classifier}.", "classifier."),) if classifier else ())


def to_transformers_state_dict(
    state_dict: Mapping[str, torch.Tensor], classifier: str | None
) -> dict[str, torch.Tensor]:
    """Original tensors under transformers' ViLT names (``classifier`` the original module behind ``classifier.*``):
    ``qkv`` split into thirds; keys transformers has no place for keep their original names."""
    renames = prefix_renames(_name_table(classifier), forward=True)
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        name = rename_prefix(key, renames)
        match = _FUSED_QKV.fullmatch(name)
        if match is None:
            renamed[name] = tensor
            continue
        for part, third in zip(QKV, tensor.chunk(3, dim=0)):
            renamed[f"{match['layer']}{part}.{match['p']}"] = third
    return renamed


@dataclass
class OriginalLayout:
    """A transformers ViLT state dict under the original names, what was dropped on the way and which original keys
    were made up (tied or absent in transformers) with why."""

    state_dict: dict[str, torch.Tensor]
    dropped: dict[str, str] = field(default_factory=dict)
    made: dict[str, str] = field(default_factory=dict)


def original_layout(state_dict: Mapping[str, torch.Tensor], architecture: str) -> OriginalLayout:
    """transformers ViLT tensors under the original names, strictly: q/k/v fused (every part present, shapes that fit),
    the index buffers dropped, ``classifier.*`` named after the class's task, the MLM decoder tied to the word
    embeddings restored, and the ITM head transformers' retrieval model lacks made from ``rank_output``."""
    tensors = dict(state_dict)
    if architecture == "ViltModel" and not any(key.startswith("vilt.") for key in tensors):
        tensors = {f"vilt.{key}": tensor for key, tensor in tensors.items()}  # a base model saves without the prefix
    layout = OriginalLayout({})
    if "mlm_score.bias" in tensors and "mlm_score.decoder.bias" in tensors:  # transformers 4 saved the tie twice
        if not torch.equal(tensors["mlm_score.bias"], tensors["mlm_score.decoder.bias"]):
            raise ConversionError("mlm_score.bias differs from mlm_score.decoder.bias, which transformers 4 ties to it")
        del tensors["mlm_score.bias"]
        layout.dropped["mlm_score.bias"] = "same tensor as mlm_score.decoder.bias (tied in transformers 4, checked)"
    fused = map_state_dict(tensors, [
        Drop(r"vilt\.embeddings\.text_embeddings\.(?:position_ids|token_type_ids)", "index buffer; computed"),
        fused_projection(r"vilt\.encoder\.layer\.(?P<i>\d+)\.attention\.attention\.", QKV,
                         r"vilt.encoder.layer.\g<i>.attention.attention.qkv"),
        Rename(r"(?P<key>.+)", r"\g<key>"),
    ])
    layout.dropped.update(fused.dropped)
    renames = prefix_renames(_name_table(TRANSFORMERS_ARCHITECTURES[architecture][1]), forward=False)
    layout.state_dict = {rename_prefix(key, renames): tensor for key, tensor in fused.tensors.items()}
    original = layout.state_dict
    if "mlm_score.transform.dense.weight" in original and "mlm_score.decoder.weight" not in original:
        original["mlm_score.decoder.weight"] = require_tensor(original, "text_embeddings.word_embeddings.weight")
        layout.made["mlm_score.decoder.weight"] = "the word embeddings, which transformers ties the MLM decoder to"
    if architecture == "ViltForImageAndTextRetrieval" and "itm_score.fc.weight" not in original:
        rank_weight, rank_bias = require_tensor(original, "rank_output.weight"), require_tensor(original, "rank_output.bias")
        original["itm_score.fc.weight"] = torch.cat([torch.zeros_like(rank_weight), rank_weight])
        original["itm_score.fc.bias"] = torch.cat([torch.zeros_like(rank_bias), rank_bias])
        made = "transformers' retrieval model has no ITM head: row 1 = rank_output, row 0 = 0"
        layout.made.update({"itm_score.fc.weight": made, "itm_score.fc.bias": made})
    return layout


# --------------------------------------------------------------------------------------------------- verification


def random_inputs(config: VlpViltConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two texts (the second padded) and two pairs of images of different sizes, zero-padded to one canvas with
    their pixel masks: the inputs :func:`compare_with_transformers` runs both models on."""
    generator = torch.Generator().manual_seed(seed)
    length = min(config.max_position_embeddings, 12)
    input_ids = torch.randint(0, config.vocab_size, (2, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, max(2, length - 3) :] = 0
    patch = config.patch_size
    height, width = config.image_size, config.image_size + 2 * patch
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    for suffix, sizes in (("", ((height, width), (height - patch, width - 2 * patch))),
                          ("_2", ((height - patch, width), (height, width)))):
        pixels = torch.zeros(2, config.num_channels, height, width)
        mask = torch.zeros(2, height, width, dtype=torch.long)
        for index, (h, w) in enumerate(sizes):
            h, w = max(h, patch), max(w, patch)
            pixels[index, :, :h, :w] = torch.randn(config.num_channels, h, w, generator=generator)
            mask[index, :h, :w] = 1
        inputs[f"pixel_values{suffix}"], inputs[f"pixel_mask{suffix}"] = pixels, mask
    return inputs


def transformers_vilt_config(config: VlpViltConfig, head: str, layer_norm_eps: float) -> Any:
    """transformers' ``ViltConfig`` of the same sizes, for a reference ``head`` (all patches, no dropout)."""
    from transformers import ViltConfig

    nlvr2 = head == "nlvr2"
    return ViltConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act, layer_norm_eps=layer_norm_eps, image_size=config.image_size,
        patch_size=config.patch_size, num_channels=config.num_channels,
        max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
        modality_type_vocab_size=3 if nlvr2 else 2, num_images=2 if nlvr2 else -1,
        num_labels=2 if nlvr2 else config.num_labels, max_image_length=-1, qkv_bias=True,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


TRANSFORMERS_CLASSES = {
    "pretraining": "ViltForMaskedLM", "masked_lm": "ViltForMaskedLM", "vqa": "ViltForQuestionAnswering",
    "nlvr2": "ViltForImagesAndTextClassification", "retrieval": "ViltForImageAndTextRetrieval", "model": "ViltModel",
}


def transformers_reference(state_dict: Mapping[str, torch.Tensor], config: VlpViltConfig, head: str) -> torch.nn.Module:
    """transformers' own ViLT class for ``head`` loaded (strictly) from the ORIGINAL tensors with its conversion
    script's renames, its MLM decoder untied and every LayerNorm given the original's epsilon (text embeddings and
    MLM transform ``text_layer_norm_eps``/``mlm_layer_norm_eps``, blocks and final norm ``layer_norm_eps``): an
    independent implementation of the original's forward."""
    import transformers

    architecture = TRANSFORMERS_CLASSES[head]
    reference = getattr(transformers, architecture)(transformers_vilt_config(config, head, config.layer_norm_eps))
    if head in ("pretraining", "masked_lm"):  # transformers 5 ties the decoder to the word embeddings; the original not
        decoder = reference.mlm_score.decoder
        decoder.weight = torch.nn.Parameter(decoder.weight.detach().clone())
    classifier = {"vqa": "vqa_classifier", "nlvr2": "nlvr2_classifier"}.get(head)
    source = dict(state_dict)
    if head != "nlvr2":
        source[MODALITY_ROWS] = source[MODALITY_ROWS][:2]
    if head == "retrieval" and "rank_output.weight" not in source:
        source["rank_output.weight"], source["rank_output.bias"] = (
            source["itm_score.fc.weight"][1:], source["itm_score.fc.bias"][1:]
        )
    renamed = to_transformers_state_dict(source, classifier)
    if architecture == "ViltModel":
        renamed = {key.removeprefix("vilt."): tensor for key, tensor in renamed.items()}
    expected = reference.state_dict()
    missing = [key for key in expected if key not in renamed]
    if missing:
        raise ConversionError(
            f"Verification: transformers' {architecture} needs keys the checkpoint lacks: {missing[:5]}."
        )
    reference.load_state_dict({key: renamed[key] for key in expected}, strict=True)
    vilt = reference if architecture == "ViltModel" else reference.vilt
    vilt.embeddings.text_embeddings.LayerNorm.eps = config.text_layer_norm_eps
    if head in ("pretraining", "masked_lm"):
        reference.mlm_score.transform.LayerNorm.eps = config.mlm_layer_norm_eps
    return reference.eval()


def compare_with_transformers(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    head: str,
    itm: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Max |difference| between ``model`` and transformers' ``reference`` on :func:`random_inputs`, eval mode: the text
    states and pooled ``[CLS]`` (transformers shuffles the patches of the largest image, so the image states are
    compared through them), and the head's logits (ITM from the original's ``itm`` weight and bias, which transformers
    has no module for)."""
    inputs = random_inputs(model.config)
    text, first = {key: inputs[key] for key in ("input_ids", "attention_mask")}, {
        "pixel_values": inputs["pixel_values"], "pixel_mask": inputs["pixel_mask"]
    }
    length = inputs["input_ids"].shape[1]
    model.eval()
    with torch.no_grad():
        base = model if head == "model" else model.vilt
        reference_base = reference if head == "model" else reference.vilt
        ours, theirs = base(**text, **first), reference_base(**text, **first)
        differences_in = {
            "text_feats": (theirs.last_hidden_state[:, :length], ours.last_hidden_state[:, :length]),
            "cls_feats": (theirs.pooler_output, ours.pooler_output),
        }
        if head in ("pretraining", "masked_lm"):
            logits = model(**text, **first).mlm_logits if head == "pretraining" else model(**text, **first).logits
            differences_in["mlm_logits"] = (reference(**text, **first).logits, logits)
        if head == "pretraining" and itm is not None:
            expected = torch.nn.functional.linear(theirs.pooler_output, *itm)
            differences_in["itm_logits"] = (expected, model(**text, **first).itm_logits)
        if head in ("vqa", "retrieval"):
            differences_in[f"{head}_logits"] = (reference(**text, **first).logits, model(**text, **first).logits)
        if head == "nlvr2":
            pairs = {
                "pixel_values": torch.stack([inputs["pixel_values"], inputs["pixel_values_2"]], dim=1),
                "pixel_mask": torch.stack([inputs["pixel_mask"], inputs["pixel_mask_2"]], dim=1),
            }
            second = {"pixel_values_2": inputs["pixel_values_2"], "pixel_mask_2": inputs["pixel_mask_2"]}
            ours_logits = model(**text, **first, **second).logits
            differences_in["nlvr2_logits"] = (reference(**text, **pairs).logits, ours_logits)
    reference_outputs = {name: pair[0] for name, pair in differences_in.items()}
    return max_abs_differences(reference_outputs, {name: pair[1] for name, pair in differences_in.items()})


# --------------------------------------------------------------------------------------------------- transformers


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt")


def vilt_config_from_transformers(hf_config: Any, special_ids: Mapping[str, int | None] | None) -> VlpViltConfig:
    """``VlpViltConfig`` equal to a transformers ``ViltConfig``: sizes, activation and dropout as saved, and its ONE
    ``layer_norm_eps`` at every site the original distinguishes (text embeddings, blocks, final norm, MLM transform;
    the classifier LayerNorms are 1e-5 in both); answers (``id2label``) as saved."""
    if not hf_config.qkv_bias:
        raise ConversionError(
            "The directory's ViltConfig has qkv_bias=False; hf_vlp's ViLT (as the original) has q/k/v biases. Such a "
            "model has no original counterpart."
        )
    eps = hf_config.layer_norm_eps
    settings: dict[str, Any] = dict(
        hidden_size=hf_config.hidden_size, intermediate_size=hf_config.intermediate_size,
        num_hidden_layers=hf_config.num_hidden_layers, num_attention_heads=hf_config.num_attention_heads,
        hidden_act=hf_config.hidden_act, layer_norm_eps=eps, text_layer_norm_eps=eps, mlm_layer_norm_eps=eps,
        hidden_dropout_prob=hf_config.hidden_dropout_prob,
        attention_probs_dropout_prob=hf_config.attention_probs_dropout_prob, image_size=hf_config.image_size,
        patch_size=hf_config.patch_size, num_channels=hf_config.num_channels, vocab_size=hf_config.vocab_size,
        max_position_embeddings=hf_config.max_position_embeddings, type_vocab_size=hf_config.type_vocab_size,
        modality_type_vocab_size=2, max_image_length=hf_config.max_image_length,
        initializer_range=hf_config.initializer_range, id2label=dict(hf_config.id2label),
    )
    settings.update(special_ids if special_ids is not None else {
        **default_special_ids(hf_config.vocab_size), "pad_token_id": hf_config.pad_token_id,
    })
    return build_config(settings)


def check_transformers_head(hf_config: Any, architecture: str) -> None:
    """transformers' NLVR2 class must be the original's pair model: 2 images (3 modality rows), 2 labels."""
    if architecture == "ViltForImagesAndTextClassification":
        shape = (hf_config.num_images, hf_config.modality_type_vocab_size, hf_config.num_labels)
        if shape != (2, 3, 2):
            raise ConversionError(
                "VlpViltForVisualReasoning is ViLT's NLVR2 pair model: it needs a ViltForImagesAndTextClassification "
                f"with num_images 2, modality_type_vocab_size 3 and 2 labels; this one has {shape[0]}, {shape[1]} and "
                f"{shape[2]}."
            )


def image_processor_settings(directory: Path, hf_config: Any) -> tuple[int, int, dict[str, Any]]:
    """``(shortest_edge, size_divisor, mean/std)`` of the directory's ``preprocessor_config.json`` (transformers'
    ``ViltImageProcessor``), else of the config's image size and ViLT's defaults."""
    shortest, divisor, settings = hf_config.image_size, DEFAULT_SIZE_DIVISOR, {}
    path = directory / "preprocessor_config.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConversionError(f"{path} is not valid JSON: {error}") from error
        size = saved.get("size")
        shortest = size.get("shortest_edge", shortest) if isinstance(size, dict) else shortest
        divisor = saved.get("size_divisor", divisor)
        settings = {key: saved[key] for key in ("image_mean", "image_std") if key in saved}
    return shortest, divisor, settings


def convert_transformers_vilt(
    directory: str | Path,
    output: str | Path | None = None,
    tokenizer: str | Path | None = None,
    *,
    head: str = "auto",
    verify: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    allow_non_finite: bool = False,
) -> ViltConversion:
    """Convert a transformers ViLT directory to the hf_vlp ``head`` (``auto``: the class's counterpart, see
    :data:`TRANSFORMERS_ARCHITECTURES`) through the original names and rules; write it to ``output`` if given.

    The converted model equals transformers' (the directory's single LayerNorm epsilon at every site, see the module
    docstring). The tokenizer is ``tokenizer`` or the directory's own; without one the model is written without a
    processor. ``verify`` compares with transformers' model of the directory (atol 1e-4).
    """
    from transformers import ViltConfig

    directory = Path(directory)
    inputs = input_paths(directory, tokenizer)
    if output is not None:
        check_output_dir(output, overwrite, inputs)
    classes = ", ".join(TRANSFORMERS_ARCHITECTURES)
    raw = read_transformers_config(
        directory, "vilt",
        f"a transformers ViLT directory (save_pretrained of {classes}); hf_vlp's ViLT folders need no conversion",
    )
    architecture = (raw.get("architectures") or [None])[0]
    if architecture not in TRANSFORMERS_ARCHITECTURES:
        raise ConversionError(
            f"{directory} holds {architecture or 'an unnamed class (config.json has no architectures)'}; convertible "
            f"transformers ViLT classes are {', '.join(TRANSFORMERS_ARCHITECTURES)} (ViltForTokenClassification has "
            "no original counterpart)."
        )
    hf_config = ViltConfig.from_pretrained(str(directory))
    check_transformers_head(hf_config, architecture)
    weights = read_transformers_weights(directory)
    logger.info(f"Source: {directory} (transformers {architecture}, {len(weights)} tensors)")
    check_source_tensors(weights, directory, allow_non_finite)
    layout = original_layout(weights, architecture)
    state_dict = layout.state_dict
    head = resolve_head(head_modules(state_dict), head, modality_rows(state_dict))
    mapped = map_vilt_state_dict(state_dict, head)
    for target, sources in mapped.sources.items():
        mapped.sources[target] = [f"(new: {layout.made[key]})" if key in layout.made else key for key in sources]
    mapped.dropped.update(layout.dropped)
    for key in [key for key in mapped.dropped if key in layout.made]:
        del mapped.dropped[key]
    tokenizer_path = tokenizer if tokenizer is not None else (
        directory if any((directory / name).is_file() for name in TOKENIZER_FILES) else None
    )
    bert_tokenizer = load_tokenizer(tokenizer_path, hf_config.vocab_size) if tokenizer_path is not None else None
    config = vilt_config_from_transformers(hf_config, special_token_ids(bert_tokenizer) if bert_tokenizer else None)
    model = MODEL_CLASSES[head](config)
    load_mapped_state_dict(model, mapped)
    model.eval()
    differences = None
    if verify:
        import transformers

        if TRANSFORMERS_ARCHITECTURES[architecture][0] != head:
            raise ConversionError(f"--verify compares with transformers' {architecture}; keep --head auto.")
        reference = getattr(transformers, architecture).from_pretrained(str(directory), dtype=torch.float32).eval()
        reference.config.max_image_length = -1  # every patch, as ours in eval mode
        differences = compare_with_transformers(model, reference, head)
        check_differences(differences, VERIFY_ATOL, f"transformers' {architecture}")
    processor = None
    if bert_tokenizer is not None:
        shortest, divisor, image_settings = image_processor_settings(directory, hf_config)
        processor = build_processor(bert_tokenizer, config, shortest, divisor, image_settings)
    else:
        logger.warning("No tokenizer in the directory or given (--tokenizer): writing the model without a processor.")
    result = ViltConversion(model, processor, head, mapped.dropped, differences)
    if output is not None:
        readme = provenance(
            f"transformers' `{architecture}` directory `{directory.name}`",
            command or f"convert_transformers_vilt({directory.name!r}, ...)", result, f"Compared with transformers' "
            f"`{architecture}` on random inputs",
            note=f"The directory's single LayerNorm epsilon ({hf_config.layer_norm_eps:g}) is kept at every site, so "
            "the model reproduces transformers' ViLT rather than the original (1e-12 text, 1e-6 ViT).",
        )
        result.output = write_conversion(output, model, processor, readme, overwrite, inputs)
    return result

