"""Small helpers that keep the book's notebooks thin and their numbers honest.

`glue` hands a computed value to the page (MyST `{glue}` roles), so prose never
carries a number typed by hand. Outside Jupyter Book (Colab, plain Jupyter),
where myst-nb is not installed, the prose's `{glue}` roles show nothing, so
`glue` prints `name = value` instead: the reader still sees every number the
text refers to.
"""

from __future__ import annotations

from typing import Any


def glue(name: str, value: Any, display: bool = False) -> None:
    """Store `value` under `name` for `{glue:text}` in the page's prose.

    Without myst-nb the value is printed as `name = value`, so a notebook run
    in Colab shows the numbers that the rendered book writes into its text.
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # Colab and other plain Jupyter installs
        print(f"{name} = {value}")
        return
    myst_glue(name, value, display=display)


def format_mb(n_bytes: float) -> str:
    """Decimal megabytes with one decimal, the design document's unit ("33.6 MB")."""
    return f"{n_bytes / 1e6:,.1f} MB"
