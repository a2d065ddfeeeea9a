"""Sphinx extension: emit each page script once.

sphinx-thebe and sphinx-togglebutton add inline scripts (``const THEBE_JS_URL = ...``)
with ``app.add_js_file(None, body=...)`` after the HTML builder exists. Sphinx then
holds two copies of each: one with filename ``None`` (added to the builder directly)
and one with filename ``''`` (re-read from the registry). ``_JavaScript`` compares
filenames exactly, so ``None != ''`` and both reach the page; the second
``const THEBE_JS_URL`` is a ``SyntaxError`` in every browser console. This handler
runs last on each page and keeps the first of any scripts that differ only in
``None`` against ``''``.
"""

from __future__ import annotations

from typing import Any


def script_key(script: Any) -> tuple[Any, ...]:
    """What makes two page scripts the same: file (None and '' alike), priority, attributes."""
    filename = getattr(script, "filename", script) or None
    attributes = getattr(script, "attributes", {})
    return (filename, getattr(script, "priority", 500), tuple(sorted(attributes.items())))


def unique_scripts(scripts: list[Any]) -> list[Any]:
    """`scripts` without repeats, in their first order."""
    seen: set[tuple[Any, ...]] = set()
    kept = []
    for script in scripts:
        key = script_key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    return kept


def dedupe_page_scripts(
    app: Any, pagename: str, templatename: str, context: dict, doctree: Any
) -> None:
    if "script_files" in context:
        # In place: the builder restores its own list after each page.
        context["script_files"][:] = unique_scripts(list(context["script_files"]))


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", dedupe_page_scripts, priority=1000)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
