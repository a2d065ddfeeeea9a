"""Sphinx extension: emit each page's scripts once.

sphinx-thebe (loaded by every Jupyter Book 1.x build) registers its inline
configuration, `const THEBE_JS_URL = ...`, when the environment starts reading
documents; in a build that event adds the same inline script twice, and the
browser then throws `SyntaxError: Identifier 'THEBE_JS_URL' has already been
declared` on every page. Dropping exact duplicates from the page's script list
removes the error without changing what any script does.
"""

from __future__ import annotations

from typing import Any


def unique_scripts(scripts: list[Any]) -> list[Any]:
    """`scripts` without repeats (same file, priority and attributes), first kept."""
    kept: list[Any] = []
    for script in scripts:
        if script not in kept:
            kept.append(script)
    return kept


def _dedupe(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    if "script_files" in context:
        context["script_files"] = unique_scripts(context["script_files"])


def setup(app: Any) -> dict[str, Any]:
    # Late priority: run after every extension that adds scripts to the page.
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
