"""Shared pytest configuration: only the repository root, for tests that read files."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where _config.yml, _toc.yml and pyproject.toml live)."""
    return REPO_ROOT
