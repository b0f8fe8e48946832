"""Reading checkpoints and mapping their keys strictly onto hf_vlp models.

Shared by the converters in ``conversion/`` and by :mod:`hf_vlp.utils.tower_init`: every source key must be consumed
or explicitly dropped and every target key filled, or a :class:`ConversionError` names the offending keys.
"""
from __future__ import annotations

import ast
import json
import logging
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

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
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in name or name.endswith("/constants.pkl") for name in names)


def _is_safetensors_file(path: Path) -> bool:
    if path.suffix == SAFETENSORS_SUFFIX:
        return True
    with path.open("rb") as handle:
        head = handle.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


_ZIP_MAGIC = b"PK\x03\x04"
TRUST_TORCHSCRIPT_HINT = (
    "Pass --trust-torchscript (trust_torchscript=True) to open it with torch.jit.load instead, which RUNS code stored "
    "in the file: only for archives from a source you trust."
)


def _damaged(path: Path, error: BaseException) -> ConversionError:
    return ConversionError(
        f"{path} cannot be read: it is damaged or truncated ({type(error).__name__}: {_first_sentence(error)}). "
        "Download or copy it again."
    )


def read_checkpoint(path: str | Path, allow_torchscript: bool = True, trust_torchscript: bool = False) -> Checkpoint:
    """Open a checkpoint file of any supported container and return its (unwrapped) state dict.

    Containers: a TorchScript archive, a ``torch.save`` file read with ``weights_only=True`` (a plain state dict or
    one wrapped as ``{'state_dict': ...}``/``{'model': ...}``, DDP ``module.`` prefixes stripped), or a safetensors
    file. Nothing stored in the file is ever executed: a TorchScript archive's tensors are read from its zip records
    with a restricted unpickler (:func:`read_torchscript_tensors`; ``Checkpoint.module`` is then ``None``). Only
    ``trust_torchscript=True`` opens it with ``torch.jit.load`` (which runs the archive's code, e.g. a scripted
    ``__setstate__``) and keeps the module, so a converter can run it for verification.
    """
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"Checkpoint not found: {path}. Pass the path of an existing checkpoint file.")
    if path.is_dir():
        raise ConversionError(f"{path} is a directory; this converter expects a checkpoint file here.")
    if is_torchscript_archive(path):
        if not allow_torchscript:
            raise ConversionError(f"{path} is a TorchScript archive, which this converter does not accept.")
        if not trust_torchscript:
            return Checkpoint(path, "torchscript", read_torchscript_tensors(path))
        logger.warning(
            f"Opening {path} with torch.jit.load (--trust-torchscript): this runs code stored in the archive."
        )
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:  # torch raises many types for damaged archives
            raise ConversionError(f"{path} looks like a TorchScript archive but cannot be loaded: {error}") from error
        state_dict = {name: tensor.detach() for name, tensor in module.state_dict().items()}
        return Checkpoint(path, "torchscript", state_dict, module=module)
    if _is_safetensors_file(path):
        return Checkpoint(path, "safetensors", _load_safetensors(path))
    try:
        obj = _torch_load_weights(path)
    except pickle.UnpicklingError as error:
        raise ConversionError(
            f"Unknown container {path}: torch.load(weights_only=True) refused it ({_first_line(error)}). Only "
            "TorchScript archives, torch.save state dicts and safetensors files are accepted; pickles of arbitrary "
            "objects are never executed."
        ) from error
    except Exception as error:
        with path.open("rb") as handle:
            if handle.read(4) == _ZIP_MAGIC:  # a torch.save zip whose end (the central directory) is missing
                raise _damaged(path, error) from error
        raise ConversionError(
            f"Unknown container {path}: it is not a TorchScript archive, a torch.save file or a safetensors file "
            f"({type(error).__name__}: {_first_line(error)})."
        ) from error
    state_dict, extra = unwrap_state_dict(obj, source=str(path))
    return Checkpoint(path, "torch", state_dict, extra=extra)


# ----------------------------------------------------------------------------------- TorchScript without running it

# what a TorchScript archive's data.pkl may reference besides its own ``__torch__.*`` classes: tensor rebuilding,
# ``OrderedDict`` (backward hooks) and the list helpers of ``torch.jit._pickle``; every other global is refused
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}


