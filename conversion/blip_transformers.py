"""Convert a transformers BLIP directory (``save_pretrained`` of transformers' own BLIP classes) to hf_vlp.

    BlipForConditionalGeneration -> VlpBlipForConditionalGeneration   (--head caption)
    BlipForImageTextRetrieval    -> VlpBlipModel (ITM + ITC)           (--head model)
    BlipForQuestionAnswering     -> VlpBlipForQuestionAnswering        (--head vqa)

transformers' BLIP keeps the original's text keys (``text_encoder.*``, ``text_decoder.bert.*``, ``text_decoder.cls.*``)
and renames the ViT's (``vision_model.embeddings.*``, ``vision_model.encoder.layers.*``, ``post_layernorm``); the tied LM
decoder weight/bias are not saved. :func:`original_layout` undoes both, so the original-checkpoint rules of
``conversion/blip_heads.py`` convert these directories too, with the same strictness (every key consumed or dropped
on purpose, every target filled). Special-token ids come from the tokenizer saved in the directory (or ``tokenizer``),
else from the config; sizes and epsilons from ``config.json``.

Where the converted model behaves differently from transformers' on purpose (it follows the original BLIP):

- ``[DEC]``/``[ENC]`` at position 0 are put by our model (captioner forward, ITM, VQA question/answers); transformers'
  forwards use the ids as given (its ``generate`` does put ``[DEC]`` first and drop the prompt's last token, as ours).
- The cross-attention padding mask is applied (the VQA answer decoder over padded questions in training and ranking);
  transformers 5.24's BLIP text layers drop it (``originals_albef_blip.md`` §2.8).
- Caption/answer LM losses use ``label_smoothing`` 0.1 as the original's training (transformers' default is 0.0) and
  VQA losses are summed per answer and weighted as the original's.
- Beam search scores hypotheses as the original's transformers 4.15 (``beam_scoring="original"``);
  ``beam_scoring="transformers"`` matches transformers 5's ``generate``.
- The vision LayerNorm epsilon is the directory's (transformers' default 1e-5, whereas the original ViT used 1e-6), so
  the converted model reproduces transformers' outputs; ``vision_layer_norm_eps=1e-6`` restores the original's.
- transformers' retrieval model has no temperature: ours starts ``temp`` at the original's initial 0.07.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.models.blip.configuration_blip import VlpBlipConfig
from hf_vlp.models.blip.processing_blip import blip_special_token_ids

from conversion.blip_heads import VERIFY_ATOL, BlipConversion, build_processor, check_ties, compare_with_transformers
from conversion.blip_heads import load_tokenizer, map_blip_state_dict, model_class_of, resolve_head
from conversion.common import TOWER_SIZES, ConversionError, check_differences, config_fields, check_output_dir
from conversion.common import check_source_tensors, format_differences, input_paths, load_mapped_state_dict
from conversion.common import read_transformers_config, read_transformers_weights, write_conversion
from conversion.rules import from_transformers_vit_name

logger = logging.getLogger("conversion.blip")

# transformers class -> the original layout the BLIP rules know (its source kind)
TRANSFORMERS_ARCHITECTURES = {
    "BlipForConditionalGeneration": "caption",
    "BlipForImageTextRetrieval": "itm",
    "BlipForQuestionAnswering": "vqa",
}
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt")
_LM_HEAD = "text_decoder.cls.predictions."


@dataclass
class TransformersBlipSource:
    """A transformers BLIP directory as read: its class, the matching original layout (``kind``), its config, its
    tensors under the original names and where its tokenizer is (``None``: none saved)."""

    path: Path
    architecture: str
    kind: str
    config: Any
    state_dict: dict[str, torch.Tensor]
    tokenizer_path: Path | None


def is_transformers_blip_directory(path: str | Path) -> bool:
    """True when ``path`` is a directory whose ``config.json`` says ``model_type: blip`` (transformers' own BLIP)."""
    try:
        read_transformers_config(Path(path), "blip", "a transformers BLIP directory")
    except ConversionError:
        return False
    return True


def original_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' BLIP tensors under the original BLIP names: ViT keys renamed back, and the LM head's tied
    ``decoder.weight`` (= the decoder's word embeddings) and ``decoder.bias`` (= ``predictions.bias``), which
    transformers does not save, restored. Other keys keep their names (text keys are the original's)."""
    renamed = {from_transformers_vit_name(key): tensor for key, tensor in state_dict.items()}
    words = renamed.get("text_decoder.bert.embeddings.word_embeddings.weight")
    if words is not None and f"{_LM_HEAD}transform.dense.weight" in renamed:
        renamed.setdefault(f"{_LM_HEAD}decoder.weight", words)
        if f"{_LM_HEAD}bias" in renamed:
            renamed.setdefault(f"{_LM_HEAD}decoder.bias", renamed[f"{_LM_HEAD}bias"])
    return renamed


def read_transformers_blip(path: str | Path) -> TransformersBlipSource:
    """Open a transformers BLIP directory: ``config.json`` (a ``BlipConfig`` whose ``architectures[0]`` is one of
    :data:`TRANSFORMERS_ARCHITECTURES`) and its weights (safetensors, sharded or ``.bin``)."""
    from transformers import BlipConfig

    path = Path(path)
    raw = read_transformers_config(
        path,
        "blip",
        "a transformers BLIP directory (save_pretrained of BlipForConditionalGeneration, BlipForImageTextRetrieval or "
        "BlipForQuestionAnswering); hf_vlp's own BLIP directories need no conversion",
    )
    architectures = raw.get("architectures") or []
    architecture = architectures[0] if architectures else None
    if architecture not in TRANSFORMERS_ARCHITECTURES:
        raise ConversionError(
            f"{path} holds {architecture or 'an unnamed class (config.json has no architectures)'}; convertible "
            f"transformers BLIP classes are {sorted(TRANSFORMERS_ARCHITECTURES)} (BlipModel is a CLIP-style dual encoder "
            "with no original counterpart)."
        )
    tokenizer_path = path if any((path / name).is_file() for name in TOKENIZER_FILES) else None
    return TransformersBlipSource(
        path=path,
        architecture=architecture,
        kind=TRANSFORMERS_ARCHITECTURES[architecture],
        config=BlipConfig.from_pretrained(str(path)),
        state_dict=original_layout(read_transformers_weights(path)),
        tokenizer_path=tokenizer_path,
    )


def blip_config_from_transformers(
    hf_config: Any,
    special_token_ids: Mapping[str, int] | None = None,
    vision_layer_norm_eps: float | None = None,
) -> VlpBlipConfig:
    """``VlpBlipConfig`` equal to a transformers ``BlipConfig``: sizes, activations and epsilons as saved (the vision
    epsilon overridable), ``embed_dim`` = ``image_text_hidden_size``; special-token ids from ``special_token_ids``
    (the tokenizer's, by name) over the config's ``pad``/``sep``/``bos`` ids."""
    vision, text = hf_config.vision_config, hf_config.text_config
    if text.encoder_hidden_size != vision.hidden_size:
        raise ConversionError(
            f"The text config's encoder_hidden_size ({text.encoder_hidden_size}) differs from the vision width "
            f"({vision.hidden_size}): the text transformer cross-attends the image tokens, so they must be equal."
        )
    text_settings = config_fields(
        text, *TOWER_SIZES, "vocab_size", "max_position_embeddings", "hidden_dropout_prob",
        "attention_probs_dropout_prob", "initializer_range",
    )
    for name in ("pad_token_id", "sep_token_id", "bos_token_id"):
        if getattr(text, name, None) is not None:
            text_settings[name] = getattr(text, name)
    if special_token_ids is not None:
        text_settings.update(special_token_ids)
    vision_settings = config_fields(vision, *TOWER_SIZES, "image_size", "patch_size", "attention_dropout")
    if vision_layer_norm_eps is not None:
        vision_settings["layer_norm_eps"] = vision_layer_norm_eps
    try:
        return VlpBlipConfig(
            vision_config=vision_settings, text_config=text_settings, embed_dim=hf_config.image_text_hidden_size
        )
    except (StrictDataclassError, ValueError, TypeError) as error:
        hint = "" if special_token_ids is not None else (
            " The directory has no tokenizer: pass --tokenizer so [CLS]/[MASK]/[ENC] are read by name."
        )
        raise ConversionError(f"The resulting configuration is invalid: {error}{hint}") from error


def transformers_reference(source: TransformersBlipSource) -> torch.nn.Module:
    """transformers' own model of the directory, in eval mode (the reference ``verify`` compares with)."""
    import transformers

    model_class = getattr(transformers, source.architecture)
    return model_class.from_pretrained(str(source.path), dtype=torch.float32).eval()


def convert_transformers_blip(
    directory: str | Path,
    output: str | Path | None = None,
    tokenizer: str | Path | None = None,
    head: str = "auto",
    verify: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    vision_layer_norm_eps: float | None = None,
    allow_non_finite: bool = False,
) -> BlipConversion:
    """Convert a transformers BLIP directory to the hf_vlp ``head`` (``auto``: the class's counterpart, see
    :data:`TRANSFORMERS_ARCHITECTURES`) with the rules of ``blip_heads.py``; write it to ``output`` if given.

    The tokenizer is ``tokenizer`` or the directory's own (``[DEC]``/``[ENC]`` added when missing); without one the
    model is written without a processor. ``verify`` compares with transformers' model of the directory
    (:func:`~conversion.blip_heads.compare_with_transformers`, atol 1e-4).
    """
    inputs = input_paths(directory, tokenizer)
    if output is not None:
        check_output_dir(output, overwrite, inputs)
    source = read_transformers_blip(directory)
    logger.info(f"Source: {source.path} (transformers {source.architecture}, {len(source.state_dict)} tensors)")
    check_source_tensors(source.state_dict, source.path, allow_non_finite)
    head = resolve_head(source.kind, head)
    check_ties(source.state_dict, source.kind)
    mapped = map_blip_state_dict(source.state_dict, source.kind, head)
    tokenizer_path = tokenizer if tokenizer is not None else source.tokenizer_path
    blip_tokenizer = None
    if tokenizer_path is not None:
        blip_tokenizer = load_tokenizer(tokenizer_path, source.config.text_config.vocab_size)
    special_ids = blip_special_token_ids(blip_tokenizer) if blip_tokenizer is not None else None
    config = blip_config_from_transformers(source.config, special_ids, vision_layer_norm_eps)
    if head == "vqa" and config.vision_config.hidden_size != config.text_config.hidden_size:
        raise ConversionError(
            f"transformers' BlipForQuestionAnswering gives its answer decoder the vision width "
            f"({config.vision_config.hidden_size}) as cross-attention input, but the question states it reads have the "
            f"text width ({config.text_config.hidden_size}): this directory cannot hold a working VQA model."
        )
    model = model_class_of(head)(config)
    load_mapped_state_dict(model, mapped)
    model.eval()
    processor = build_processor(blip_tokenizer, config) if blip_tokenizer is not None else None
    if processor is None:
        logger.warning("No tokenizer in the directory or given (--tokenizer): writing the model without a processor.")
    differences = None
    if verify:
        if vision_layer_norm_eps is not None:
            raise ConversionError("--verify compares with transformers' model, so keep the directory's vision epsilon.")
        differences = compare_with_transformers(model, transformers_reference(source), head)
        check_differences(differences, VERIFY_ATOL, f"transformers' {source.architecture}")
    result = BlipConversion(model, processor, source.kind, head, mapped.dropped, differences)
    if output is not None:
        readme = provenance(source, command or f"convert_transformers_blip({source.path.name!r}, ...)", result)
        result.output = write_conversion(output, model, processor, readme, overwrite, inputs)
    return result


def provenance(source: TransformersBlipSource, command: str, result: BlipConversion) -> str:
    """The model card's provenance paragraph of a conversion from transformers."""
    verified = (
        f"Compared with transformers' `{source.architecture}`: max |diff| {format_differences(result.differences)}."
        if result.differences is not None
        else "Not compared with transformers' model (pass `--verify`)."
    )
    return (
        f"Converted from transformers' `{source.architecture}` directory `{source.path.name}` to "
        f"`{type(result.model).__name__}` with\n\n```bash\n{command}\n```\n\nTensors carried over exactly. {verified} "
        "Differences on purpose: the model puts [DEC]/[ENC] first itself, applies the cross-attention padding mask and "
        "scores beams as the original BLIP (see conversion/blip_transformers.py)."
    )


__all__ = [
    "TRANSFORMERS_ARCHITECTURES",
    "TransformersBlipSource",
    "blip_config_from_transformers",
    "convert_transformers_blip",
    "is_transformers_blip_directory",
    "original_layout",
    "read_transformers_blip",
]
