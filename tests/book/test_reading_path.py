"""The reading-path figure in the introduction: generated, current, and true to the toc.

``scripts/draw_reading_path.py`` holds which chapter builds on which and draws
``book/figures/reading_path.svg`` from it. These tests check that the list only
points backwards in reading order, that it names exactly the chapters in
_toc.yml, that redundant arrows are dropped (and only those), and that the
committed figure is what the script draws today.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from book_toc import toc_files
from repo_scripts import load_script

REPO_ROOT = Path(__file__).resolve().parents[2]
FIGURE = REPO_ROOT / "book" / "figures" / "reading_path.svg"
# Pages in _toc.yml that are not chapters and so not in the figure.
NOT_CHAPTERS = {"book/intro", "book/references"}


rp = load_script("scripts/draw_reading_path.py")


def test_every_arrow_points_back_in_reading_order() -> None:
    rp.check_order(rp.CHAPTERS)
    toc = toc_files()
    present = rp.existing(rp.CHAPTERS)
    order = [c.file for c in present]
    assert order == [f for f in toc if f in set(order)], "CHAPTERS is not in _toc.yml order"


def test_the_figure_lists_exactly_the_chapters_in_the_toc() -> None:
    drawn = {c.file for c in rp.existing(rp.CHAPTERS)}
    chapters = set(toc_files()) - NOT_CHAPTERS
    assert chapters - drawn == set(), (
        f"chapters in _toc.yml missing from scripts/draw_reading_path.py CHAPTERS: "
        f"{sorted(chapters - drawn)}; add them with what they build on, then run the script"
    )
    assert drawn - chapters == set(), f"drawn but not in _toc.yml: {sorted(drawn - chapters)}"


@pytest.mark.parametrize(
    ("needs", "message"),
    [
        ({"a": (), "b": ("c",), "c": ()}, "comes after it"),
        ({"a": (), "b": ("zzz",)}, "not in CHAPTERS"),
        ({"a": ("a",)}, "comes after it"),
    ],
)
def test_check_order_refuses_forward_unknown_and_self_arrows(
    needs: dict[str, tuple[str, ...]], message: str
) -> None:
    chapters = [rp.Chapter(f, f, f, n) for f, n in needs.items()]
    with pytest.raises(ValueError, match=message):
        rp.check_order(chapters)


def test_implied_arrows_are_dropped_and_only_those() -> None:
    # a -> b -> c and a -> c: the last is implied. d needs a and b, where b already needs a.
    chapters = [
        rp.Chapter("a", "1", "A"),
        rp.Chapter("b", "2", "B", ("a",)),
        rp.Chapter("c", "3", "C", ("a", "b")),
        rp.Chapter("x", "4", "X"),
        rp.Chapter("d", "5", "D", ("x", "b")),
    ]
    assert rp.drawn_edges(chapters) == [("a", "b"), ("b", "c"), ("x", "d"), ("b", "d")]
    assert rp.layers(chapters) == {"a": 0, "b": 1, "c": 2, "x": 0, "d": 2}


def test_missing_chapters_and_their_arrows_are_left_out(tmp_path: Path) -> None:
    (tmp_path / "book").mkdir()
    for name in ("one.md", "three.ipynb"):
        (tmp_path / "book" / name).write_text("x")
    chapters = [
        rp.Chapter("book/one", "1", "One"),
        rp.Chapter("book/two", "2", "Two", ("book/one",)),
        rp.Chapter("book/three", "3", "Three", ("book/one", "book/two")),
    ]
    kept = rp.existing(chapters, root=tmp_path)
    assert [(c.file, c.needs) for c in kept] == [("book/one", ()), ("book/three", ("book/one",))]


def test_the_committed_figure_is_what_the_script_draws(tmp_path: Path) -> None:
    fresh = rp.draw(rp.existing(rp.CHAPTERS), tmp_path / "reading_path.svg")
    assert FIGURE.read_bytes() == fresh.read_bytes(), (
        "book/figures/reading_path.svg is stale: run .venv/bin/python scripts/draw_reading_path.py"
    )
    svg = FIGURE.read_text(encoding="utf-8")
    for chapter in rp.existing(rp.CHAPTERS):
        assert f"{chapter.label}. {chapter.title}" in svg.replace("&#39;", "'"), chapter.file
