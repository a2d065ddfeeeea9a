"""`modularforge.chapters.notebook`: prose and code listings that read in any Jupyter.

The chapters used to write numbers into their Markdown with MyST roles, which only
Jupyter Book renders. Now a cell displays the paragraph itself, so these tests
check what a reader in Colab would see: the filled-in text, the listing from
the package's own source, and the per-number tolerance keys the nbval plugin
uses on another CPU.
"""

from __future__ import annotations

import pytest

from modularforge.chapters import notebook
from modularforge.chapters.notebook import (
    code_listing,
    format_mb,
    glue,
    glued,
    prose,
    render_prose,
)
from modularforge.measure.reproducibility import load_spread

TRAINED_KEY = sorted(load_spread())[0]


@pytest.fixture(autouse=True)
def _fresh_glue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notebook, "_GLUED", {})


def test_prose_fills_in_glued_values_with_their_formats() -> None:
    glue("shared_mb", "16.8 MB")
    glue("ratio", 2.4567)
    glue("verdict", "holds")
    text, keys = render_prose("The trunk takes {shared_mb}, {ratio:.2f}x; it {verdict}. {{braces}}")
    assert text == "The trunk takes 16.8 MB, 2.46x; it holds. {braces}"
    assert keys == [None, None]  # both numbers exact


def test_prose_lists_each_numbers_tolerance_key_in_order() -> None:
    glue("loss", 5.4321, tolerance=TRAINED_KEY)
    glue("steps", 600)
    text, keys = render_prose("After {steps} steps (layer 2) the loss is {loss:.2f} nats.")
    assert text == "After 600 steps (layer 2) the loss is 5.43 nats."
    assert keys == [None, None, TRAINED_KEY]


def test_glue_refuses_an_unknown_tolerance_key() -> None:
    with pytest.raises(KeyError):
        glue("loss", 1.0, tolerance="no-such-key")


def test_a_missing_value_is_named() -> None:
    with pytest.raises(KeyError, match="nothing was glued under 'missing'"):
        render_prose("the {missing} value")
    with pytest.raises(KeyError, match="'other'"):
        glued("other")


def test_a_value_that_runs_into_a_number_is_refused() -> None:
    # "v" + "2" reads as a word to the number splitter; "1" + "2" as one number "12".
    glue("digit", 2)
    with pytest.raises(ValueError, match="runs into the text"):
        render_prose("1{digit} items")


def test_hyphenated_names_become_underscores() -> None:
    glue("seed-0_loss", 1.5)
    assert render_prose("{seed_0_loss}")[0] == "1.5"
    with pytest.raises(ValueError, match="identifier"):
        glue("a b", 1)


def test_prose_displays_markdown_with_the_keys_as_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shown = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append((obj, kw)))
    glue("loss", 5.0, tolerance=TRAINED_KEY)
    prose("loss {loss:.1f}")
    prose("no trained number here: 3")
    (first, first_kw), (second, second_kw) = shown
    assert first.data == "loss 5.0" and first_kw["metadata"] == {"cpu_tolerance": [TRAINED_KEY]}
    assert second.data == "no trained number here: 3" and second_kw["metadata"] is None


def test_code_listing_is_the_package_source_in_a_python_fence() -> None:
    listing = code_listing(format_mb)
    assert listing.startswith("```python\ndef format_mb(n_bytes: float) -> str:\n")
    assert listing.endswith("\n```")
    assert 'return f"{n_bytes / 1e6:,.1f} MB"' in listing


def test_code_listing_of_a_method_is_dedented() -> None:
    listing = code_listing(_Example.method)
    assert listing.splitlines()[1] == "def method(self) -> int:"


class _Example:
    def method(self) -> int:
        return 1


@pytest.mark.parametrize(
    ("n_bytes", "text"), [(0, "0.0 MB"), (33_611_776, "33.6 MB"), (5e9, "5,000.0 MB")]
)
def test_format_mb_uses_decimal_megabytes(n_bytes: float, text: str) -> None:
    assert format_mb(n_bytes) == text
