"""Drop the per-cell execution timestamps that `jupyter execute` records.

nbclient writes `metadata.execution` (when each cell started and finished) into
every cell it runs. They change on every run, so each re-execution would show up
as a diff of hundreds of timestamps. `make execute-notebooks` calls this after
executing; tests/book/test_notebooks_have_outputs.py checks none are stored.

Usage: python scripts/strip_execution_metadata.py NOTEBOOK...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from modularforge.files.atomic import atomic_write_bytes


def strip(path: Path) -> int:
    """Remove every cell's `execution` metadata in place; return how many cells had it."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    count = sum(
        cell.get("metadata", {}).pop("execution", None) is not None for cell in notebook["cells"]
    )
    if count:
        text = json.dumps(notebook, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))
    return count


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: {strip(Path(name))} timestamps removed")
