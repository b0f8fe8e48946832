"""Flatten the part of hf_vlp that some classes need into top-level modules that import each other relatively.

transformers' remote code is a folder of flat modules: it copies a module and every ``from .x import`` it names
(recursively) and nothing else. :func:`bundle_sources` turns hf_vlp's nested package into such modules:
``hf_vlp/modules/transformer.py`` becomes ``hf_vlp_modules_transformer`` and every hf_vlp import, absolute or
relative, top-level or inside a function, becomes ``from .<flat name> import ...`` (an import from a package
``__init__`` goes straight to the module that defines the name).

Only what the given classes can reach is kept, at the granularity of top-level statements: a definition stays when
code that stays names it (in its body, decorators, defaults or annotations), a statement with side effects stays
with its module, and imports keep only the names still used. So training-only helpers and the packages only they
import (accelerate, matplotlib) are left out rather than becoming requirements of the remote code.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import re
import symtable
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "hf_vlp"
# the packages transformers' own dependencies bring, plus the few the models add; anything else is an error
REMOTE_DEPENDENCIES = frozenset(
    {"torch", "transformers", "safetensors", "huggingface_hub", "tokenizers", "numpy", "PIL", "regex", "ftfy"}
)
# module attributes Python defines, which code may read without defining them
_MODULE_ATTRIBUTES = frozenset({"__file__", "__spec__", "__loader__", "__package__", "__path__", "__builtins__",
                                "__annotations__", "__cached__"})
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign, ast.Import,
                ast.ImportFrom, ast.Pass)


class BundleError(ValueError):
    """The needed hf_vlp code cannot be flattened; the message names the module and the construct to change."""


def flat_name(module: str) -> str:
    """``hf_vlp.modules.transformer`` -> ``hf_vlp_modules_transformer``."""
    return module.replace(".", "_")


@dataclass
class _Unit:
    """A top-level statement of a module: the names it binds, the module-level names it may read, and whether it has
    side effects (kept whenever its module is)."""

    node: ast.stmt
    binds: frozenset[str]
    reads: frozenset[str]
    always: bool


@dataclass
class _Module:
    name: str
    path: Path
    is_package: bool
    text: str
    tree: ast.Module
    units: list[_Unit]
    binders: dict[str, list[int]] = field(default_factory=dict)  # name -> indices of the units binding it


def _bound_names(node: ast.stmt) -> set[str]:
    """The module-level names a top-level statement binds (function and class bodies are not descended into)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {alias.asname or alias.name.split(".")[0] for alias in node.names}
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    names = {n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)}
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.stmt):
            names |= _bound_names(child)
    if isinstance(node, ast.Try):
        for handler in node.handlers:
            for child in handler.body:
                names |= _bound_names(child)
    return names


def _is_definition(node: ast.stmt) -> bool:
    """Whether a top-level statement only defines names (so it may be dropped when nothing reads them)."""
    if isinstance(node, ast.ImportFrom) and node.module == "__future__":
        return False
    if isinstance(node, (ast.If, ast.Try)):
        children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
        if isinstance(node, ast.Try):
            children += [c for handler in node.handlers for c in handler.body]
        return all(_is_definition(child) for child in children)
    return isinstance(node, _DEFINITIONS)


def _annotation_names(node: ast.AST) -> set[str]:
    """Names inside string annotations (``"Foo"``, ``list["Foo"]``): typing and dataclass validation resolve them."""
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            try:
                parsed = ast.parse(sub.value, mode="eval")
            except SyntaxError:
                continue
            names |= {n.id for n in ast.walk(parsed) if isinstance(n, ast.Name)}
    return names


def _read_names(node: ast.stmt) -> set[str]:
    """Every name a statement may read from module scope, anywhere inside it (a superset: locals count too)."""
    names: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            names.add(sub.id)
        elif isinstance(sub, (ast.Global, ast.Nonlocal)):
            names.update(sub.names)
        elif isinstance(sub, ast.arg) and sub.annotation is not None:
            names |= _annotation_names(sub.annotation)
        elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and sub.returns is not None:
            names |= _annotation_names(sub.returns)
        elif isinstance(sub, ast.AnnAssign):
            names |= _annotation_names(sub.annotation)
    if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
        names.add(node.target.id)
    return names


