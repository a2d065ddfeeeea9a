"""The repository's scripts as modules: one loader for every test that checks a script.

Scripts live outside the package (scripts/, scripts/sphinx_ext/) and are not
importable by name, so tests load them from their path.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_script(relative_path: str) -> ModuleType:
    """Import `REPO_ROOT / relative_path` as a module named after the file.

    The module is registered in `sys.modules` first: dataclasses defined in it look
    their module up by name.
    """
    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
