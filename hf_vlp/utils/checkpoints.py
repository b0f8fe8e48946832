"""Reading checkpoints and mapping their keys strictly onto hf_vlp models.

Shared by the converters in ``conversion/`` and by :mod:`hf_vlp.utils.tower_init`: every source key must be consumed
or explicitly dropped and every target key filled, or a :class:`ConversionError` names the offending keys.
"""
from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# how many keys an error message lists before summarising the rest as a count
MAX_LISTED_KEYS = 25
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
PARALLEL_PREFIXES = ("module.", "_orig_mod.")
SAFETENSORS_SUFFIX = ".safetensors"


class ConversionError(Exception):
    """The checkpoint cannot be converted; the message names the problem (keys, files, shapes) and the fix."""


# --------------------------------------------------------------------------------------------------- reading


@dataclass
class Checkpoint:
    """A checkpoint file as read: its tensors, and the TorchScript module when the file is a TorchScript archive."""

    path: Path
    container: str  # "torchscript", "torch" (torch.save / pickle) or "safetensors"
    state_dict: dict[str, torch.Tensor]
    module: torch.jit.ScriptModule | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def is_torchscript_archive(path: str | Path) -> bool:
    """True when ``path`` is a zip holding TorchScript code (``torch.jit.save``), not a ``torch.save`` pickle."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any("/code/" in name or name.endswith("/constants.pkl") for name in names)


def _is_safetensors_file(path: Path) -> bool:
    if path.suffix == SAFETENSORS_SUFFIX:
        return True
    with path.open("rb") as handle:
        head = handle.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def read_checkpoint(path: str | Path, allow_torchscript: bool = True) -> Checkpoint:
    """Open a checkpoint file of any supported container and return its (unwrapped) state dict.

    Containers: a TorchScript archive (read with ``torch.jit.load``, the only way to open one; its module is kept
    so a converter can run it for verification), a ``torch.save`` file read with ``weights_only=True`` (a plain
    state dict or one wrapped as ``{'state_dict': ...}``/``{'model': ...}``, DDP ``module.`` prefixes stripped),
    or a safetensors file.
    """
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"Checkpoint not found: {path}. Pass the path of an existing checkpoint file.")
    if path.is_dir():
        raise ConversionError(f"{path} is a directory; this converter expects a checkpoint file here.")
    if is_torchscript_archive(path):
        if not allow_torchscript:
            raise ConversionError(f"{path} is a TorchScript archive, which this converter does not accept.")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:  # torch raises many types for damaged archives
            raise ConversionError(f"{path} looks like a TorchScript archive but cannot be loaded: {error}") from error
        state_dict = {name: tensor.detach() for name, tensor in module.state_dict().items()}
        return Checkpoint(path, "torchscript", state_dict, module=module)
    if _is_safetensors_file(path):
        from safetensors.torch import load_file

        try:
            return Checkpoint(path, "safetensors", dict(load_file(str(path), device="cpu")))
        except Exception as error:
            raise ConversionError(f"{path} is not a readable safetensors file: {error}") from error
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConversionError(
            f"Unknown container {path}: torch.load(weights_only=True) refused it ({_first_line(error)}). Only "
            "TorchScript archives, torch.save state dicts and safetensors files are accepted; pickles of arbitrary "
            "objects are never executed."
        ) from error
    except Exception as error:
        raise ConversionError(
            f"Unknown container {path}: it is not a TorchScript archive, a torch.save file or a safetensors file "
            f"({type(error).__name__}: {_first_line(error)})."
        ) from error
    state_dict, extra = unwrap_state_dict(obj, source=str(path))
    return Checkpoint(path, "torch", state_dict, extra=extra)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in obj.items()
    )


def unwrap_state_dict(
    obj: Any,
    source: str = "checkpoint",
    wrapper_keys: Sequence[str] = WRAPPER_KEYS,
    strip_prefixes: Sequence[str] = PARALLEL_PREFIXES,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Find the state dict in a loaded object; return it and the wrapper's other (non-tensor) entries.

    Accepts a plain ``{name: tensor}`` mapping or one nested under a wrapper key (Lightning's ``state_dict``,
    ``model``, ...). A prefix such as DDP's ``module.`` is removed when every key carries it.
    """
    extra: dict[str, Any] = {}
    if not _is_tensor_mapping(obj):
        if not isinstance(obj, Mapping):
            raise ConversionError(
                f"Unknown container {source}: it holds a {type(obj).__name__}, not a state dict "
                "(a mapping of parameter names to tensors)."
            )
        for key in wrapper_keys:
            if key in obj and _is_tensor_mapping(obj[key]):
                extra = {name: value for name, value in obj.items() if name != key}
                obj = obj[key]
                break
        else:
            keys = sorted(str(key) for key in obj)[:MAX_LISTED_KEYS]
            raise ConversionError(
                f"Unknown container {source}: no state dict found at the top level or under any of "
                f"{list(wrapper_keys)}; top-level keys are {keys}."
            )
    state_dict = dict(obj)
    for prefix in strip_prefixes:
        if all(name.startswith(prefix) for name in state_dict):
            state_dict = {name[len(prefix) :]: tensor for name, tensor in state_dict.items()}
    return state_dict, extra


