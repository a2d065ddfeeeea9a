"""The three-phase figure (introduction, chapter 8): generated, current, and showing the phases.

``scripts/draw_three_phases.py`` draws ``book/figures/three_phases.svg``; these
tests check that the committed file is what the script draws today, and that
it names what trains in each phase.
"""

from __future__ import annotations

from pathlib import Path

from repo_scripts import load_script

tp = load_script("scripts/draw_three_phases.py")


def test_the_committed_figure_is_what_the_script_draws(tmp_path: Path) -> None:
    fresh = tp.draw(tmp_path / "three_phases.svg").read_text(encoding="utf-8")
    assert tp.FIGURE.read_text(encoding="utf-8") == fresh, (
        "book/figures/three_phases.svg is stale: run `python scripts/draw_three_phases.py`"
    )


def test_the_figure_shows_every_phase_and_domain() -> None:
    text = tp.FIGURE.read_text(encoding="utf-8")
    for words in ("phase 1", "phase 2", "phase 3", "freeze", "router", *tp.DOMAINS):
        assert words in text, words


def test_the_staleness_check_can_fail(tmp_path: Path) -> None:
    """Negative control: a figure drawn with another colour differs from the committed one."""
    original = tp.TRAINS
    try:
        tp.TRAINS = "#000000"
        changed = tp.draw(tmp_path / "changed.svg").read_text(encoding="utf-8")
    finally:
        tp.TRAINS = original
    assert changed != tp.FIGURE.read_text(encoding="utf-8")