class _Storage:
    """A storage type named in a persistent id: just its dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class ScriptObjectState:
    """A ``__torch__.*`` object of a TorchScript archive as data: its class name and the state pickled for it.
    Nothing of the class (its ``__setstate__`` included) runs."""

    qualified_name = ""
    state: Any = None

    def __init__(self, *args: Any) -> None:
        pass  # the pickled constructor arguments of a script object are never used

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("a tensor whose storage is not a data record")
    return storage.as_strided(tuple(size), tuple(stride), int(offset))


def _first_argument(data: Any, *_: Any) -> Any:
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _first_argument,
    ("torch._utils", "_rebuild_parameter_with_state"): _first_argument,
    ("collections", "OrderedDict"): OrderedDict,
    **{("torch.jit._pickle", name): _first_argument for name in (
        "build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag"
    )},
}


class _TorchScriptUnpickler(pickle.Unpickler):
    """Reads a TorchScript ``data.pkl`` as data: tensors come from the archive's ``data/N`` records, ``__torch__``
    objects become :class:`ScriptObjectState`, and any other global (``os.system``, ``builtins.eval`` ...) is
    refused, as ``torch.load(weights_only=True)`` refuses them."""

    def __init__(self, handle: Any, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(handle)
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, torch.Tensor] = {}
        self.classes: dict[str, type[ScriptObjectState]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Storage(_STORAGE_DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return _Storage(getattr(torch, name))
        if module.startswith("__torch__.") or module == "__torch__":
            qualified = f"{module}.{name}"
            if qualified not in self.classes:
                self.classes[qualified] = type(name, (ScriptObjectState,), {"qualified_name": qualified})
            return self.classes[qualified]
        raise pickle.UnpicklingError(f"it references the global {module}.{name}, which is not tensor data")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]}")
        _, storage, key, _location, numel = pid
        if key not in self.storages:
            record = f"{self.prefix}/data/{key}"
            try:
                info = self.archive.getinfo(record)
            except KeyError:
                raise pickle.UnpicklingError(f"the tensor record {record} is missing") from None
            buffer = bytearray(info.file_size)
            with self.archive.open(info) as handle:
                read = handle.readinto(buffer) if info.file_size else 0
            element = torch.empty((), dtype=storage.dtype).element_size()
            if read != info.file_size or read < int(numel) * element:
                raise pickle.UnpicklingError(f"the tensor record {record} is truncated")
            self.storages[key] = (
                torch.frombuffer(buffer, dtype=storage.dtype) if read else torch.empty(0, dtype=storage.dtype)
            )
        return self.storages[key]


@dataclass
class _ScriptClass:
    parameters: list[str] | None  # None: the class is not a module (no __parameters__ line)
    buffers: list[str] | None
    has_setstate: bool


def _script_classes(archive: zipfile.ZipFile, prefix: str) -> dict[str, _ScriptClass]:
    """The ``__parameters__``/``__buffers__`` lists and ``__setstate__`` presence of every class in the archive's
    ``code/`` sources, read with ``ast.parse`` (parsed, never compiled or run)."""
    classes = {}
    code = f"{prefix}/code/"
    for name in archive.namelist():
        if not (name.startswith(code) and name.endswith(".py")):
            continue
        module = name[len(code) : -len(".py")].replace("/", ".")
        tree = ast.parse(archive.read(name).decode("utf-8"))
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            lists: dict[str, list[str]] = {}
            for statement in node.body:
                if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.List):
                    for target in statement.targets:
                        if isinstance(target, ast.Name) and target.id in ("__parameters__", "__buffers__"):
                            lists[target.id] = [
                                item.value for item in statement.value.elts if isinstance(item, ast.Constant)
                            ]
            has_setstate = any(
                isinstance(statement, ast.FunctionDef) and statement.name == "__setstate__" for statement in node.body
            )
            classes[f"{module}.{node.name}"] = _ScriptClass(
                lists.get("__parameters__"), lists.get("__buffers__"), has_setstate
            )
    return classes


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict (parameters and buffers, as ``ScriptModule.state_dict()`` names them) of a TorchScript archive,
    read WITHOUT running anything stored in it.

    ``data.pkl`` is read by a restricted unpickler (only tensor-rebuilding globals; storages mapped to the ``data/N``
    records), the module classes' ``__parameters__``/``__buffers__`` come from parsing (never running) the ``code/``
    sources. A module whose class defines ``__setstate__`` keeps its state in a form only its code can interpret, so it
    is refused, as is anything else this reader cannot follow, with a :class:`ConversionError` naming
    ``--trust-torchscript``.
    """
    path = Path(path)

    def refuse(reason: str) -> ConversionError:
        return ConversionError(
            f"{path} is a TorchScript archive whose tensors cannot be read without running its code: {reason}. "
            + TRUST_TORCHSCRIPT_HINT
        )

    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise refuse("it has no single <archive>/data.pkl (an old or unusual TorchScript format)")
            prefix = pickles[0].split("/")[0]
            byteorder = f"{prefix}/byteorder"
            if byteorder in archive.namelist() and archive.read(byteorder).decode().strip() != sys.byteorder:
                raise refuse("its tensors are stored in the other byte order")
            classes = _script_classes(archive, prefix)
            with archive.open(pickles[0]) as handle:
                root = _TorchScriptUnpickler(handle, archive, prefix).load()
    except ConversionError:
        raise
    except (zipfile.BadZipFile, EOFError) as error:
        raise _damaged(path, error) from error
    except (pickle.UnpicklingError, SyntaxError, UnicodeDecodeError, ValueError, TypeError, RuntimeError,
            AttributeError, IndexError, KeyError) as error:
        raise refuse(_first_line(error)) from error
    if not isinstance(root, ScriptObjectState):
        raise refuse(f"its data.pkl holds a {type(root).__name__}, not a scripted module")
    state_dict: dict[str, torch.Tensor] = {}

    def collect(module: ScriptObjectState, prefix: str) -> None:
        script_class = classes.get(module.qualified_name)
        if script_class is not None and script_class.has_setstate:
            raise refuse(f"{module.qualified_name} defines __setstate__, code that runs while the archive is loaded")
        if not isinstance(module.state, dict):
            raise refuse(f"the state of {module.qualified_name} is not a dict of attributes")
        attributes = module.state
        if script_class is not None and script_class.parameters is not None:
            names = [*script_class.parameters, *(script_class.buffers or [])]
            if script_class.buffers is None:  # archives written before __buffers__ was recorded
                names += [name for name, value in attributes.items() if isinstance(value, torch.Tensor)]
        else:
            names = [name for name, value in attributes.items() if isinstance(value, torch.Tensor)]
        for name in dict.fromkeys(names):
            value = attributes.get(name)
            if isinstance(value, torch.Tensor):
                state_dict[prefix + name] = value
        for name, value in attributes.items():
            if isinstance(value, ScriptObjectState):
                child = classes.get(value.qualified_name)
                if child is None or child.parameters is not None:  # a submodule (not a custom class object)
                    collect(value, f"{prefix}{name}.")

    collect(root, "")
    return state_dict


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _first_sentence(error: BaseException) -> str:
    return _first_line(error).split(". ")[0].rstrip(".")


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


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, or a one-line error for a damaged one."""
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as error:
        raise ConversionError(
            f"{path} is not a readable safetensors file (damaged or truncated?): {_first_line(error)}"
        ) from error


def _torch_load_weights(path: Path) -> Any:
    """``torch.load`` that never executes pickled code (``weights_only=True``)."""
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == SAFETENSORS_SUFFIX:
        return _load_safetensors(path)
    try:
        obj = _torch_load_weights(path)
    except pickle.UnpicklingError as error:
        raise ConversionError(
            f"{path}: torch.load(weights_only=True) refused it ({_first_line(error)}); pickles of arbitrary objects "
            "are never executed."
        ) from error
    except Exception as error:
        raise _damaged(path, error) from error
    return unwrap_state_dict(obj, source=str(path))[0]


def check_finite(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise when a floating tensor holds inf or NaN (a diverged or damaged checkpoint), naming the first such keys;
    a converter skips this only on request (``--allow-non-finite``)."""
    bad = []
    for key, tensor in state_dict.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            kinds = [kind for kind, present in (("nan", tensor.isnan().any()), ("inf", tensor.isinf().any())) if present]
            bad.append(f"{key} ({'/'.join(kinds)})")
    if bad:
        raise ConversionError(
            f"{source} holds non-finite values (inf/NaN) in {len(bad)} tensors: {_format_keys(bad)}. The checkpoint is "
            "damaged or its training diverged; pass --allow-non-finite (allow_non_finite=True) to convert it anyway."
        )


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
    # fused targets: the concatenation axis and (source key, shape, dtype) of every part in order (per-part checks)
    fused: dict[str, tuple[int, list[tuple[str, tuple[int, ...], torch.dtype]]]] = field(default_factory=dict)


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
    fused: dict[str, tuple[int, list[tuple[str, tuple[int, ...], torch.dtype]]]] = {}
    unclaimed: list[str] = []
    clashes: list[str] = []
    unfusable: list[str] = []
    untransformable: list[str] = []

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
                if rule.transform is not None:
                    try:
                        tensor = rule.transform(tensor)
                    except (RuntimeError, IndexError, ValueError) as error:
                        untransformable.append(f"{key} {list(tensor.shape)} ({_first_line(error)})")
                        break
                tensors[target] = tensor
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
        ordered = [parts[part] for part in rule.parts]
        if not _fusable([tensor for _, tensor in ordered], rule.dim):
            listed = ", ".join(f"{key} {list(tensor.shape)} {str(tensor.dtype).replace('torch.', '')}"
                               for key, tensor in ordered)
            unfusable.append(f"{target} <- {listed}")
            continue
        tensors[target] = torch.cat([tensor for _, tensor in ordered], dim=rule.dim)
        origins[target] = [key for key, _ in ordered]
        fused[target] = (rule.dim, [(key, tuple(tensor.shape), tensor.dtype) for key, tensor in ordered])

    _raise_problems(
        "The checkpoint does not match the expected layout:",
        {
            "unexpected source keys that no rule consumes": unclaimed,
            "incomplete fused tensors": incomplete,
            "several source keys map to one target": clashes,
            "fused parts whose shapes or dtypes do not fit together": unfusable,
            "tensors of the wrong rank for their rule": untransformable,
        },
    )
    return MappedStateDict(tensors, origins, dropped, fused)


