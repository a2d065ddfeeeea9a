"""The nbval plugin: a tolerant cell accepts trained numbers that moved a little, and no more."""

from __future__ import annotations

import nbformat
import pytest
from nbval_tolerance import align_within_tolerance, cell_tolerance

from modularforge.measure.reproducibility import Tolerance

NATS = Tolerance("abs", 0.1)


def stream(text: str):
    return nbformat.v4.new_output("stream", name="stdout", text=text)


def record(text: str):
    return nbformat.v4.new_output(
        "display_data", data={"application/papermill.record/text/plain": text}
    )


def test_numbers_within_tolerance_are_replaced_by_the_stored_text() -> None:
    stored = [stream("val loss 7.644 -> 5.888 nats\n"), record("5.888042")]
    fresh = [stream("val loss 7.644 -> 5.842 nats\n"), record("5.84213")]
    assert align_within_tolerance(fresh, stored, NATS, str) == []
    assert fresh[0]["text"] == stored[0]["text"] and fresh[1]["data"] == stored[1]["data"]


def test_negative_control_a_moved_number_is_left_for_nbval_to_report() -> None:
    stored, fresh = [stream("val loss 5.888 nats\n")], [stream("val loss 6.100 nats\n")]
    problems = align_within_tolerance(fresh, stored, NATS, str)
    assert problems and "beyond the measured tolerance" in problems[0]
    assert fresh[0]["text"] == "val loss 6.100 nats\n"  # untouched: nbval fails the cell


def test_a_changed_verdict_is_never_absorbed() -> None:
    stored, fresh = [stream("bit-identical: True\n")], [stream("bit-identical: False\n")]
    assert align_within_tolerance(fresh, stored, Tolerance("abs", 1e9), str)
    assert fresh[0]["text"] == "bit-identical: False\n"


def test_sanitizers_apply_before_the_numbers_are_compared() -> None:
    stored, fresh = [stream("took 3.1 s, loss 5.888\n")], [stream("took 9.4 s, loss 5.85\n")]
    hide_time = lambda text: text.replace("3.1 s", "T").replace("9.4 s", "T")  # noqa: E731
    assert align_within_tolerance(fresh, stored, NATS, hide_time) == []


def test_cells_without_the_key_are_exact() -> None:
    assert cell_tolerance({"tags": ["remove-input"]}) is None


@pytest.mark.parametrize("bad", ["ch03", {"key": "x"}, {"scale": "abs"}])
def test_malformed_metadata_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="cpu_tolerance must be"):
        cell_tolerance({"cpu_tolerance": bad})


def prose_output(text: str, keys: list):
    return nbformat.v4.new_output(
        "display_data", data={"text/markdown": text}, metadata={"cpu_tolerance": keys}
    )


def test_prose_numbers_use_their_own_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import nbval_tolerance

    monkeypatch.setattr(nbval_tolerance, "tolerance_for", lambda key: NATS)
    stored = [prose_output("300 steps: loss 5.83 nats", [None, "k"])]
    fresh = [prose_output("300 steps: loss 5.79 nats", [None, "k"])]
    assert nbval_tolerance.align_prose(fresh, stored, str) == []
    assert fresh[0]["data"]["text/markdown"] == "300 steps: loss 5.83 nats"


def test_negative_control_an_exact_number_in_prose_must_not_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import nbval_tolerance

    monkeypatch.setattr(nbval_tolerance, "tolerance_for", lambda key: Tolerance("abs", 1e9))
    stored = [prose_output("300 steps: loss 5.83 nats", [None, "k"])]
    fresh = [prose_output("301 steps: loss 5.83 nats", [None, "k"])]
    problems = nbval_tolerance.align_prose(fresh, stored, str)
    assert problems and "should equal 300 exactly" in problems[0]
    assert fresh[0]["data"]["text/markdown"].startswith("301")
