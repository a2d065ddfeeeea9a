"""Small helpers that keep the book's notebooks thin, readable anywhere, and honest.

Every chapter must read the same in the rendered book, in JupyterLab and in Colab.
MyST roles such as a glue role or a literalinclude directive only work inside
Jupyter Book; anywhere else a reader sees the raw markup. So the chapters do
not use them:

- `glue(name, value)` keeps a computed value under a name, silently;
- `prose(template)` displays a paragraph of Markdown with the glued values
  filled in (``{name}`` or ``{name:.2f}``), so no number in the text is typed
  by hand, and every Jupyter front end renders it;
- `show_code(obj)` displays the source of a package object as a Python code
  block: the page shows the code the package runs, never a copy.

A glued value may carry the key of a measured CPU tolerance
(`modularforge.measure.reproducibility`). `prose` then records, in the display's
metadata, which number of its text is trained (compared within that tolerance)
and which is exact, so the book's nbval plugin can check the paragraph on a
reader's CPU as strictly as each number allows.
"""

from __future__ import annotations

import inspect
import string
import textwrap
from dataclasses import dataclass
from typing import Any

from modularforge.measure.reproducibility import split_numbers, tolerance_for

#: The display metadata key that lists, per number of a paragraph, its tolerance key.
NUMBER_KEYS = "cpu_tolerance"


@dataclass(frozen=True)
class Glued:
    """One value handed to the prose, with the tolerance its numbers are compared under."""

    value: Any
    tolerance: str | None = None


_GLUED: dict[str, Glued] = {}


def glue(name: str, value: Any, *, tolerance: str | None = None) -> None:
    """Keep `value` under `name` for the paragraphs that `prose` displays.

    A hyphen in `name` becomes an underscore, so names built from data keys can
    still be written ``{name}`` in a template. `tolerance` names a key of
    ``book/data/cpu-spread.json`` for a trained number, which lands a little
    differently on another CPU; None (the default) means the number is exact on
    every CPU (a count, a size, a verdict).
    """
    name = name.replace("-", "_")  # names built from keys such as "seed-0"
    if not name.isidentifier():
        raise ValueError(f"glue name {name!r} must be a Python identifier (letters, digits, _)")
    if tolerance is not None:
        tolerance_for(tolerance)  # an unknown key fails here, not at test time
    _GLUED[name] = Glued(value, tolerance)


def glued(name: str) -> Any:
    """The value last glued under `name` (a KeyError names the missing one)."""
    try:
        return _GLUED[name].value
    except KeyError:
        raise KeyError(
            f"nothing was glued under {name!r}: run the cell that calls glue({name!r}, ...) first"
        ) from None


def render_prose(template: str) -> tuple[str, list[str | None]]:
    """Fill `template`'s ``{name:format}`` fields; return the text and each number's key.

    The key list has one entry per number in the text (as `split_numbers` finds
    them): the glued value's tolerance key, or None for a number that must match
    exactly. Literal braces are written ``{{`` and ``}}``.
    """
    pieces: list[str] = []
    keys: list[str | None] = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        pieces.append(literal)
        keys += [None] * len(split_numbers(literal).numbers)
        if field is None:
            continue
        if conversion or not field.isidentifier():
            raise ValueError(f"prose field {{{field}}} must be a plain glued name")
        entry = _GLUED.get(field)
        if entry is None:
            glued(field)  # raises the KeyError that names it
        text = format(entry.value, spec or "")
        pieces.append(text)
        keys += [entry.tolerance] * len(split_numbers(text).numbers)
    rendered = "".join(pieces)
    found = len(split_numbers(rendered).numbers)
    if found != len(keys):
        raise ValueError(
            f"a glued value runs into the text around it ({found} numbers in the paragraph, "
            f"{len(keys)} in its parts): put a space or punctuation between them"
        )
    return rendered, keys


def prose(template: str) -> None:
    """Display one paragraph of Markdown with the glued values filled in."""
    from IPython.display import Markdown, display

    text, keys = render_prose(template)
    metadata = {NUMBER_KEYS: keys} if any(key is not None for key in keys) else None
    display(Markdown(text), metadata=metadata)


def code_listing(obj: Any) -> str:
    """The source of a package function, method or class, as a fenced Python block."""
    source = textwrap.dedent(inspect.getsource(obj)).rstrip("\n")
    fence = "````" if "```" in source else "```"
    return f"{fence}python\n{source}\n{fence}"


def show_code(obj: Any) -> None:
    """Display the source of `obj` as the package has it, so the page never holds a copy."""
    from IPython.display import Markdown, display

    display(Markdown(code_listing(obj)))


def format_mb(n_bytes: float) -> str:
    """Decimal megabytes with one decimal, the design document's unit ("33.6 MB")."""
    return f"{n_bytes / 1e6:,.1f} MB"
