"""The package layout promises of issue 9, kept by tests: no module-level import cycle inside hf_vlp/ or
conversion/, no converter importing another converter, no source file over 900 lines, a package root of at most five
modules, and private transformers internals touched only in ``hf_vlp/integrations/compat.py``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("hf_vlp", "conversion")
MAX_LINES = 900
MAX_ROOT_MODULES = 5
PRIVATE_TRANSFORMERS_NAMES = (
    "_adjust_missing_and_unexpected_keys",
    "_update_finished_beams",
    "_check_early_stop_heuristic",
    "_prepare_images_structure",
    "get_expanded_tied_weights_keys",
    "_is_hf_initialized",
    "_initialize_weights",
)


def source_files(root: Path = ROOT) -> list[Path]:
    return sorted(p for package in PACKAGES for p in (root / package).rglob("*.py"))


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _absolute(node: ast.ImportFrom, current: str, package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".") if package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def module_level_imports(path: Path, known: set[str], root: Path = ROOT) -> set[str]:
    """Modules of ``known`` that ``path`` imports when it is imported: top-level statements only (imports inside
    functions and under ``if TYPE_CHECKING:`` run later or never)."""
    current, package = module_name(path, root), is_package(path)
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            # `from a.b import c` needs module a.b executed, or only the submodule a.b.c when c is one; the parent
            # packages a and a.b have started executing already, which is no cycle
            target = _absolute(node, current, package)
            submodules = {f"{target}.{alias.name}" for alias in node.names} & known
            found.update(submodules or ({target} & known))
        else:
            continue
    # importing a.b.c runs the package a.b first, unless the importer lives inside it (then a.b is already running);
    # the top-level packages are running whenever any of their modules is imported
    ancestors = {".".join(current.split(".")[:i]) for i in range(1, current.count(".") + 2)}
    for name in list(found):
        parts = name.split(".")
        found.update(p for i in range(2, len(parts)) if (p := ".".join(parts[:i])) in known and p not in ancestors)
    found.discard(current)
    return found


def import_cycles(root: Path = ROOT) -> list[list[str]]:
    """Strongly connected components of more than one module in the module-level import graph (Tarjan)."""
    files = {module_name(p, root): p for p in source_files(root)}
    known = set(files)
    graph = {name: module_level_imports(path, known, root) for name, path in files.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return cycles


def test_the_import_graph_finds_a_cycle_when_there_is_one(tmp_path: Path) -> None:
    package = tmp_path / "hf_vlp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import thing\n")
    (package / "b.py").write_text("from hf_vlp.a import other\n")
    (package / "c.py").write_text("def late():\n    from .a import x\n")
    (tmp_path / "conversion").mkdir()
    assert import_cycles(tmp_path) == [["hf_vlp.a", "hf_vlp.b"]]


def test_the_import_graph_counts_the_package_a_submodule_import_runs_first(tmp_path: Path) -> None:
    """utils.x importing models.blip.text runs models/blip/__init__ first, which imports models.blip.modeling, which
    imports utils.x: the partially-initialised-module error this layout once had."""
    for folder in ("hf_vlp", "hf_vlp/models", "hf_vlp/models/blip", "hf_vlp/utils", "conversion"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "hf_vlp/models/blip/__init__.py").write_text("from .modeling import Model\n")
    (tmp_path / "hf_vlp/models/blip/modeling.py").write_text("from ...utils.x import helper\nfrom .text import T\n")
    (tmp_path / "hf_vlp/models/blip/text.py").write_text("")
    (tmp_path / "hf_vlp/utils/x.py").write_text("from ..models.blip.text import T\n")
    assert import_cycles(tmp_path) == [["hf_vlp.models.blip", "hf_vlp.models.blip.modeling", "hf_vlp.utils.x"]]


def test_no_module_level_import_cycle() -> None:
    assert import_cycles() == []


def test_no_converter_imports_another() -> None:
    converters = {p.stem for p in (ROOT / "conversion").glob("convert_*.py")}
    for name in converters:
        imported = module_level_imports(ROOT / "conversion" / f"{name}.py", {f"conversion.{c}" for c in converters})
        assert not imported, f"conversion/{name}.py imports {sorted(imported)}: share code through conversion/common.py"


def test_no_source_file_is_over_900_lines() -> None:
    too_long = {str(p.relative_to(ROOT)): n for p in source_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long, f"split these files by concern: {too_long}"


def test_the_package_root_holds_at_most_five_modules() -> None:
    modules = sorted(p.name for p in (ROOT / "hf_vlp").glob("*.py"))
    assert len(modules) <= MAX_ROOT_MODULES, f"hf_vlp/ root modules {modules}: move them into a subpackage"


def test_private_transformers_internals_appear_only_in_the_compat_module() -> None:
    pattern = re.compile(r"\b(" + "|".join(PRIVATE_TRANSFORMERS_NAMES) + r")\b")
    compat = ROOT / "hf_vlp" / "integrations" / "compat.py"
    offenders = {
        f"{p.relative_to(ROOT)}:{number}": match.group(1)
        for p in source_files()
        if p != compat
        for number, line in enumerate(p.read_text().splitlines(), 1)
        if (match := pattern.search(line.split("#")[0]))
    }
    assert not offenders, f"route these through hf_vlp/integrations/compat.py: {offenders}"
