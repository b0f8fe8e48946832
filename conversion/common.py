"""Shared machinery of the ``convert_<family>.py`` scripts: read a checkpoint, map its keys strictly, verify, write
atomically, and one command-line skeleton.

A converter describes its key mapping as a list of rules (:class:`Rename`, :class:`Fuse`, :class:`Drop`, and
:class:`Split` through :func:`map_state_dict_with_splits`; the shared families are in :mod:`conversion.rules` and, for
BERT's embeddings and layers, :mod:`hf_vlp.utils.key_rules`) and lets :func:`map_state_dict` and
:func:`load_mapped_state_dict` enforce the contract of DESIGN.md §4: every source key
is consumed or explicitly dropped, every target key is filled, every shape matches, or a :class:`ConversionError`
names all offending keys at once. Output directories are built next to the destination and renamed into place only
when everything succeeded (:func:`write_output_dir`), so a failed conversion leaves nothing behind;
:func:`write_conversion` writes a converted folder that way (model, processor, model card, the :data:`MARKER_FILE`
that lets ``--overwrite`` replace it later; no other folder, and none holding an input, is ever replaced).
Nothing stored in a checkpoint is executed (``weights_only`` pickles, TorchScript read as data), tensors holding
inf/NaN are refused (:func:`check_source_tensors`) and a checkpoint of another family is named as such
(:func:`check_family`). Every converter takes ``--checkpoint --output --original-config --tokenizer --verify
--overwrite --allow-non-finite`` (:func:`converter_parser`, :func:`converter_options`) and runs under :func:`run_cli`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
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
    TRUST_TORCHSCRIPT_HINT,
    WRAPPER_KEYS,
    check_finite,
    check_mapped_state_dict,
    filter_prefix,
    fused_projection,
    is_torchscript_archive,
    load_mapped_state_dict,
    map_state_dict,
    prepare_torchscript_for_cpu,
    read_checkpoint,
    read_torchscript_tensors,
    read_transformers_weights,
    transpose,
    unwrap_state_dict,
)
from hf_vlp.integrations.model_card import render_model_card
from hf_vlp.integrations.provenance import conversion_source

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


# kinds of --original-config fields (:func:`check_config_fields`)
POSITIVE_INT, NON_NEGATIVE_INT, NUMBER, TEXT = "a positive integer", "a non-negative integer", "a number", "a string"


def _is_kind(value: Any, kind: str) -> bool:
    if kind == TEXT:
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    if kind == NUMBER:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, int) and value >= (1 if kind == POSITIVE_INT else 0)


def check_config_fields(config: Mapping[str, Any], fields: Mapping[str, str | tuple[str, ...]], source: str) -> None:
    """Check the type of every field of ``fields`` present in ``config`` (an original config, read from JSON):
    ``{"image_res": POSITIVE_INT, "bert_config.layer_norm_eps": NUMBER, ...}``, a dotted name for a nested object's
    field, a tuple of kinds for ``POSITIVE_INT`` or a list of them (``"list"``). ``None`` counts as absent. A wrong
    type raises one :class:`ConversionError` line naming the field, its value and the kind it must be."""
    for name, kinds in fields.items():
        value: Any = config
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            continue
        kinds = (kinds,) if isinstance(kinds, str) else kinds
        ok = any(
            _is_kind(value, kind) if kind != "list" else (
                isinstance(value, list) and bool(value) and all(_is_kind(item, POSITIVE_INT) for item in value)
            )
            for kind in kinds
        )
        if not ok:
            wanted = " or ".join("a list of positive integers" if kind == "list" else kind for kind in kinds)
            raise ConversionError(f"{source}: {name!r} must be {wanted}, got {value!r}.")


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
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raise ConversionError(
            f"{path} is a gzip file (e.g. CLIP's BPE merges bpe_simple_vocab_16e6.txt.gz), not a BERT WordPiece "
            "vocab.txt; pass the vocab.txt (or tokenizer directory) the checkpoint was trained with."
        )
    try:
        tokens = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ConversionError(
            f"{path} is not a text file ({error.reason} at byte {error.start}); pass a BERT WordPiece vocab.txt."
        ) from error
    missing = [token for token in BERT_SPECIAL_TOKENS.values() if token not in tokens]
    if missing:
        raise ConversionError(f"{path} lacks the special tokens {missing}; pass a BERT WordPiece vocab.txt.")
    return BertTokenizer(vocab=str(path), do_lower_case=True, **BERT_SPECIAL_TOKENS)


# the real CLIP merges file, as the wheels of open_clip (open_clip_torch) and of OpenAI's clip (clip-anytorch) ship it
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def installed_clip_bpe() -> Path | None:
    """The real CLIP merges file of an installed ``open_clip`` or ``clip`` package (no download, nothing imported), or
    ``None`` when neither is installed."""
    import importlib.util

    for package in ("open_clip", "clip"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin is not None:
            path = Path(spec.origin).parent / CLIP_BPE_FILE
            if path.is_file():
                return path
    return None


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


# --------------------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    """One source tensor cut along dim 0 into several targets, the inverse of a :class:`Fuse`: a source key fully
    matching ``pattern`` gives, for each of ``parts``, ``target`` (a ``re`` template) with ``{part}`` replaced by the
    part's name; the parts' sizes are in the ratio ``shares`` (e.g. a fused ``in_proj`` ``[3W, ...]`` cut into ``q``
    ``[W, ...]`` and ``kv`` ``[2W, ...]`` with shares ``(1, 2)``). Applied by :func:`map_state_dict_with_splits`."""

    pattern: str
    target: str
    parts: tuple[str, ...]
    shares: tuple[int, ...]


_SPLIT_MARK = re.compile(r"<split (?P<rule>\d+)>")


def map_state_dict_with_splits(
    source: Mapping[str, torch.Tensor], rules: Sequence[MappingRule | Split]
) -> MappedStateDict:
    """:func:`map_state_dict` with :class:`Split` rules among ``rules`` (first full match wins, as there): each split
    source key is accounted for like any other, and its parts are named after it (``key[part]``) in
    ``MappedStateDict.sources``. A tensor that does not cut in the ratio of its rule's shares raises a
    :class:`ConversionError` naming it."""
    plain: list[MappingRule] = []
    splits: list[Split] = []
    for rule in rules:
        if isinstance(rule, Split):
            plain.append(Rename(rule.pattern, rule.target.replace("{part}", f"<split {len(splits)}>")))
            splits.append(rule)
        else:
            plain.append(rule)
    mapped = map_state_dict(source, plain)
    uneven = []
    for key in [key for key in mapped.tensors if _SPLIT_MARK.search(key)]:
        rule = splits[int(_SPLIT_MARK.search(key)["rule"])]
        tensor, (origin,) = mapped.tensors.pop(key), mapped.sources.pop(key)
        total = sum(rule.shares)
        if tensor.dim() == 0 or tensor.shape[0] % total:
            uneven.append(f"{origin} {list(tensor.shape)} (into {'/'.join(rule.parts)} in the ratio {rule.shares})")
            continue
        unit = tensor.shape[0] // total
        for part, piece in zip(rule.parts, tensor.split([share * unit for share in rule.shares])):
            target = _SPLIT_MARK.sub(part, key)
            mapped.tensors[target], mapped.sources[target] = piece, [f"{origin}[{part}]"]
    if uneven:
        raise ConversionError(
            f"The checkpoint does not match the expected layout: tensors that do not split into their parts "
            f"({len(uneven)}): {', '.join(uneven)}."
        )
    return mapped


# --------------------------------------------------------------------------------------------------- families

FAMILY_NAMES = {"clip": "CLIP", "albef": "ALBEF", "blip": "BLIP", "vilt": "ViLT", "vlmo": "VLMo", "coca": "CoCa"}
# VLMo's multiway blocks: one feed-forward expert per modality (ViLT's timm blocks have one ``mlp``)
_VLMO_BLOCK = re.compile(r"transformer\.blocks\.\d+\.(mlp|norm2)_(imag|text|vl)\.")


def checkpoint_family(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, str] | None:
    """``(family, evidence)`` of an original state dict when its keys tell (``None`` when they do not).

    ALBEF and BLIP share ``visual_encoder.*`` and BERT-named text towers; ALBEF's ``xbert`` embeds token types and
    BLIP's ``med`` does not (BLIP's NLVR2 model alone has ``crossattention.self0``). CLIP has OpenAI's ``visual.*``
    and ``transformer.resblocks.*`` (or transformers' ``text_model.*``/``vision_model.*`` with ``logit_scale``).
    ViLT has BERT's ``text_embeddings.*`` and a timm ViT's ``transformer.blocks.*`` in one model (or transformers'
    ``vilt.*``); VLMo has the same two, but multiway blocks (``mlp_imag``/``mlp_text`` experts) and one
    ``relative_position_bias_table``, so it is told first. open_clip's CoCa has CLIP's ``visual.*`` with an
    attentional pooler (``visual.attn_pool.*``) and a multimodal decoder (``text_decoder.*``) or a text class token
    (``text.cls_emb``)."""
    keys = list(state_dict)
    if any(key.startswith("visual.attn_pool.") for key in keys) and (
        "text.cls_emb" in state_dict or any(key.startswith("text_decoder.") for key in keys)
    ):
        return "coca", "open_clip CoCa keys (visual.attn_pool.*, text_decoder.* / text.cls_emb)"
    if any(key.startswith("visual_encoder.") for key in keys):
        text = [key for key in keys if key.startswith(("text_encoder.", "text_decoder."))]
        if not text:
            return None
        if any(".crossattention.self0." in key for key in text):
            return "blip", "its text encoder has BLIP's NLVR2 cross-attentions self0/self1"
        if any(".embeddings.token_type_embeddings." in key for key in text):
            return "albef", "visual_encoder.* and a text tower with token-type embeddings (ALBEF's xbert)"
        return "blip", "visual_encoder.* and a text tower without token-type embeddings (BLIP's med)"
    if any(key.startswith(("visual.", "transformer.resblocks.")) for key in keys) and (
        "positional_embedding" in state_dict or "token_embedding.weight" in state_dict
    ):
        return "clip", "OpenAI CLIP keys (visual.*, transformer.resblocks.*, token_embedding)"
    if "logit_scale" in state_dict and any(key.startswith("text_model.") for key in keys) and any(
        key.startswith("vision_model.") for key in keys
    ):
        return "clip", "transformers CLIPModel keys (text_model.*, vision_model.*, logit_scale)"
    if "relative_position_bias_table" in state_dict or any(_VLMO_BLOCK.match(key) for key in keys):
        return "vlmo", "multiway blocks with per-modality experts (transformer.blocks.*.mlp_imag / mlp_text)"
    vilt_text = "text_embeddings.word_embeddings.weight" in state_dict
    if vilt_text and any(key.startswith("transformer.blocks.") for key in keys):
        return "vilt", "text_embeddings.* and a timm ViT under transformer.blocks.* in one model (dandelin/ViLT)"
    if any(key.startswith("vilt.embeddings.text_embeddings.") for key in keys):
        return "vilt", "transformers ViLT keys (vilt.embeddings.text_embeddings.*, vilt.encoder.layer.*)"
    return None


def _article(name: str) -> str:
    return f"{'an' if name[0] in 'AEIOU' else 'a'} {name}"


def check_family(state_dict: Mapping[str, torch.Tensor], expected: str, source: str | Path) -> None:
    """Refuse a checkpoint of another family with the converter to use instead (rather than a key-rename dump)."""
    found = checkpoint_family(state_dict)
    if found is None or found[0] == expected:
        return
    family, evidence = found
    raise ConversionError(
        f"{source} looks like {_article(FAMILY_NAMES[family])} checkpoint ({evidence}), not {FAMILY_NAMES[expected]}; use "
        f"conversion/convert_{family}.py / hf-vlp convert {family}."
    )


def check_source_tensors(state_dict: Mapping[str, torch.Tensor], source: str | Path, allow_non_finite: bool) -> None:
    """The checks every converter runs on what it read: no inf/NaN unless ``allow_non_finite`` (then a warning)."""
    try:
        check_finite(state_dict, str(source))
    except ConversionError as error:
        if not allow_non_finite:
            raise
        logger.warning(f"Converting despite non-finite values (--allow-non-finite): {error}")


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
        differences[name] = float((expected.double() - actual.double()).abs().max())
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


MARKER_FILE = "conversion.json"  # written into every converted folder; --overwrite replaces only such folders
CREATED_BY = "hf_vlp.conversion"
_STAGING_KINDS = ("converting", "replaced")


def read_original_source(
    checkpoint: str | Path,
    family: str,
    inputs: list[Path],
    output: str | Path | None,
    overwrite: bool,
    allow_non_finite: bool,
) -> Any:
    """The first steps of converting an original ``family`` release: refuse an output that would replace the
    inputs or a folder no converter wrote, read the checkpoint as data (no code runs), and refuse a checkpoint of
    another family or one holding inf/NaN (unless ``allow_non_finite``)."""
    if output is not None:
        check_output_dir(output, overwrite, inputs)
    source = read_checkpoint(checkpoint, allow_torchscript=False)
    logger.info(f"Source: {source.path} ({len(source.state_dict)} tensors)")
    check_family(source.state_dict, family, source.path)
    check_source_tensors(source.state_dict, source.path, allow_non_finite)
    return source


def input_paths(*candidates: Any) -> list[Path]:
    """The paths among a conversion's inputs (checkpoint, config, tokenizer): ``None`` and in-memory configs are
    skipped."""
    return [Path(candidate) for candidate in candidates if isinstance(candidate, (str, os.PathLike))]


def is_converted_folder(directory: Path) -> bool:
    """True when ``directory`` holds the marker a converter writes (:data:`MARKER_FILE`)."""
    try:
        return json.loads((directory / MARKER_FILE).read_text(encoding="utf-8")).get("created_by") == CREATED_BY
    except (OSError, ValueError, AttributeError):
        return False


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(output: str | Path, overwrite: bool, inputs: Iterable[str | Path] = ()) -> Path:
    """Fail early, with one line naming the folder and why, when ``output`` cannot or must not be written: it is (or
    contains) the working directory or an input of the conversion, it exists as a file, it is non-empty without
    ``overwrite``, it is non-empty and was not written by a converter (no :data:`MARKER_FILE`), or its location is
    not writable. Only a folder a converter wrote is ever replaced."""
    given = str(output)
    output = Path(output)
    resolved = output.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ConversionError(
            f"Output {given!r} is (or contains) the current directory {cwd}; choose a new folder for --output."
        )
    for path in inputs:
        source = Path(path).resolve()
        if source == resolved or resolved in source.parents:
            raise ConversionError(
                f"Output {given!r} holds an input of this conversion ({path}); writing there would replace it. "
                "Choose another --output."
            )
    if output.exists():
        if not output.is_dir():
            raise ConversionError(f"Output path {given!r} exists and is not a directory; choose another --output.")
        if any(output.iterdir()):
            if not overwrite:
                raise ConversionError(
                    f"Output directory {given!r} exists and is not empty; pass --overwrite to replace it or choose "
                    "another."
                )
            if not is_converted_folder(output):
                raise ConversionError(
                    f"Output directory {given!r} was not written by a converter (no {MARKER_FILE}); --overwrite only "
                    "replaces converted folders. Choose another --output."
                )
    location = _nearest_existing(resolved.parent)
    if not location.is_dir() or not os.access(location, os.W_OK | os.X_OK):
        raise ConversionError(f"Cannot write output {given!r}: {location} is not a writable directory.")
    return output


def _umask() -> int:
    try:  # Linux states it without changing it
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(directory: Path) -> None:
    """Folders 0777 and files 0666 less the umask, as ``mkdir``/``open`` make them (some writers create private
    temporary files and rename them into place)."""
    mask = _umask()
    os.chmod(directory, 0o777 & ~mask)
    for root, folders, files in os.walk(directory):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def _host() -> str:
    """This machine's name as it may stand in a folder name."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


def _staging_dir(output: Path, kind: str) -> Path:
    """A new folder ``.{name}.{kind}-{pid}@{host}-{token}`` next to ``output``, made like ``mkdir`` (umask
    respected); the name says which process owns it, so a later run can tell a stale one."""
    host = _host()
    while True:
        path = output.parent / f".{output.name}.{kind}-{os.getpid()}@{host}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def clean_stale_staging(output: str | Path) -> list[Path]:
    """Remove the temporary folders an interrupted earlier run (killed, power loss) left next to ``output``: a
    ``.{name}.converting-*`` / ``.{name}.replaced-*`` folder whose owning process (pid in its name) no longer runs on
    this host. A ``replaced`` folder holding the previous output while ``output`` is missing is moved back instead.
    Folders of live processes, of other hosts, or without an owner in their name are left alone. Returns (and logs)
    what was removed."""
    output = Path(output).absolute()
    host = _host()
    pattern = re.compile(
        rf"\.{re.escape(output.name)}\.(?P<kind>{'|'.join(_STAGING_KINDS)})-(?P<pid>\d+)@(?P<host>.+)-[0-9a-f]{{8}}"
    )
    removed = []
    try:
        entries = list(output.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_dir() or match["host"] != host or _pid_alive(int(match["pid"])):
            continue
        previous = entry / output.name
        if match["kind"] == "replaced" and previous.is_dir() and not output.exists():
            os.replace(previous, output)
            logger.warning(f"Restored {output} from {entry.name}, left by an interrupted run (pid {match['pid']}).")
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
            logger.warning(
                f"Removed stale temporary folder {entry} (left by process {match['pid']}, which no longer runs)."
            )
    return removed


def write_output_dir(
    output: str | Path,
    write: Callable[[Path], None],
    overwrite: bool = False,
    inputs: Iterable[str | Path] = (),
    marker: Mapping[str, Any] | None = None,
) -> Path:
    """Run ``write(tmp_dir)`` in a temporary directory next to ``output`` and rename it into place at the end.

    The folder gets the converter's marker (:data:`MARKER_FILE`, with ``marker``'s entries) and normal permissions
    (umask respected). On any error the temporary directory is removed and an existing ``output`` is left untouched.
    With ``overwrite`` a previous non-empty ``output`` is replaced only after the new one is complete, and only when
    a converter wrote it (:func:`check_output_dir`, checked again at the end). Stale temporary folders of earlier,
    killed runs are removed first (:func:`clean_stale_staging`).
    """
    inputs = list(inputs)
    output = check_output_dir(output, overwrite, inputs).absolute()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(output)
        staging = _staging_dir(output, "converting")
    except OSError as error:
        raise ConversionError(f"Cannot write output {str(output)!r}: {error.strerror or error}.") from error
    try:
        write(staging)
        content = {"created_by": CREATED_BY, **(marker or {})}
        (staging / MARKER_FILE).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        _apply_umask(staging)
        check_output_dir(output, overwrite, inputs)  # it may have appeared while we ran
        if output.exists():
            retired = _staging_dir(output, "replaced")
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
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConversionError(f"Cannot write output {str(output)!r}: {error.strerror or error}.") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def write_conversion(
    output: str | Path,
    model: Any,
    processor: Any,
    provenance: str,
    overwrite: bool = False,
    inputs: Iterable[str | Path] = (),
) -> Path:
    """Write a complete converted folder atomically (:func:`write_output_dir`): the model (safetensors;
    ``save_pretrained`` adds the generation config of a generative head), its processor (image processor + tokenizer;
    left out when ``None``, i.e. no tokenizer given), the architecture's model card with ``provenance`` and the
    converter's marker, which records the source of ``inputs[0]`` (the checkpoint): its release's license and its Hub
    id, when it has one. ``inputs`` (checkpoint, config, tokenizer paths) are never inside what is replaced."""
    inputs = list(inputs)
    # the release the weights come from (or the transformers directory), for the card's license and base_model
    source = conversion_source(getattr(model, "model_card_template", None), inputs[0]) if inputs else None

    def write(directory: Path) -> None:
        model.save_pretrained(directory)
        if processor is not None:
            processor.save_pretrained(directory)
        render_model_card(
            model, provenance=provenance, tags=["converted"], sources=[source] if source else (),
            model_name=Path(output).name,
        ).save(directory / "README.md")

    marker = {
        "model_class": type(model).__name__,
        "sources": [str(path) for path in inputs],
        "source": source.to_json() if source else None,
    }
    written = write_output_dir(output, write, overwrite, inputs, marker=marker)
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
    docstring: str,
    option_help: Mapping[str, str],
    heads: Sequence[str] = (),
    prog: str | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> argparse.ArgumentParser:
    """The options every converter takes, described by the first paragraph of the converter's ``docstring``;
    ``option_help`` holds the family's help of ``checkpoint``, ``original_config``, ``tokenizer``, ``verify`` (and
    ``head``: a family with several target classes passes their names as ``heads``, ``auto`` first); ``prog`` is the
    command shown in the usage line; ``aliases`` adds the family's own names of the shared options
    (``{"original_config": ["--model-config"]}``)."""
    aliases = aliases or {}
    parser = argparse.ArgumentParser(prog=prog, description=docstring.split("\n\n")[0])
    parser.add_argument("--checkpoint", *aliases.get("checkpoint", ()), required=True, help=option_help["checkpoint"])
    parser.add_argument(
        "--output", *aliases.get("output", ()), required=True,
        help="directory to write (absent or empty unless --overwrite)",
    )
    parser.add_argument(
        "--original-config", *aliases.get("original_config", ()), dest="original_config",
        help=option_help["original_config"],
    )
    parser.add_argument("--tokenizer", *aliases.get("tokenizer", ()), dest="tokenizer", help=option_help["tokenizer"])
    parser.add_argument("--verify", action="store_true", help=option_help["verify"])
    parser.add_argument(
        "--overwrite", action="store_true",
        help=f"replace an --output folder written by an earlier conversion (it holds {MARKER_FILE}); other folders, "
        "and folders holding an input, are never replaced",
    )
    parser.add_argument(
        "--allow-non-finite", action="store_true",
        help="convert even when tensors hold inf/NaN (refused by default, naming the first bad keys)",
    )
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
        allow_non_finite=args.allow_non_finite,
        command=command_line(argv, program=program),
    )


def positive_int(text: str) -> int:
    """``argparse`` type of sizes (``--image-size``): an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run a converter's ``main``; a :class:`ConversionError` becomes a one-paragraph message and exit status 1
    (``argparse`` errors exit with status 2)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        main(argv)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "BERT_SPECIAL_TOKENS",
    "CLIP_BPE_FILE",
    "CREATED_BY",
    "FAMILY_NAMES",
    "MARKER_FILE",
    "MAX_LISTED_KEYS",
    "NON_NEGATIVE_INT",
    "NUMBER",
    "POSITIVE_INT",
    "TEXT",
    "TRUST_TORCHSCRIPT_HINT",
    "PARALLEL_PREFIXES",
    "SAFETENSORS_SUFFIX",
    "TOWER_SIZES",
    "Split",
    "WRAPPER_KEYS",
    "Checkpoint",
    "ConversionError",
    "Drop",
    "Fuse",
    "MappedStateDict",
    "MappingRule",
    "Rename",
    "check_config_fields",
    "check_differences",
    "check_family",
    "check_finite",
    "check_mapped_state_dict",
    "check_output_dir",
    "check_source_tensors",
    "checkpoint_family",
    "clean_stale_staging",
    "command_line",
    "config_fields",
    "converter_options",
    "converter_parser",
    "filter_prefix",
    "format_differences",
    "fused_projection",
    "input_paths",
    "installed_clip_bpe",
    "is_converted_folder",
    "is_torchscript_archive",
    "load_bert_tokenizer",
    "load_mapped_state_dict",
    "map_state_dict",
    "map_state_dict_with_splits",
    "max_abs_differences",
    "positive_int",
    "prepare_torchscript_for_cpu",
    "read_checkpoint",
    "read_original_source",
    "read_original_config",
    "read_torchscript_tensors",
    "read_transformers_config",
    "read_transformers_weights",
    "run_cli",
    "transpose",
    "unwrap_state_dict",
    "write_conversion",
    "write_output_dir",
]