def _fusable(tensors: Sequence[torch.Tensor], dim: int) -> bool:
    """Parts of one fused tensor: same rank, equal sizes but along ``dim``, one dtype kind (all floating or none)."""
    first = tensors[0]
    if first.dim() == 0 or not -first.dim() <= dim < first.dim():
        return False
    dim %= first.dim()
    for tensor in tensors:
        if tensor.dim() != first.dim() or tensor.is_floating_point() != first.is_floating_point():
            return False
        if any(size != expected for axis, (size, expected) in enumerate(zip(tensor.shape, first.shape)) if axis != dim):
            return False
    return True


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
        dim, parts = mapped.fused.get(key, (0, []))
        part_shape = _part_shape(tuple(target.shape), len(parts), dim) if parts else None
        if parts:  # every part on its own: its share of the target's shape and the target's dtype kind
            for source, shape, dtype in parts:
                if part_shape is not None and shape != part_shape:
                    shapes.append(f"{key} (part {source}): expected {list(part_shape)}, got {list(shape)}")
                if dtype.is_floating_point != target.is_floating_point():
                    dtypes.append(f"{key} (part {source}): expected {target.dtype}, got {dtype}")
        if part_shape is None and tuple(tensor.shape) != tuple(target.shape):
            origin = ", ".join(mapped.sources[key])
            shapes.append(f"{key} (from {origin}): expected {list(target.shape)}, got {list(tensor.shape)}")
        elif not parts and tensor.is_floating_point() != target.is_floating_point():
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


def _part_shape(shape: tuple[int, ...], count: int, dim: int) -> tuple[int, ...] | None:
    """The shape of each of ``count`` equal parts concatenated along ``dim`` into ``shape`` (``None`` when it does not
    split evenly; the whole tensor's shape is then checked)."""
    if not -len(shape) <= dim < len(shape) or shape[dim] % count:
        return None
    dim %= len(shape)
    return (*shape[:dim], shape[dim] // count, *shape[dim + 1 :])


def load_mapped_state_dict(model: torch.nn.Module, mapped: MappedStateDict) -> None:
    """Strictly load mapped tensors into ``model``; floating tensors are cast to the model's dtype (fp16 -> fp32)."""
    expected = model.state_dict()
    check_mapped_state_dict(mapped, expected)
    converted = {key: tensor.to(expected[key].dtype) for key, tensor in mapped.tensors.items()}
    model.load_state_dict(converted, strict=True)


def filter_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` with the prefix removed (to load one tower of a mapped state dict)."""
    return {key[len(prefix) :]: tensor for key, tensor in tensors.items() if key.startswith(prefix)}