def _load_module(name: str) -> _Module:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise BundleError(f"Cannot find the source of {name}: remote code is exported from an hf_vlp source install.")
    path = Path(spec.origin)
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    units: list[_Unit] = []
    previous_end = 0
    for node in tree.body:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", ()))])
        if first <= previous_end:
            raise BundleError(f"{path}:{node.lineno}: put one statement per line (no ';') so it can be flattened.")
        previous_end = node.end_lineno or node.lineno
        units.append(_Unit(node, frozenset(_bound_names(node)), frozenset(_read_names(node)), not _is_definition(node)))
    module = _Module(name, path, spec.submodule_search_locations is not None, text, tree, units)
    for index, unit in enumerate(units):
        for bound in unit.binds:
            module.binders.setdefault(bound, []).append(index)
    return module


def _package_target(module: _Module, node: ast.ImportFrom) -> str | None:
    """The absolute hf_vlp module an ``ImportFrom`` names, or ``None`` for another package."""
    if node.level == 0:
        target = node.module or ""
        return target if target == PACKAGE or target.startswith(PACKAGE + ".") else None
    parts = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    if node.level > 1:
        parts = parts[: len(parts) - node.level + 1]
    return ".".join([*parts, node.module] if node.module else parts)


class _Bundler:
    """Finds what the roots reach: the kept top-level statements of each module and the aliases of kept imports."""

    def __init__(self) -> None:
        self.modules: dict[str, _Module] = {}
        self.kept: dict[str, set[int]] = {}  # module -> indices of kept units
        self.used_aliases: dict[tuple[str, int], set[str]] = {}  # (module, unit) -> local names of kept aliases
        self.pending: list[tuple[str, str]] = []

    def module(self, name: str) -> _Module:
        if name not in self.modules:
            self.modules[name] = _load_module(name)
        return self.modules[name]

    def resolve(self, module_name: str, name: str, seen: tuple[tuple[str, str], ...] = ()) -> tuple[str, str]:
        """The (module, name) that defines ``name`` as imported from ``module_name``, looking through package
        ``__init__`` re-exports (which are never bundled: they import far more than a model needs)."""
        module = self.module(module_name)
        if not module.is_package:
            if name not in module.binders:
                raise BundleError(f"{module.name} has no top-level name {name!r} (imported by the bundled code).")
            return module_name, name
        if (module_name, name) in seen:
            raise BundleError(f"Circular re-export of {name!r} through {module_name}.")
        for index in module.binders.get(name, []):
            node = module.units[index].node
            if isinstance(node, ast.ImportFrom):
                target = _package_target(module, node)
                for alias in node.names:
                    if target is not None and (alias.asname or alias.name) == name:
                        return self.resolve(target, alias.name, (*seen, (module_name, name)))
        raise BundleError(
            f"{name!r} is imported from the package {module_name} but not re-exported there from one of its modules; "
            f"import it from the module that defines it."
        )

    def need(self, module_name: str, name: str) -> None:
        self.pending.append(self.resolve(module_name, name))

    def keep_unit(self, module: _Module, index: int) -> None:
        kept = self.kept.setdefault(module.name, set())
        if index in kept:
            return
        kept.add(index)
        unit = module.units[index]
        for read in unit.reads:
            for binder in module.binders.get(read, []):
                if binder != index:
                    self.keep_name(module, binder, read)
        for node in ast.walk(unit.node):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names):
                raise BundleError(
                    f"{module.path}:{node.lineno}: `import {PACKAGE}...` cannot be flattened; use `from ... import`."
                )
            if isinstance(node, ast.ImportFrom) and node is not unit.node:
                target = _package_target(module, node)
                if target is not None:
                    for alias in node.names:
                        self.need(target, alias.name)

    def keep_name(self, module: _Module, index: int, name: str) -> None:
        """Keep the unit at ``index`` for ``name``; for an import, only the aliases read are kept."""
        node = module.units[index].node
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            used = self.used_aliases.setdefault((module.name, index), set())
            if name in used:
                return
            used.add(name)
            target = _package_target(module, node)
            if target is not None:
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        self.need(target, alias.name)
            self.kept.setdefault(module.name, set()).add(index)
            return
        if isinstance(node, ast.Import):
            self.used_aliases.setdefault((module.name, index), set()).add(name)
            self.kept.setdefault(module.name, set()).add(index)
            return
        self.keep_unit(module, index)

    def run(self, roots: Iterable[tuple[str, str]]) -> None:
        for module_name, name in roots:
            self.need(module_name, name)
        while self.pending:
            module_name, name = self.pending.pop()
            module = self.module(module_name)
            if module_name not in self.kept:  # a module newly in the bundle: its side effects come with it
                self.kept[module_name] = set()
                for index, unit in enumerate(module.units):
                    if unit.always:
                        self.keep_unit(module, index)
            for index in module.binders[name]:
                self.keep_name(module, index, name)


