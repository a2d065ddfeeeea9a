#!/usr/bin/env python3
"""Keep every chapter's Colab setup cell in step with `_config.yml`.

The repository URL lives in one place, `_config.yml` (`repository.url`). Each
notebook's first code cell needs that URL to clone the book inside Colab, so this
script writes the cell from one template. A fork changes `_config.yml`, runs
`python scripts/sync_colab_cells.py`, and every chapter follows; a test fails
if any notebook's cell has drifted from the template.

The cell only changes source text, never outputs (it prints nothing outside
Colab), so nbval results are unaffected.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent

TEMPLATE = """# Colab setup: in Google Colab, fetch the book's code and data and install the package
# editable, so `data/` and `book/data/` are found (Colab keeps its own torch). Anywhere
# else this cell does nothing: run `make test` or `make book` from the repository instead.
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    REPO_URL = "{url}"
    CLONE = "/content/modularforge-book"
    if os.path.isdir(os.path.join(CLONE, ".git")):
        # A rerun updates the clone instead of keeping stale code.
        subprocess.run(["git", "-C", CLONE, "pull", "--ff-only"], check=True)
    else:
        # check=True: a bad URL stops here, not later as an unrelated pip error.
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, CLONE], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", CLONE], check=True)
    sys.path.insert(0, CLONE)"""

#: The cell is plumbing for Colab: the rendered page hides it.
TAG = "remove-input"


def repository_url(config_path: Path = REPO_ROOT / "_config.yml") -> str:
    """The one place the repository URL is written down."""
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    return config["repository"]["url"]


def colab_cell_source(url: str | None = None) -> str:
    """The first code cell every chapter notebook must have."""
    return TEMPLATE.format(url=url or repository_url())


def notebooks() -> list[Path]:
    return sorted(p for p in (REPO_ROOT / "book").glob("*.ipynb"))


def first_code_cell(notebook: dict) -> dict:
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            return cell
    raise ValueError("notebook has no code cell")


def sync(path: Path, source: str) -> bool:
    """Rewrite `path`'s Colab cell to `source`; True if the file changed."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    cell = first_code_cell(notebook)
    current = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    tags = cell.setdefault("metadata", {}).setdefault("tags", [])
    if current == source and TAG in tags:
        return False
    cell["source"] = source
    if TAG not in tags:
        tags.append(TAG)
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


def main() -> int:
    source = colab_cell_source()
    changed = [path.name for path in notebooks() if sync(path, source)]
    print(f"updated {len(changed)} notebook(s): {', '.join(changed) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
