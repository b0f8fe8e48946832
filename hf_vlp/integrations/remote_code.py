"""Export a saved hf_vlp model folder as transformers remote code: loadable where hf_vlp is not installed.

:func:`export_remote_code` adds to a folder written by ``save_pretrained`` (the model's, and its processor's when
saved there too) flat copies of the hf_vlp modules its classes need (:mod:`hf_vlp.integrations.source_bundle`) and the
``auto_map`` entries that point transformers' Auto classes at them, so that::

    AutoModelForImageTextToText.from_pretrained(folder_or_repo, trust_remote_code=True)
    AutoProcessor.from_pretrained(folder_or_repo, trust_remote_code=True)

load the same classes, with the same outputs, on a machine with only transformers and its usual dependencies. The
``auto_map`` mirrors what ``import hf_vlp`` registers (:data:`hf_vlp.integrations.auto.ARCHITECTURES`), so each Auto
class gives the same class with or without hf_vlp; where hf_vlp is imported, transformers keeps using the registered
classes even with ``trust_remote_code=True``. The tokenizers are transformers' own classes and need no code. A
head that ``architectures`` names but no Auto class maps (e.g. ``VlpAlbefForImageTextRetrieval``) is exported too:
``get_class_from_dynamic_module("hf_vlp_classes.<class>", folder_or_repo)`` (``transformers.dynamic_module_utils``)
loads its class. A model loaded from the copy saves like any remote-code model, without hf_vlp's model card.

Save both, then export: ``processor.save_pretrained(folder)`` and ``model.save_pretrained(folder, remote_code=True)``,
or ``export_remote_code(folder)`` once both are saved (again after re-saving either).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .auto import ARCHITECTURES, ArchitectureRegistration
from .source_bundle import PACKAGE, BundleError, bundle_sources, flat_name

CONFIG_FILE = "config.json"
PROCESSOR_FILE = "processor_config.json"
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
# first line of every exported module; also how a later export recognises (and replaces) its own files
HEADER_PREFIX = "# Exported from hf_vlp"
HEADER = HEADER_PREFIX + " {version} {{module}} as remote code: edit hf_vlp, not this copy.\n"
# the module every auto_map entry names: transformers keys its copy of remote code by the module a class is loaded
# from (and that module's imports), so classes named through one module share one copy of the code they have in common
ENTRY_MODULE = "hf_vlp_classes"


def class_reference(cls: type) -> str:
    """How ``auto_map`` names a class of the export: ``hf_vlp_classes.<class>``."""
    return f"{ENTRY_MODULE}.{cls.__name__}"


def _entry_module(classes: list[type], header: str) -> str:
    """The source of :data:`ENTRY_MODULE`: it imports every class ``auto_map`` names."""
    classes = sorted(classes, key=lambda cls: (flat_name(cls.__module__), cls.__name__))
    imports = "".join(f"from .{flat_name(cls.__module__)} import {cls.__name__}\n" for cls in classes)
    names = "".join(f'    "{name}",\n' for name in sorted(cls.__name__ for cls in classes))
    return (
        header.format(module="(the auto_map entry module)")
        + '"""The classes of this folder\'s ``auto_map``, imported through one module so that transformers loads\n'
        + 'one copy of the code they share."""\n\n'
        + imports
        + f"\n__all__ = [\n{names}]\n"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read {path}: {error}. Save the model again with save_pretrained.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object. Save the model again with save_pretrained.")
    return data


def _json_text(data: dict[str, Any]) -> str:
    """JSON as transformers writes its config files."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def find_registration(model_type: Any) -> tuple[ArchitectureRegistration, type]:
    """The hf_vlp architecture and config class of a ``model_type`` (composite, vision or text config)."""
    for arch in ARCHITECTURES:
        for config_class in arch.configs():
            if config_class.model_type == model_type:
                return arch, config_class
    known = sorted(c.model_type for arch in ARCHITECTURES for c in arch.configs())
    raise ValueError(
        f"config.json has model_type {model_type!r}, not an hf_vlp model ({', '.join(known)}): export_remote_code "
        "exports folders written by an hf_vlp model's save_pretrained."
    )


def model_auto_map(arch: ArchitectureRegistration, config_class: type) -> dict[str, type]:
    """Auto class name -> class, as :func:`hf_vlp.integrations.auto.register_architecture` registers them for
    ``config_class``."""
    if config_class is arch.config:
        return {"AutoConfig": config_class, "AutoModel": arch.model,
                **{auto_class.__name__: head for auto_class, head in arch.heads}}
    towers = dict(arch.tower_pairs())
    if config_class in towers:
        return {"AutoConfig": config_class, "AutoModel": towers[config_class]}
    return {"AutoConfig": config_class}  # a sub-config without a model of its own (CoCa's decoder)


def _architecture_classes(arch: ArchitectureRegistration, names: Any) -> list[type]:
    """The classes ``config.json``'s ``architectures`` names (exported too, for loading them by class)."""
    if names is None:
        return []
    family = importlib.import_module(arch.config.__module__.rpartition(".")[0])
    classes = []
    for name in names:
        cls = getattr(family, name, None)
        if not isinstance(cls, type):
            raise ValueError(
                f"config.json names the architecture {name!r}, which {family.__name__} does not define: save the "
                "model again with this hf_vlp version."
            )
        classes.append(cls)
    return classes


