"""Packaging and book-configuration facts that are cheap to check without a build.

- requirements.txt pins everything exactly (torch as the plain 2.13.0 CPU pin),
  and every pin satisfies the range pyproject.toml gives that package;
- pyproject.toml ships only the `modularforge` package, with loose dependency
  ranges (so Colab keeps its torch) and a working console script;
- the repository URL is written in exactly one place, _config.yml;
- the book loads widget and MathJax code from vendored files that exist and
  match the checksums recorded when they were fetched, never from a CDN.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO_ROOT = Path(__file__).resolve().parents[2]
STATIC = REPO_ROOT / "book" / "_extra" / "_static"
CDN_HOSTS = ("cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com")


def config() -> dict:
    return yaml.safe_load((REPO_ROOT / "_config.yml").read_text(encoding="utf-8"))


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirement_lines() -> list[str]:
    lines = (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


# --- requirements.txt --------------------------------------------------------


def test_requirements_are_exact_pins() -> None:
    loose = [ln for ln in requirement_lines() if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==\S+", ln)]
    assert not loose, f"requirements.txt lines that are not `name==version`: {loose}"


def test_requirements_pin_cpu_torch_without_local_suffix() -> None:
    pins = dict(ln.split("==", 1) for ln in requirement_lines())
    assert pins.get("torch") == "2.13.0"


@pytest.mark.parametrize(
    "name",
    [
        "jupyter-book",
        "nbval",
        "nbclient",
        "pytest",
        "ruff",
        "hypothesis",
        "ipywidgets",
        "ipykernel",
        "matplotlib",
        "tqdm",
        "safetensors",
        "tokenizers",
        "numpy",
        "websocket-client",
        "PyYAML",
        "jupyterlab",
    ],
)
def test_requirements_include(name: str) -> None:
    names = {ln.split("==", 1)[0].lower().replace("_", "-") for ln in requirement_lines()}
    assert name.lower() in names


def test_jupyter_book_is_1x() -> None:
    pins = dict(ln.split("==", 1) for ln in requirement_lines())
    assert pins["jupyter-book"].startswith("1.")


def pyproject_requirements() -> list[str]:
    """The package's dependencies and every extra's, as written in pyproject.toml."""
    project = pyproject()["project"]
    return [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]


def pins_outside_ranges(requirements: list[str], pin_lines: list[str]) -> list[str]:
    """Each pyproject requirement whose package is not pinned, or pinned outside its range."""
    pins = {canonicalize_name(n): v for n, v in (ln.split("==", 1) for ln in pin_lines)}
    problems = []
    for text in requirements:
        requirement = Requirement(text)
        version = pins.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{text}: not pinned in requirements.txt")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{text}: requirements.txt pins {version}")
    return problems


def test_every_pyproject_requirement_is_pinned_within_its_range() -> None:
    """`make venv` installs what the package and its extras ask for (jupyterlab for `make lab`
    included), so the loose ranges in pyproject.toml never drift away from the tested pins."""
    requirements = pyproject_requirements()
    assert "jupyterlab>=4,<5" in requirements
    assert pins_outside_ranges(requirements, requirement_lines()) == []


def test_a_pin_outside_its_range_is_caught() -> None:
    pins = ["jupyterlab==4.6.6", "torch==2.13.0"]
    assert pins_outside_ranges(["jupyterlab>=4,<5", "torch>=2.4"], pins) == []
    assert pins_outside_ranges(["jupyterlab>=5", "numpy"], pins) == [
        "jupyterlab>=5: requirements.txt pins 4.6.6",
        "numpy: not pinned in requirements.txt",
    ]


# --- pyproject.toml ----------------------------------------------------------


def test_pyproject_ships_only_the_package() -> None:
    data = pyproject()
    packages = data["tool"]["setuptools"]["packages"]
    assert all(name == "modularforge" or name.startswith("modularforge.") for name in packages)
    assert "modularforge" in packages
    assert data["project"]["requires-python"] == ">=3.10"


def test_pyproject_dependencies_are_loose() -> None:
    deps = pyproject()["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower() for d in deps}
    assert {"torch", "safetensors", "tokenizers", "tqdm", "numpy"} <= names
    assert not [d for d in deps if "==" in d], "the package must not pin exact versions"
    assert "torch>=2.4" in deps  # AdamW(fused=True) on CPU needs 2.4


def test_pyproject_extras() -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    assert {"book", "test"} <= set(extras)


def test_console_script_points_at_a_callable() -> None:
    target = pyproject()["project"]["scripts"]["modularforge"]
    module_name, func_name = target.split(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, func_name))


# --- the repository URL lives in _config.yml only ------------------------------


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO_ROOT / p for p in out.decode().split("\0") if p]


def test_repository_url_is_written_once() -> None:
    url = config()["repository"]["url"]
    assert url.startswith("https://github.com/")
    # Match the owner/name part, with or without scheme or .git.
    needle = url.split("://", 1)[1].rstrip("/").removesuffix(".git")
    holders = []
    for path in tracked_files():
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if path.suffix == ".ipynb":
            # Chapters carry the URL in their Colab cell only, generated from
            # _config.yml by scripts/sync_colab_cells.py (tests/book/test_colab_cells.py
            # checks each cell equals the template): drop that cell, then look.
            notebook = json.loads(text)
            text = json.dumps(notebook["cells"][_first_code_cell(notebook) + 1 :])
        if needle in text:
            holders.append(path.relative_to(REPO_ROOT).as_posix())
    assert holders == ["_config.yml"], f"the repository URL appears in {holders}"


def _first_code_cell(notebook: dict) -> int:
    return next(i for i, c in enumerate(notebook["cells"]) if c["cell_type"] == "code")


# --- book configuration ------------------------------------------------------


def test_book_config_essentials() -> None:
    cfg = config()
    assert cfg["execute"]["execute_notebooks"] == "off"
    assert cfg["repository"]["branch"] == "main"
    assert cfg["repository"]["path_to_book"] == ""
    assert cfg["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert cfg["only_build_toc_files"] is True
    for pattern in (".venv", "_build", "README.md", "data", "tests", "scripts", ".ci"):
        assert pattern in cfg["exclude_patterns"], pattern


def test_widget_js_is_vendored_not_cdn() -> None:
    sphinx = config()["sphinx"]["config"]
    assert "book/_extra" in sphinx["html_extra_path"]
    scripts = list(sphinx["nb_ipywidgets_js"])
    assert scripts, "nb_ipywidgets_js must list the vendored scripts"
    for src in scripts:
        assert "://" not in src and not src.startswith("/"), f"{src} is not a local path"
        # Sphinx serves script paths from _static/, which html_extra_path fills.
        assert (STATIC / src).is_file(), f"{src} missing from book/_extra/_static/"
    names = [Path(s).name for s in scripts]
    assert names.index("require.js") < names.index("embed-amd.js"), "RequireJS must load first"
    for attrs in sphinx["nb_ipywidgets_js"].values():
        for value in (attrs or {}).values():
            assert not any(host in str(value) for host in CDN_HOSTS), value


def test_mathjax_is_vendored() -> None:
    path = config()["sphinx"]["config"]["mathjax_path"]
    assert "://" not in path
    assert (STATIC / path).is_file()
    assert (STATIC / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()


def test_vendored_files_match_recorded_checksums() -> None:
    record = (STATIC / "widgets" / "VERSIONS.txt").read_text(encoding="utf-8")
    sums = re.findall(r"^([0-9a-f]{64})\s+\*?(?:\./)?(\S+)$", record, flags=re.M)
    assert {"embed-amd.js", "require.js"} <= {name for _, name in sums}
    for digest, name in sums:
        data = (STATIC / "widgets" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"{name} differs from VERSIONS.txt"


def test_vendored_files_have_licences() -> None:
    widgets = STATIC / "widgets"
    assert (widgets / "LICENSE.html-manager.txt").is_file()
    assert "MIT license" in (widgets / "require.js").read_text(encoding="utf-8")[:400]
    assert (STATIC / "mathjax" / "LICENSE.txt").is_file()


def test_vendored_size_is_reasonable() -> None:
    total = sum(p.stat().st_size for p in (REPO_ROOT / "book" / "_extra").rglob("*") if p.is_file())
    assert total < 10 * 2**20, f"book/_extra holds {total / 2**20:.1f} MiB"


# --- tooling -----------------------------------------------------------------


def test_ci_script_is_executable_bash() -> None:
    ci = REPO_ROOT / ".ci" / "run"
    assert ci.is_file()
    assert os.access(ci, os.X_OK)
    text = ci.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash") or text.startswith("#!/bin/bash")
    assert "set -euo pipefail" in text
    assert "make test" in text


def test_make_lab_opens_the_chapters_with_the_venv() -> None:
    """`make lab` is listed by `make help` and runs JupyterLab from .venv on book/."""
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    target = re.search(r"^lab: venv ## (.+)\n\t(.+)$", makefile, flags=re.M)
    assert target, "Makefile has no `lab: venv ## ...` target with a recipe"
    assert "JupyterLab" in target.group(1)
    assert "$(BIN)/python -m jupyterlab" in target.group(2)
    assert "root_dir=book" in target.group(2)
    assert re.search(r"^\.PHONY:.*\blab\b", makefile, flags=re.M)
    assert "make lab" in (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_python_is_new_enough() -> None:
    assert sys.version_info >= (3, 10)