def _line_offsets(text: str) -> list[int]:
    offsets = [0]
    for line in text.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    return offsets


def _position(text: str, offsets: list[int], line: int, byte_col: int) -> int:
    """Character offset of an AST (line, UTF-8 byte column) position."""
    start = offsets[line - 1]
    line_text = text[start:offsets[line]] if line < len(offsets) else text[start:]
    return start + len(line_text.encode("utf-8")[:byte_col].decode("utf-8"))


def _from_import(module: str, names: list[str], indent: str) -> str:
    """``from <module> import a, b``, one name a line in parentheses when it would be longer than 120 characters."""
    line = f"from {module} import {', '.join(names)}"
    if len(indent) + len(line) <= 120:
        return line
    return "".join([f"from {module} import (\n", *(f"{indent}    {name},\n" for name in names), f"{indent})"])


def _import_lines(pairs: list[tuple[str, str, str]], indent: str) -> str:
    """``from .<flat> import name as local`` for (target module, name, local name), one statement per module."""
    by_module: dict[str, list[str]] = {}
    for target, name, local in pairs:
        by_module.setdefault(target, []).append(name if name == local else f"{name} as {local}")
    statements = [_from_import(f".{flat_name(target)}", names, indent) for target, names in by_module.items()]
    return ("\n" + indent).join(statements)


class _Writer:
    """Writes one bundled module: dropped statements removed, hf_vlp imports rewritten."""

    def __init__(self, bundler: _Bundler, module: _Module):
        self.bundler, self.module = bundler, module
        self.text = module.text
        self.offsets = _line_offsets(self.text)
        self.edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in characters

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (_position(self.text, self.offsets, node.lineno, node.col_offset),
                _position(self.text, self.offsets, node.end_lineno, node.end_col_offset))

    def drop(self, node: ast.stmt, previous_end: int) -> None:
        """Remove whole lines: the statement, its decorators and the comment lines right above it (below the
        previous statement, which ends on line ``previous_end``)."""
        lines = self.text.splitlines(keepends=True)
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", ()))])
        while first - 1 > previous_end and lines[first - 2].lstrip().startswith("#"):
            first -= 1
        self.edits.append((self.offsets[first - 1], self.offsets[node.end_lineno], ""))

    def rewrite_import(self, node: ast.ImportFrom, local_names: set[str] | None) -> None:
        """Rewrite an import keeping the aliases in ``local_names`` (all when ``None``)."""
        aliases = [a for a in node.names if local_names is None or (a.asname or a.name) in local_names]
        target = _package_target(self.module, node)
        indent = " " * node.col_offset
        if target is None:
            if len(aliases) == len(node.names):
                return
            names = [a.name if a.asname is None else f"{a.name} as {a.asname}" for a in aliases]
            replacement = _from_import(f"{'.' * node.level}{node.module or ''}", names, indent)
        else:
            pairs = []
            for alias in aliases:
                defining, name = self.bundler.resolve(target, alias.name)
                pairs.append((defining, name, alias.asname or alias.name))
            replacement = _import_lines(pairs, indent)
        self.edits.append((*self.span(node), replacement))

    def render(self) -> str:
        kept = self.bundler.kept[self.module.name]
        previous_end = 0
        for index, unit in enumerate(self.module.units):
            node = unit.node
            if index not in kept:
                self.drop(node, previous_end)
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and not unit.always:
                used = self.bundler.used_aliases.get((self.module.name, index), set())
                if isinstance(node, ast.Import):
                    if len(used) < len(node.names):
                        names = [a for a in node.names if (a.asname or a.name.split(".")[0]) in used]
                        parts = [a.name if a.asname is None else f"{a.name} as {a.asname}" for a in names]
                        self.edits.append((*self.span(node), f"import {', '.join(parts)}"))
                else:
                    self.rewrite_import(node, used)
            else:
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and _package_target(self.module, sub) is not None:
                        self.rewrite_import(sub, None)
            previous_end = node.end_lineno
        text = self.text
        for start, end, replacement in sorted(self.edits, reverse=True):
            text = text[:start] + replacement + text[end:]
        return _at_most_two_blank_lines(text)


