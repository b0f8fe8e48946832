"""Shared machinery of the ``convert_<family>.py`` scripts: read a checkpoint, map its keys strictly, verify, write
atomically, and one command-line skeleton.

A converter describes its key mapping as a list of rules (:class:`Rename`, :class:`Fuse`, :class:`Drop`; the shared
families are in :mod:`conversion.rules` and, for BERT's embeddings and layers, :mod:`hf_vlp.utils.key_rules`) and
lets :func:`map_state_dict` and :func:`load_mapped_state_dict` enforce the contract of DESIGN.md §4: every source key
is consumed or explicitly dropped, every target key is filled, every shape matches, or a :class:`ConversionError`
names all offending keys at once. Output directories are built next to the destination and renamed into place only
when everything succeeded (:func:`write_output_dir`), so a failed conversion leaves nothing behind;
:func:`write_conversion` writes a converted folder that way (model, processor, model card).
Every converter takes ``--checkpoint --output --original-config --tokenizer --verify --overwrite``
(:func:`converter_parser`, :func:`converter_options`) and runs under :func:`run_cli`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hf_vlp.utils.checkpoints import (  # re-exported (__all__): the converters import them from here
    Checkpoint,
    ConversionError,
    Drop,
    Fuse,
    MAX_LISTED_KEYS,
    MappedStateDict,
    MappingRule,
    PARALLEL_PREFIXES,
    Rename,
    SAFETENSORS_SUFFIX,
    WRAPPER_KEYS,
    check_mapped_state_dict,
    filter_prefix,
    fused_projection,
    is_torchscript_archive,
    load_mapped_state_dict,
    map_state_dict,
    prepare_torchscript_for_cpu,
    read_checkpoint,
    read_transformers_weights,
    transpose,
    unwrap_state_dict,
)
from hf_vlp.integrations.model_card import render_model_card

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- inputs


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{what} is not valid JSON: {error}") from error


# the sizes every transformers tower config states under these names
TOWER_SIZES = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act", "layer_norm_eps"
)


def config_fields(config: Any, *names: str) -> dict[str, Any]:
    """``{name: config.name}``: the settings a converted config takes over from a transformers one."""
    return {name: getattr(config, name) for name in names}


def read_original_config(
    path: str | Path,
    describes: str,
    nested: tuple[str, str] | None = None,
    allowed_keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Load ``--original-config``: a JSON object of ``describes``. ``nested`` is ``(key, file)``: that key must hold
    the content of the original's other json ``file``, not its path; ``allowed_keys`` limits the keys when given."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Original config not found: {path}")
    config = _read_json(path, f"Original config {path}")
    if not isinstance(config, dict):
        raise ConversionError(f"Original config {path} must be a JSON object of {describes}.")
    if nested is not None and nested[0] in config and not isinstance(config[nested[0]], dict):
        key, file = nested
        raise ConversionError(f"{key!r} in {path} must hold the CONTENT of {file}, not {config[key]!r}.")
    unknown = sorted(set(config) - set(allowed_keys)) if allowed_keys is not None else []
    if unknown:
        raise ConversionError(
            f"Original config {path} has unknown keys {unknown}; expected a subset of {list(allowed_keys or ())}."
        )
    return config


BERT_SPECIAL_TOKENS = {
    "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"
}


def load_bert_tokenizer(path: str | Path) -> Any:
    """The ``--tokenizer`` of the BERT-based families: a tokenizer directory, or a WordPiece ``vocab.txt`` read as a
    lower-casing ``BertTokenizer`` whose special tokens are found by name (they must all be there)."""
    from transformers import AutoTokenizer, BertTokenizer

    path = Path(path)
    if path.is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as error:
            raise ConversionError(f"{path} is not a tokenizer directory: {error}") from error
    if not path.is_file():
        raise ConversionError(
            f"Tokenizer not found: {path}. Pass the WordPiece vocab.txt (or tokenizer directory) the checkpoint was "
            "trained with."
        )
    tokens = path.read_text(encoding="utf-8").splitlines()
    missing = [token for token in BERT_SPECIAL_TOKENS.values() if token not in tokens]
    if missing:
        raise ConversionError(f"{path} lacks the special tokens {missing}; pass a BERT WordPiece vocab.txt.")
    return BertTokenizer(vocab=str(path), do_lower_case=True, **BERT_SPECIAL_TOKENS)


def read_transformers_config(path: Path, model_type: str, expected: str) -> dict[str, Any]:
    """The ``config.json`` of a transformers ``save_pretrained`` directory, checked to be of ``model_type``;
    ``expected`` names what to pass instead (for the error messages)."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{path} is a directory without config.json; pass {expected}.")
    config = _read_json(config_file, str(config_file))
    if not isinstance(config, dict) or config.get("model_type") != model_type:
        raise ConversionError(
            f"{path} holds a transformers model of type {dict(config).get('model_type')!r}; this converter reads "
            f"transformers' {model_type!r} models. Pass {expected}."
        )
    return config


# --------------------------------------------------------------------------------------------------- verification


