"""Shared pytest configuration: only the repository root, for tests that read files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from intra_op_threads import torch_threads

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where _config.yml, _toc.yml and pyproject.toml live)."""
    return REPO_ROOT


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test, restored after."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_per_module() -> Iterator[None]:
    """One intra-op thread for the whole module, restored after it (use via usefixtures)."""
    with torch_threads(1):
        yield
