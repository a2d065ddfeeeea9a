"""The package's folder tree reads like the book's architecture, and stays that way.

Checked from the source (AST), without importing it: module sizes, import cycles
(lazy imports inside functions included), the layering of the subpackages, where
modules and tests live, and the public API re-exported from `modularforge`.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import tomllib

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "modularforge"
#: Bottom to top: a subpackage may import only the ones before it.
LAYERS = [
    "model",
    "files",
    "lean",
    "measure",
    "training",
    "mixture",
    "pipeline",
    "plots",
    "cli",
    "chapters",
]
#: Modules allowed at the top of the package (the API, `python -m`, repository paths).
TOP_LEVEL = {"modularforge", "modularforge.__main__", "modularforge.repo_paths"}
MAX_LINES = 500


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> package modules it imports anywhere in its body (top level or lazy)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.level:
                    raise AssertionError(f"{name}: relative import; use modularforge.<area>")
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None. The package's own
    `__init__` ("modularforge") is left out: it re-exports from every area by design."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, set()) - {"modularforge"}):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(set(graph) - {"modularforge"}):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def area(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """`a imports b` pairs where b's subpackage is not below a's."""
    bad = []
    for module, targets in graph.items():
        here = area(module)
        if here is None:
            continue
        for target in targets:
            there = area(target)
            if there and there != here and LAYERS.index(there) > LAYERS.index(here):
                bad.append(f"{module} imports {target}")
    return sorted(bad)


def write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "modularforge"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


# --- the real package ---------------------------------------------------------------------


def test_no_module_reaches_the_size_limit():
    sizes = {
        p.relative_to(REPO_ROOT): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }
    assert {p: n for p, n in sizes.items() if n >= MAX_LINES} == {}
    assert max(sizes.values()) > 300  # the count is real: some modules are long


def test_no_import_cycle_even_through_lazy_imports():
    graph = import_graph(PACKAGE)
    assert len(graph) > 80
    assert find_cycle(graph) is None


def test_subpackages_import_only_the_layers_below_them():
    graph = import_graph(PACKAGE)
    assert layering_violations(graph) == []


def test_every_module_lives_in_an_area_named_in_the_layers():
    modules = set(import_graph(PACKAGE))
    loose = {m for m in modules if area(m) is None} - {f"modularforge.{a}" for a in LAYERS}
    assert loose == TOP_LEVEL
    assert {area(m) for m in modules} - {None} == set(LAYERS)
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(LAYERS)


def test_chapter_helpers_are_named_after_their_chapter():
    helpers = [p.stem for p in (PACKAGE / "chapters").glob("*.py") if p.stem != "__init__"]
    chapters = {p.stem[:2] for p in (REPO_ROOT / "book").glob("*.ipynb")}
    for stem in helpers:
        if stem == "notebook":  # used by every chapter
            continue
        assert stem.startswith("ch") and stem[2:4] in chapters, stem


def test_pyproject_ships_every_subpackage():
    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    shipped = set(data["tool"]["setuptools"]["packages"])
    assert shipped == {"modularforge"} | {f"modularforge.{a}" for a in LAYERS}


def test_tests_mirror_the_package_areas():
    tests = REPO_ROOT / "tests"
    assert not list(tests.glob("test_*.py")), "a test file belongs in tests/<area>/"
    for name in LAYERS:
        assert list((tests / name).glob("test_*.py")), f"tests/{name}/ has no tests"
    extra = {p.name for p in tests.iterdir() if p.is_dir() and list(p.glob("test_*.py"))}
    assert extra - set(LAYERS) == {"book", "package"}


def test_public_api_is_reexported_from_the_package():
    package = importlib.import_module("modularforge")
    assert len(package.__all__) >= 20
    for name in package.__all__:
        obj = getattr(package, name)
        home = getattr(obj, "__module__", None)
        if home is not None:  # classes and functions: defined in an area, not the top
            assert area(home) in LAYERS, (name, home)


# --- negative controls: the checks above can fail ----------------------------------------


def test_cycle_finder_sees_a_lazy_cycle(tmp_path):
    root = write_package(
        tmp_path,
        {
            "model/__init__.py": "",
            "model/a.py": "from modularforge.model.b import x\n",
            "model/b.py": "def x():\n    from modularforge.model.a import y\n",
        },
    )
    cycle = find_cycle(import_graph(root))
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) == {"modularforge.model.a", "modularforge.model.b"}


def test_layering_check_flags_an_upward_import(tmp_path):
    root = write_package(
        tmp_path,
        {
            "model/__init__.py": "",
            "cli/__init__.py": "",
            "cli/main.py": "",
            "model/config.py": "from modularforge.cli.main import main\n",
        },
    )
    assert layering_violations(import_graph(root)) == [
        "modularforge.model.config imports modularforge.cli.main"
    ]


def test_relative_imports_are_refused(tmp_path):
    root = write_package(tmp_path, {"model/__init__.py": "", "model/a.py": "from .b import x\n"})
    with pytest.raises(AssertionError, match="relative import"):
        import_graph(root)


def documented_order(text: str, pattern: str) -> list[str]:
    return [name for name in re.findall(pattern, text, re.M) if name in LAYERS]


def test_docs_list_the_layers_in_import_order():
    """The package docstring and the introduction's code map read bottom to top, as LAYERS."""
    package_doc = importlib.import_module("modularforge").__doc__
    assert documented_order(package_doc, r"^\* `(\w+)`:") == LAYERS
    intro = (REPO_ROOT / "book" / "intro.md").read_text(encoding="utf-8")
    assert documented_order(intro, r"^\| `modularforge/(\w+)/` \|") == LAYERS
    swapped = intro.replace("modularforge/model/", "TMP").replace(
        "modularforge/files/", "modularforge/model/"
    )
    assert documented_order(swapped, r"^\| `modularforge/(\w+)/` \|") != LAYERS  # can fail