def _processor_files(folder: Path, arch: ArchitectureRegistration) -> dict[str, dict[str, Any]]:
    """The processor files present, with ``auto_map`` entries for hf_vlp's processor and image processor: on the
    processor config and on the image-processor config, nested in ``processor_config.json`` or on its own."""

    def add_entries(data: dict[str, Any]) -> bool:
        entries = {}
        if data.get("processor_class") == arch.processor.__name__:
            entries["AutoProcessor"] = class_reference(arch.processor)
        if data.get("image_processor_type") == arch.image_processor.__name__:
            entries["AutoImageProcessor"] = class_reference(arch.image_processor)
        if entries:
            data["auto_map"] = {**data.get("auto_map", {}), **entries}
        return bool(entries)

    updated = {}
    for name in (PROCESSOR_FILE, IMAGE_PROCESSOR_FILE):
        path = folder / name
        if not path.is_file():
            continue
        data = _read_json(path)
        changed = add_entries(data)
        nested = data.get("image_processor")
        if isinstance(nested, dict):
            changed = add_entries(nested) or changed
        if changed:
            updated[name] = data
    return updated


def _stale_modules(folder: Path, keep: set[str]) -> list[Path]:
    """Modules a previous export wrote that this one does not (e.g. after hf_vlp moved code)."""
    stale = []
    for path in sorted(folder.glob("*.py")):
        if path.name in keep:
            continue
        with path.open(encoding="utf-8", errors="replace") as handle:
            if handle.readline().startswith(HEADER_PREFIX):
                stale.append(path)
    return stale


def export_remote_code(folder: str | os.PathLike) -> list[str]:
    """Make a saved hf_vlp model folder loadable with ``trust_remote_code=True`` where hf_vlp is not installed.

    Writes the flat modules the folder's config, model heads and (when saved there) processor need, and ``auto_map``
    into ``config.json`` and the processor configs; returns the paths written, sorted. Running it again gives the
    same files. Nothing changes when it fails: files are prepared in a temporary folder next to ``folder`` and moved
    in at the end, the configs last.
    """
    folder = Path(folder).resolve()
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(
            f"{folder} has no {CONFIG_FILE}: save the model there first (model.save_pretrained(folder)), "
            "then export it."
        )
    config = _read_json(config_path)
    arch, config_class = find_registration(config.get("model_type"))
    auto_map = model_auto_map(arch, config_class)
    model_classes = [*auto_map.values(), *_architecture_classes(arch, config.get("architectures"))]
    processor_files = _processor_files(folder, arch)
    processor_classes = [arch.processor, arch.image_processor] if processor_files else []

    entries = list(dict.fromkeys(model_classes + processor_classes))  # ordered and unique
    header = HEADER.format(version=importlib.import_module(PACKAGE).__version__)
    try:
        bundle = bundle_sources([(cls.__module__, cls.__name__) for cls in entries], header=header)
    except BundleError as error:
        raise ValueError(f"Cannot export {folder} as remote code: {error}") from None
    if ENTRY_MODULE in bundle.sources:
        raise ValueError(f"An hf_vlp module flattens to {ENTRY_MODULE!r}, the export's entry module: rename it.")

    config["auto_map"] = {**config.get("auto_map", {}), **{name: class_reference(c) for name, c in auto_map.items()}}
    files = {f"{module}.py": source for module, source in bundle.sources.items()}
    files[f"{ENTRY_MODULE}.py"] = _entry_module(entries, header)
    configs = {CONFIG_FILE: _json_text(config), **{name: _json_text(data) for name, data in processor_files.items()}}

    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.remote-code-", dir=folder.parent))
    try:
        for name, text in {**files, **configs}.items():
            (staging / name).write_text(text, encoding="utf-8")
        # the code first: the auto_map entries appear only once the modules they name are in place
        _move_in(staging, folder, [*sorted(files), *sorted(configs)], _stale_modules(folder, set(files)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(str(folder / name) for name in [*files, *configs])


def _move_in(staging: Path, folder: Path, names: list[str], stale: list[Path]) -> None:
    """Move the staged ``names`` into ``folder`` and delete ``stale``; if any step fails, every file changed so far
    is put back as it was (from copies kept in ``staging``) before the error propagates."""
    backup = staging / "backup"
    backup.mkdir()
    changed: list[Path] = []
    try:
        for destination in [*stale, *(folder / name for name in names)]:
            if destination.exists():
                shutil.copy2(destination, backup / destination.name)
            changed.append(destination)
            if destination in stale:
                destination.unlink()
            else:
                os.replace(staging / destination.name, destination)
    except BaseException:
        for destination in reversed(changed):
            saved = backup / destination.name
            if saved.exists():
                os.replace(saved, destination)
            else:
                destination.unlink(missing_ok=True)
        raise


__all__ = ["class_reference", "export_remote_code", "find_registration", "model_auto_map"]


def drop_stale_auto_map(folder: str | os.PathLike) -> bool:
    """Remove from ``folder/config.json`` the ``auto_map`` entries that point at exported code the folder does not
    hold (a model loaded from an exported repo, then saved without ``remote_code=True``): without hf_vlp they would
    fail with "hf_vlp_classes.py not found" instead of saying that the folder carries no code. Returns whether it
    changed the file."""
    config_file = Path(folder) / "config.json"
    if (Path(folder) / f"{ENTRY_MODULE}.py").is_file() or not config_file.is_file():
        return False
    config = _read_json(config_file)
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict):
        return False
    kept = {key: value for key, value in auto_map.items() if not str(value).startswith(f"{ENTRY_MODULE}.")}
    if kept == auto_map:
        return False
    if kept:
        config["auto_map"] = kept
    else:
        config.pop("auto_map")
    config_file.write_text(_json_text(config), encoding="utf-8")
    return True
