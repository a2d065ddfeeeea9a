"""The page's script list keeps one copy of each script (no THEBE_JS_URL redeclared)."""

import importlib.util
from pathlib import Path

from sphinx.builders.html._assets import _JavaScript

_path = Path(__file__).resolve().parent.parent / "scripts" / "sphinx_ext" / "dedupe_scripts.py"
_spec = importlib.util.spec_from_file_location("dedupe_scripts", _path)
dedupe_scripts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dedupe_scripts)


def test_duplicate_inline_script_is_dropped_and_order_kept():
    thebe = _JavaScript(None, body='const THEBE_JS_URL = "x"')
    other = _JavaScript("sphinx-thebe.js", **{"async": "async"})
    scripts = [thebe, other, _JavaScript(None, body='const THEBE_JS_URL = "x"')]
    assert dedupe_scripts.unique_scripts(scripts) == [thebe, other]


def test_different_scripts_are_all_kept():
    scripts = [_JavaScript(None, body="const a = 1"), _JavaScript(None, body="const b = 1")]
    assert dedupe_scripts.unique_scripts(scripts) == scripts