def max_abs_differences(
    reference: Mapping[str, torch.Tensor], converted: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """``max |reference - converted|`` per name (names present in both), as Python floats."""
    differences = {}
    for name, expected in reference.items():
        actual = converted[name]
        if expected.shape != actual.shape:
            raise ConversionError(
                f"Verification: {name} has shape {list(actual.shape)} in the converted model but "
                f"{list(expected.shape)} in the source model."
            )
        differences[name] = float((expected.float() - actual.float()).abs().max())
    return differences


def check_differences(differences: Mapping[str, float], atol: float, source: str) -> dict[str, float]:
    """Raise when any difference exceeds ``atol`` (NaN counts as exceeding), naming every failing output; else log
    and return them."""
    failing = {name: value for name, value in differences.items() if not value <= atol}
    if failing:
        listed = ", ".join(f"{name} {value:.3g}" for name, value in failing.items())
        raise ConversionError(
            f"Verification against {source} failed: max |diff| above {atol:g} for {listed}. The converted model does "
            "not reproduce the source; check the configuration (e.g. head counts via --original-config)."
        )
    logger.info(f"Verification against {source}: max |diff| {format_differences(differences)}")
    return dict(differences)


def format_differences(differences: Mapping[str, float]) -> str:
    """``name 1.23e-06, ...`` for logs and model cards."""
    return ", ".join(f"{name} {value:.2e}" for name, value in differences.items())


# --------------------------------------------------------------------------------------------------- output


def check_output_dir(output: str | Path, overwrite: bool) -> Path:
    """Fail early when ``output`` exists as a file, or as a non-empty directory without ``overwrite``."""
    output = Path(output)
    if output.exists():
        if not output.is_dir():
            raise ConversionError(f"Output path {output} exists and is not a directory; choose another --output.")
        if any(output.iterdir()) and not overwrite:
            raise ConversionError(
                f"Output directory {output} exists and is not empty; pass --overwrite to replace it or choose another."
            )
    return output


def write_output_dir(output: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Run ``write(tmp_dir)`` in a temporary directory next to ``output`` and rename it into place at the end.

    On any error the temporary directory is removed and an existing ``output`` is left untouched. With
    ``overwrite`` a previous non-empty ``output`` is replaced only after the new one is complete.
    """
    output = check_output_dir(output, overwrite).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.converting-", dir=output.parent))
    try:
        write(staging)
        if output.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{output.name}.replaced-", dir=output.parent))
            os.replace(output, retired / output.name)
            try:
                os.replace(staging, output)
            except BaseException:
                os.replace(retired / output.name, output)
                raise
            finally:
                shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def write_conversion(output: str | Path, model: Any, processor: Any, provenance: str, overwrite: bool = False) -> Path:
    """Write a complete converted folder atomically (:func:`write_output_dir`): the model (safetensors;
    ``save_pretrained`` adds the generation config of a generative head), its processor (image processor + tokenizer;
    left out when ``None``, i.e. no tokenizer given) and the architecture's model card with ``provenance``."""

    def write(directory: Path) -> None:
        model.save_pretrained(directory)
        if processor is not None:
            processor.save_pretrained(directory)
        render_model_card(model, provenance=provenance, tags=["converted"]).save(directory / "README.md")

    written = write_output_dir(output, write, overwrite)
    logger.info(f"Wrote {written}")
    return written


def command_line(argv: Sequence[str] | None = None, program: str | None = None) -> str:
    """The command that ran this conversion, shell-quoted, for the model card."""
    import shlex

    argv = list(sys.argv[1:] if argv is None else argv)
    program = program or f"python {Path(sys.argv[0]).as_posix()}"
    return " ".join([program, *(shlex.quote(arg) for arg in argv)])


# --------------------------------------------------------------------------------------------------- CLI


def converter_parser(
    docstring: str, option_help: Mapping[str, str], heads: Sequence[str] = (), prog: str | None = None
) -> argparse.ArgumentParser:
    """The options every converter takes, described by the first paragraph of the converter's ``docstring``;
    ``option_help`` holds the family's help of ``checkpoint``, ``original_config``, ``tokenizer``, ``verify`` (and
    ``head``: a family with several target classes passes their names as ``heads``, ``auto`` first); ``prog`` is the
    command shown in the usage line."""
    parser = argparse.ArgumentParser(prog=prog, description=docstring.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help=option_help["checkpoint"])
    parser.add_argument("--output", required=True, help="directory to write (absent or empty unless --overwrite)")
    parser.add_argument("--original-config", help=option_help["original_config"])
    parser.add_argument("--tokenizer", help=option_help["tokenizer"])
    parser.add_argument("--verify", action="store_true", help=option_help["verify"])
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    if heads:
        parser.add_argument("--head", choices=heads, default=heads[0], help=option_help["head"])
    return parser


def converter_options(args: argparse.Namespace, argv: Sequence[str] | None, program: str) -> dict[str, Any]:
    """The shared options as keyword arguments of a ``convert_<family>_checkpoint`` function, with the command that
    ran (``program`` and ``argv``) for the model card."""
    return dict(
        checkpoint=args.checkpoint,
        output=args.output,
        original_config=args.original_config,
        tokenizer=args.tokenizer,
        verify=args.verify,
        overwrite=args.overwrite,
        command=command_line(argv, program=program),
    )


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run a converter's ``main``; a :class:`ConversionError` becomes a one-paragraph message and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        main(argv)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "BERT_SPECIAL_TOKENS",
    "MAX_LISTED_KEYS",
    "PARALLEL_PREFIXES",
    "SAFETENSORS_SUFFIX",
    "TOWER_SIZES",
    "WRAPPER_KEYS",
    "Checkpoint",
    "ConversionError",
    "Drop",
    "Fuse",
    "MappedStateDict",
    "MappingRule",
    "Rename",
    "check_differences",
    "check_mapped_state_dict",
    "check_output_dir",
    "command_line",
    "config_fields",
    "converter_options",
    "converter_parser",
    "filter_prefix",
    "format_differences",
    "fused_projection",
    "is_torchscript_archive",
    "load_bert_tokenizer",
    "load_mapped_state_dict",
    "map_state_dict",
    "max_abs_differences",
    "prepare_torchscript_for_cpu",
    "read_checkpoint",
    "read_original_config",
    "read_transformers_config",
    "read_transformers_weights",
    "run_cli",
    "transpose",
    "unwrap_state_dict",
    "write_conversion",
    "write_output_dir",
]
