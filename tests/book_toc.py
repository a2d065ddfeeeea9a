"""The table of contents as the tests read it: one parser for every test that needs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def toc_files(toc_path: Path = REPO_ROOT / "_toc.yml") -> list[str]:
    """Every ``file:`` entry of _toc.yml (the root first), in reading order."""
    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    found = [toc["root"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "file" in node and node is not toc:
                found.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                walk(node.get(key))
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return found
