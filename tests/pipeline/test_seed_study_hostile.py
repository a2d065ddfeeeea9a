"""`pipeline-seeds` on damaged manifests: one clean line naming the file, exit 2, no traceback."""

from __future__ import annotations

import json
import os

import pytest

from modularforge.cli.main import main
from modularforge.pipeline import manifest


def _good(seed: int) -> dict:
    rows = [{"name": "dense", "training_tokens": 10, "mixed": 170.0 + seed,
             "domains": {"a": 169.0, "b": 171.0}}]  # fmt: skip
    return {"settings": {"steps": 3, "seed": seed},
            "phases": {"evaluation": {"comparison": {"rows": rows}}}}  # fmt: skip


def _write(tmp_path, name: str, manifest) -> str:
    run = tmp_path / name
    run.mkdir()
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (run / "manifest.json").write_text(text)
    return str(run)


def _broken(case: str):
    m = _good(1)
    if case == "a list":
        return [m]
    if case == "deep nesting":
        return "[" * 200_000 + "]" * 200_000
    if case == "no settings":
        del m["settings"]
    if case == "a list seed":
        m["settings"]["seed"] = [1]
    if case == "a string evaluation":
        m["phases"]["evaluation"] = "done"
    if case == "empty rows":
        m["phases"]["evaluation"]["comparison"]["rows"] = []
    if case == "a row without domains":
        del m["phases"]["evaluation"]["comparison"]["rows"][0]["domains"]
    if case == "a renamed row":
        m["phases"]["evaluation"]["comparison"]["rows"][0]["name"] = "renamed"
    if case == "not JSON":
        return "{\n"
    return m


CASES = ["a list", "deep nesting", "no settings", "a list seed", "a string evaluation",
         "empty rows", "a row without domains", "a renamed row", "not JSON"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_manifest_is_one_line_that_names_it(tmp_path, capsys, case) -> None:
    good = _write(tmp_path, "good", _good(0))
    bad = _write(tmp_path, "bad", _broken(case))
    out = tmp_path / "study.json"
    assert main(["pipeline-seeds", good, bad, "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "bad" in err  # the damaged run is named
    assert not out.exists()


def test_negative_control_two_good_manifests_make_a_study(tmp_path) -> None:
    runs = [_write(tmp_path, f"s{s}", _good(s)) for s in (0, 1)]
    out = tmp_path / "study.json"
    assert main(["pipeline-seeds", *runs, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["seeds"] == [0, 1]


def test_an_oversized_manifest_is_refused_before_it_is_read_whole(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(manifest, "MAX_MANIFEST_BYTES", 100)
    good = _write(tmp_path, "good", _good(0))
    big = _write(tmp_path, "big", {**_good(1), "padding": "x" * 200})
    assert main(["pipeline-seeds", good, big, "--json", str(tmp_path / "o.json")]) == 2
    assert "larger than 100 bytes" in capsys.readouterr().err


def test_a_fifo_manifest_is_refused_not_waited_on(tmp_path, capsys) -> None:
    good = _write(tmp_path, "good", _good(0))
    run = tmp_path / "fifo"
    run.mkdir()
    os.mkfifo(run / "manifest.json")
    assert main(["pipeline-seeds", good, str(run), "--json", str(tmp_path / "o.json")]) == 2
    assert "FIFO" in capsys.readouterr().err
