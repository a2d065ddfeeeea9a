"""The package's folder tree reads like the book's architecture, and stays that way.

Checked from the source (AST), without importing it: module sizes, import cycles
(lazy imports inside functions included), the layering of the subpackages, where
modules and tests live, and the public API re-exported from `modularforge`.

One upward import is allowed, by name (`ALLOWED_UPWARD_IMPORTS`): the design
document's `ModuleTrainerModel.save_expert` / `.load_expert` import
`files.checkpoint` inside their bodies. Any other upward import, lazy or not, is
still a layering violation, and still counts for the cycle finder.
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
#: The only upward imports allowed: (module, function's qualified name, imported module).
#: The design document calls saving and loading on the model (`model.save_expert(path)`,
#: `ModuleTrainerModel.load_expert(path, shared)`), but the file format lives in `files`,
#: which imports the model; so these two methods import `files.checkpoint` in their
#: bodies, when called (importing the model never imports `files`). An import is exempt
#: only if it sits directly in one of these functions (not at module level, not in
#: another method or a nested function) and names exactly this module. Commit 9f19d1a
#: once removed these methods because the cycle finder saw model -> files -> model.
ALLOWED_UPWARD_IMPORTS = frozenset(
    {
        (
            "modularforge.model.trainer_model",
            "ModuleTrainerModel.save_expert",
            "modularforge.files.checkpoint",
        ),
        (
            "modularforge.model.trainer_model",
            "ModuleTrainerModel.load_expert",
            "modularforge.files.checkpoint",
        ),
    }
)


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def scoped_imports(tree: ast.AST) -> list[tuple[str, ast.Import | ast.ImportFrom]]:
    """Every import statement with the qualified name of the function or class it sits
    directly in ("" at module level; "C.m" for method m of class C; "C.m.f" for a
    function f nested in it)."""
    found: list[tuple[str, ast.Import | ast.ImportFrom]] = []

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((scope, child))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, f"{scope}.{child.name}" if scope else child.name)
            else:
                visit(child, scope)

    visit(tree, "")
    return found


def import_graph(
    root: Path,
    allowed: frozenset[tuple[str, str, str]] = ALLOWED_UPWARD_IMPORTS,
    used: set[tuple[str, str, str]] | None = None,
) -> dict[str, set[str]]:
    """Module -> package modules it imports anywhere in its body (top level or lazy),
    less the imports in `allowed` (module, function, target); those met go into `used`."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for scope, node in scoped_imports(ast.parse(path.read_text())):
            found: set[str] = set()
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.level:
                    raise AssertionError(f"{name}: relative import; use modularforge.<area>")
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            for target in found:
                if (name, scope, target) in allowed:
                    if used is not None:
                        used.add((name, scope, target))
                else:
                    targets.add(target)
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


def test_the_allowed_upward_imports_are_exactly_the_ones_in_the_package():
    """Each exemption matches a real import (none left over once a method is gone), and
    without the exemptions the checks above would fail: the exemption is what passes."""
    used: set[tuple[str, str, str]] = set()
    import_graph(PACKAGE, used=used)
    assert used == ALLOWED_UPWARD_IMPORTS
    strict = import_graph(PACKAGE, allowed=frozenset())
    assert layering_violations(strict) == [
        "modularforge.model.trainer_model imports modularforge.files.checkpoint"
    ]
    assert find_cycle(strict) is not None


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


#: A miniature of the real case: files.checkpoint imports the trainer model at the top,
#: and the trainer model's two design-document methods import files.checkpoint lazily.
TRAINER_MODEL = """\
class ModuleTrainerModel:
    def save_expert(self, path):
        from modularforge.files.checkpoint import save_expert
        return save_expert(self, path)

    @classmethod
    def load_expert(cls, path, shared):
        from modularforge.files.checkpoint import load_expert
        return load_expert(path, shared)
"""
CHECKPOINT = "from modularforge.model.trainer_model import ModuleTrainerModel\n"
BAD_UPWARD_IMPORTS = {
    "another method": (
        "    def save_shared(self, path):\n"
        "        from modularforge.files.checkpoint import save_shared\n",
        "modularforge.files.checkpoint",
    ),
    "module level": (
        "from modularforge.files.checkpoint import save_expert\n",
        "modularforge.files.checkpoint",
    ),
    "a function of the same name outside the class": (
        "def save_expert(model, path):\n    from modularforge.files.checkpoint import x\n",
        "modularforge.files.checkpoint",
    ),
    "a function nested in an allowed method": (
        "    def load_expert(self):\n"
        "        def inner():\n"
        "            from modularforge.files.checkpoint import load_expert\n",
        "modularforge.files.checkpoint",
    ),
    "another upward module from an allowed method": (
        "    def save_expert(self, path):\n        from modularforge.files.atomic import x\n",
        "modularforge.files.atomic",
    ),
    "another layer up from an allowed method": (
        "    def save_expert(self, path):\n        from modularforge.cli.main import main\n",
        "modularforge.cli.main",
    ),
}


def miniature(tmp_path: Path, trainer_model: str) -> Path:
    return write_package(
        tmp_path,
        {
            "model/__init__.py": "",
            "model/trainer_model.py": trainer_model,
            "files/__init__.py": "",
            "files/checkpoint.py": CHECKPOINT,
            "files/atomic.py": "",
            "cli/__init__.py": "",
            "cli/main.py": "",
        },
    )


def test_the_allowed_methods_pass_and_only_because_of_the_exemption(tmp_path):
    root = miniature(tmp_path, TRAINER_MODEL)
    used: set[tuple[str, str, str]] = set()
    graph = import_graph(root, used=used)
    assert used == ALLOWED_UPWARD_IMPORTS
    assert layering_violations(graph) == [] and find_cycle(graph) is None
    strict = import_graph(root, allowed=frozenset())
    assert layering_violations(strict) == [
        "modularforge.model.trainer_model imports modularforge.files.checkpoint"
    ]
    assert set(find_cycle(strict)) == {
        "modularforge.model.trainer_model",
        "modularforge.files.checkpoint",
    }


@pytest.mark.parametrize("case", sorted(BAD_UPWARD_IMPORTS))
def test_any_other_upward_import_is_still_caught(tmp_path, case):
    """Negative controls: the exemption names two functions and one module, nothing wider."""
    extra, target = BAD_UPWARD_IMPORTS[case]
    source = TRAINER_MODEL + extra if extra.startswith("    ") else extra + TRAINER_MODEL
    graph = import_graph(miniature(tmp_path, source))
    assert layering_violations(graph) == [f"modularforge.model.trainer_model imports {target}"]
    if target == "modularforge.files.checkpoint":  # which imports the trainer model back
        assert find_cycle(graph) is not None


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
