"""Where the repository's files live, relative to the package.

The package is installed editable from a checkout (``pip install -e .``, what ``make venv``
and the chapters' Colab cell do), so the corpus in ``data/`` and the stored measurements in
``book/data/`` sit next to it. One module says so, instead of every user counting ``parent``
calls from its own depth in the package tree.
"""

from pathlib import Path

#: The checkout's root: the folder that holds ``modularforge/``, ``data/`` and ``book/``.
REPO_ROOT: Path = Path(__file__).resolve().parent.parent
#: The shipped corpus and tokenizers (``data/``).
REPO_DATA_DIR: Path = REPO_ROOT / "data"
#: The book's stored measurements and runs (``book/data/``): found from the package, so a
#: chapter reads them whatever the kernel's working directory (book/ locally, /content in Colab).
BOOK_DATA_DIR: Path = REPO_ROOT / "book" / "data"