def _at_most_two_blank_lines(text: str) -> str:
    """Collapse the runs of blank lines that dropped statements leave between top-level statements (never inside one:
    a string may hold blank lines)."""
    inside: set[int] = set()
    for node in ast.parse(text).body:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", ()))])
        inside.update(range(first, node.end_lineno + 1))
    kept, blanks = [], 0
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        blanks = blanks + 1 if number not in inside and not line.strip() else 0
        if blanks <= 2:
            kept.append(line)
    return "".join(kept).rstrip("\n") + "\n"


@dataclass(frozen=True)
class Bundle:
    """Flat module name -> source, and the third-party packages they import."""

    sources: dict[str, str]
    requirements: tuple[str, ...]


def undefined_names(source: str) -> list[str]:
    """Global names a module's code reads (outside annotations) that neither it nor the builtins define: what
    dropping a still-needed definition would leave behind, checked on every bundled module."""
    table = symtable.symtable(source, "<bundled>", "exec")
    defined = {symbol.get_name() for symbol in table.get_symbols() if symbol.is_assigned() or symbol.is_imported()}
    read: set[str] = set()
    tables = [table]
    while tables:
        scope = tables.pop()
        for symbol in scope.get_symbols():
            global_read = symbol.is_global() if scope is not table else symbol.get_name() not in defined
            if symbol.is_referenced() and global_read:
                read.add(symbol.get_name())
        tables.extend(scope.get_children())
    return sorted(read - defined - set(dir(builtins)) - _MODULE_ATTRIBUTES)


def _external_packages(name: str, source: str) -> set[str]:
    """Top-level packages a bundled module imports anywhere (what transformers' ``check_imports`` requires)."""
    packages = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            packages |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            packages.add(node.module.split(".")[0])
    if PACKAGE in packages:
        raise BundleError(f"The bundled module {name} still imports {PACKAGE}.")
    return packages - set(sys.stdlib_module_names) - {"__future__"}


def _named_relative_imports(source: str) -> set[str]:
    """The modules transformers will copy for this one: it finds relative imports by these patterns in the raw text
    (``get_relative_imports`` in ``transformers.dynamic_module_utils``), docstrings included."""
    return set(re.findall(r"^\s*import\s+\.(\S+)\s*$", source, flags=re.MULTILINE)) | set(
        re.findall(r"^\s*from\s+\.(\S+)\s+import", source, flags=re.MULTILINE)
    )


def bundle_sources(roots: Iterable[tuple[str, str]], header: str = "") -> Bundle:
    """Flatten what the ``(module, name)`` roots need into ``{flat module name: source}``; ``header`` is a comment put
    on top of every module (``{module}`` becomes the original module's path inside the package)."""
    bundler = _Bundler()
    bundler.run(roots)
    sources: dict[str, str] = {}
    importers: dict[str, list[str]] = {}  # third-party package -> the bundled modules importing it
    for module_name in sorted(bundler.kept):
        module = bundler.modules[module_name]
        source = _Writer(bundler, module).render()
        relative = module_name.replace(".", "/") + ".py"
        source = header.format(module=relative) + source if header else source
        flat = flat_name(module_name)
        if flat in sources:
            raise BundleError(f"Two hf_vlp modules flatten to the same name {flat!r}; rename one of them.")
        undefined = undefined_names(source)
        if undefined:
            raise BundleError(f"The bundled copy of {module_name} reads {undefined}, which it no longer defines.")
        sources[flat] = source
        for package in _external_packages(flat, source):
            importers.setdefault(package, []).append(module_name)
    for name, source in sources.items():
        missing = sorted(_named_relative_imports(source) - sources.keys())
        if missing:
            raise BundleError(f"The bundled copy {name} has lines transformers reads as imports of {missing}: reword "
                              "them (a docstring line starting with `from .x import` counts).")
    unexpected = {package: importers[package] for package in sorted(importers.keys() - REMOTE_DEPENDENCIES)}
    if unexpected:
        raise BundleError(
            f"The code the models and processors need imports packages a machine without hf_vlp may lack "
            f"({unexpected}): keep those imports in code the models do not reach (training, plotting), or add the "
            "package to REMOTE_DEPENDENCIES if the models really need it."
        )
    return Bundle(sources, tuple(sorted(importers)))


__all__ = ["PACKAGE", "REMOTE_DEPENDENCIES", "Bundle", "BundleError", "bundle_sources", "flat_name", "undefined_names"]
