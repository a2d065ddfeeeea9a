"""`modularforge.chapters.notebook.glue`: values reach the page, or the reader's screen."""

from __future__ import annotations

import builtins
import sys

import pytest

from modularforge.chapters.notebook import format_mb, glue


def _without_myst_nb(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import myst_nb` fail, as it does in Colab."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "myst_nb" or name.startswith("myst_nb."):
            raise ImportError("No module named 'myst_nb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "myst_nb", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)


@pytest.mark.parametrize(
    ("name", "value", "printed"),
    [
        ("shared_mb", "16.8 MB", "shared_mb = 16.8 MB\n"),
        ("ratio", 2.5, "ratio = 2.5\n"),
        ("n_calls", 11, "n_calls = 11\n"),
    ],
)
def test_glue_prints_name_and_value_without_myst_nb(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name, value, printed
) -> None:
    _without_myst_nb(monkeypatch)
    glue(name, value)
    assert capsys.readouterr().out == printed


def test_glue_with_myst_nb_prints_nothing_and_stores_the_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("myst_nb")
    import myst_nb

    stored: list[tuple[str, object, bool]] = []
    monkeypatch.setattr(myst_nb, "glue", lambda n, v, display=True: stored.append((n, v, display)))
    glue("shared_mb", "16.8 MB")
    assert stored == [("shared_mb", "16.8 MB", False)]
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("n_bytes", "text"), [(0, "0.0 MB"), (33_611_776, "33.6 MB"), (5e9, "5,000.0 MB")]
)
def test_format_mb_uses_decimal_megabytes(n_bytes: float, text: str) -> None:
    assert format_mb(n_bytes) == text