def read_transformers_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a transformers model directory: ``model.safetensors`` (single or sharded) or ``.bin``."""
    directory = Path(directory)

    index_files = [directory / "model.safetensors.index.json", directory / "pytorch_model.bin.index.json"]
    for index_file in index_files:
        if index_file.is_file():
            shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
            tensors: dict[str, torch.Tensor] = {}
            for shard in shards:
                shard_path = directory / shard
                if not shard_path.is_file():
                    raise ConversionError(f"Shard {shard_path} named in {index_file.name} is missing.")
                tensors.update(_read_weight_file(shard_path))
            return tensors
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return _read_weight_file(directory / name)
    raise ConversionError(
        f"No weights in {directory}: expected model.safetensors, a sharded model.safetensors.index.json or "
        "pytorch_model.bin (as written by save_pretrained)."
    )


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    return unwrap_state_dict(torch.load(str(path), map_location="cpu", weights_only=True), source=str(path))[0]


# --------------------------------------------------------------------------------------------------- TorchScript

_HALF_DTYPE_CODES = (5, 15)  # ScalarType codes of torch.float16 and torch.bfloat16 baked into traced graphs
_FLOAT_DTYPE_CODE = 6


def prepare_torchscript_for_cpu(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """Make a traced half-precision / CUDA archive runnable in float32 on the CPU, in place.

    Traced graphs hard-code the dtype (``aten::to(x, 5)``) and device constants of the tracing run. This rewrites
    half/bfloat16 dtype constants feeding ``aten::to`` to float32 and CUDA device constants to CPU in every graph
    (module ``forward``s, their ``forward1`` variants and the top-level methods), then casts the weights to float32.
    Call it before the module first runs: the executor caches an optimised plan of each graph on the first call.
    """
    graphs = []
    for submodule in module.modules():
        for method_name in ("forward", "forward1"):
            method = getattr(submodule, method_name, None)
            graph = _graph_of(method)
            if graph is not None:
                graphs.append(graph)
    for method_name in module._c._method_names():
        graph = _graph_of(getattr(module, method_name, None))
        if graph is not None:
            graphs.append(graph)
    for graph in graphs:
        _patch_graph_constants(graph)
    return module.float()


def _graph_of(method: Any) -> torch._C.Graph | None:
    try:
        return method.graph if method is not None else None
    except (AttributeError, RuntimeError):
        return None


def _patch_graph_constants(graph: torch._C.Graph) -> None:
    for node in graph.findAllNodes("prim::Constant"):
        if not node.hasAttribute("value"):
            continue
        if node.kindOf("value") == "s" and node.output().type().kind() == "DeviceObjType":
            if node.s("value").startswith("cuda"):
                node.s_("value", "cpu")
    for node in graph.findAllNodes("aten::to"):
        for argument in list(node.inputs())[1:3]:  # dtype is the 2nd or 3rd argument of aten::to
            constant = argument.node()
            if (
                constant.kind() == "prim::Constant"
                and constant.hasAttribute("value")
                and constant.kindOf("value") == "i"
                and constant.i("value") in _HALF_DTYPE_CODES
            ):
                constant.i_("value", _FLOAT_DTYPE_CODE)


# --------------------------------------------------------------------------------------------------- key mapping


@dataclass(frozen=True)
class Rename:
    """Source keys fully matching ``pattern`` become ``target`` (``re`` template: ``\\1``, ``\\g<name>``).

    ``transform`` reshapes the tensor on the way (e.g. transpose an ``x @ W`` matrix into an ``nn.Linear`` weight).
    """

    pattern: str
    target: str
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class Fuse:
    """Several source tensors concatenated into one target, e.g. separate q/k/v projections into a fused ``qkv``.

    ``pattern`` must have a named group ``part`` whose value is one of ``parts``; the concatenation follows the
    order of ``parts`` along ``dim``. Keys that expand ``target`` to the same name form one fused tensor, and every
    part must be present.
    """

    pattern: str
    target: str
    parts: tuple[str, ...]
    dim: int = 0


@dataclass(frozen=True)
class Drop:
    """Source keys fully matching ``pattern`` are deliberately discarded; ``reason`` says why (shown in logs)."""

    pattern: str
    reason: str


MappingRule = Rename | Fuse | Drop


@dataclass
class MappedStateDict:
    """Target tensors plus, for every target key, the source keys it came from (for error messages)."""

    tensors: dict[str, torch.Tensor]
    sources: dict[str, list[str]]
    dropped: dict[str, str]


PARAMETER = r"(?P<p>weight|bias)"  # the parameter of a Linear/LayerNorm, kept as is by a rule


def fused_projection(source: str, parts: Sequence[str], target: str) -> Fuse:
    """Separate projections ``{source}{part}.weight|bias`` (``source`` a regex prefix) concatenated in ``parts`` order
    into ``{target}.weight|bias``: q/k/v into a fused ``qkv``, k/v into a cross-attention's ``kv``. The one place
    separate projections are fused (converters and tower initialisation)."""
    group = "|".join(re.escape(part) for part in parts)
    return Fuse(source + rf"(?P<part>{group})\." + PARAMETER, target + r".\g<p>", parts=tuple(parts))


def transpose(tensor: torch.Tensor) -> torch.Tensor:
    """``[in, out]`` ``x @ W`` matrix to an ``nn.Linear`` weight ``[out, in]``."""
    return tensor.t().contiguous()


def _format_keys(keys: Sequence[str]) -> str:
    keys = list(keys)
    listed = ", ".join(keys[:MAX_LISTED_KEYS])
    if len(keys) > MAX_LISTED_KEYS:
        listed += f", ... and {len(keys) - MAX_LISTED_KEYS} more"
    return listed


def map_state_dict(source: Mapping[str, torch.Tensor], rules: Sequence[MappingRule]) -> MappedStateDict:
    """Apply ``rules`` (first full match wins) to every source key; raise if any key is unclaimed or clashes."""
    compiled = [(re.compile(rule.pattern), rule) for rule in rules]
    tensors: dict[str, torch.Tensor] = {}
    origins: dict[str, list[str]] = {}
    dropped: dict[str, str] = {}
    fused_parts: dict[str, tuple[Fuse, dict[str, tuple[str, torch.Tensor]]]] = {}
    unclaimed, clashes = [], []

    for key, tensor in source.items():
        for regex, rule in compiled:
            match = regex.fullmatch(key)
            if match is None:
                continue
            if isinstance(rule, Drop):
                dropped[key] = rule.reason
            elif isinstance(rule, Rename):
                target = match.expand(rule.target)
                if target in origins:
                    clashes.append(f"{target} <- {origins[target][0]} and {key}")
                    break
                tensors[target] = rule.transform(tensor) if rule.transform else tensor
                origins[target] = [key]
            else:
                target = match.expand(rule.target)
                part = match.group("part")
                if part not in rule.parts:
                    raise ValueError(f"Fuse rule {rule.pattern!r} matched part {part!r}, not one of {rule.parts}")
                _, parts = fused_parts.setdefault(target, (rule, {}))
                if part in parts:
                    clashes.append(f"{target} <- {parts[part][0]} and {key}")
                    break
                parts[part] = (key, tensor)
            break
        else:
            unclaimed.append(key)

    incomplete = []
    for target, (rule, parts) in fused_parts.items():
        missing = [part for part in rule.parts if part not in parts]
        if missing:
            present = [key for key, _ in parts.values()]
            incomplete.append(f"{target} (has {sorted(parts)} from {present}, lacks {missing})")
            continue
        if target in origins:
            clashes.append(f"{target} <- {origins[target][0]} and a fused {rule.parts}")
            continue
        tensors[target] = torch.cat([parts[part][1] for part in rule.parts], dim=rule.dim)
        origins[target] = [parts[part][0] for part in rule.parts]

    _raise_problems(
        "The checkpoint does not match the expected layout:",
        {
            "unexpected source keys that no rule consumes": unclaimed,
            "incomplete fused tensors": incomplete,
            "several source keys map to one target": clashes,
        },
    )
    return MappedStateDict(tensors, origins, dropped)


def _raise_problems(summary: str, problems: Mapping[str, Sequence[str]], hint: str = "") -> None:
    """One :class:`ConversionError` naming every key of every non-empty problem group, or nothing."""
    listed = [f"{what} ({len(keys)}): {_format_keys(keys)}" for what, keys in problems.items() if keys]
    if listed:
        raise ConversionError(summary + "\n  - " + "\n  - ".join(listed) + hint)


def check_mapped_state_dict(mapped: MappedStateDict, expected: Mapping[str, torch.Tensor]) -> None:
    """Compare mapped tensors with a model's ``state_dict()``: every key filled, none unknown, every shape equal."""
    missing = [key for key in expected if key not in mapped.tensors]
    unknown = [f"{key} (from {', '.join(mapped.sources[key])})" for key in mapped.tensors if key not in expected]
    shapes, dtypes = [], []
    for key, tensor in mapped.tensors.items():
        if key not in expected:
            continue
        target = expected[key]
        if tuple(tensor.shape) != tuple(target.shape):
            origin = ", ".join(mapped.sources[key])
            shapes.append(f"{key} (from {origin}): expected {list(target.shape)}, got {list(tensor.shape)}")
        elif tensor.is_floating_point() != target.is_floating_point():
            dtypes.append(f"{key} (from {', '.join(mapped.sources[key])}): expected {target.dtype}, got {tensor.dtype}")
    _raise_problems(
        "The checkpoint does not fit the model built from its configuration:",
        {
            "target keys that no source key fills": missing,
            "mapped keys the model does not have": unknown,
            "shape mismatches": shapes,
            "dtype kind mismatches": dtypes,
        },
        hint="\nCheck that the checkpoint and the configuration (e.g. --original-config) describe the same model.",
    )


def load_mapped_state_dict(model: torch.nn.Module, mapped: MappedStateDict) -> None:
    """Strictly load mapped tensors into ``model``; floating tensors are cast to the model's dtype (fp16 -> fp32)."""
    expected = model.state_dict()
    check_mapped_state_dict(mapped, expected)
    converted = {key: tensor.to(expected[key].dtype) for key, tensor in mapped.tensors.items()}
    model.load_state_dict(converted, strict=True)


def filter_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` with the prefix removed (to load one tower of a mapped state dict)."""
    return {key[len(prefix) :]: tensor for key, tensor in tensors.items() if key.startswith(prefix)}


