"""A damaged manifest stops a run with one message naming the file and the field (item 13)."""

import copy
import json
import os
from pathlib import Path

import pytest

from modularforge.cli.main import main
from modularforge.pipeline.manifest import (
    ManifestError,
    read_manifest,
    validate_manifest,
    write_manifest,
)

STORED = Path(__file__).resolve().parents[2] / "book" / "data" / "pipeline-tiny"


@pytest.fixture(scope="module")
def good():
    return json.loads((STORED / "manifest.json").read_text("utf-8"))


def test_the_stored_run_and_a_fresh_manifest_are_valid(good, tmp_path):
    assert read_manifest(STORED)["domains"] == ["english", "licenses", "python"]
    fresh = {"format": "modularforge-pipeline", "version": 1, "phases": {}}
    write_manifest(tmp_path, fresh)
    assert read_manifest(tmp_path) == fresh
    assert read_manifest(tmp_path / "nothing-yet") == {}


def _set(manifest, dotted, value):
    keys = dotted.split(".")
    target = manifest
    for key in keys[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value


_DELETE = object()
#: (field changed, new value, words the message must contain)
WRONG_FIELDS = [
    ("phases", [], "field phases must be an object"),
    ("phases", "done", "field phases must be an object"),
    ("phases.shared", "done", "field phases.shared must be an object"),
    ("phases.shared.fingerprint", _DELETE, "phases.shared.fingerprint is missing"),
    ("phases.shared.phase1_ffn", ["a"], "phases.shared.phase1_ffn must be an object"),
    ("phases.experts", ["english"], "field phases.experts must be an object"),
    ("phases.experts.english", "done", "phases.experts.english must be an object"),
    ("phases.experts.english.sha256", 5, "phases.experts.english.sha256 must be a string"),
    ("phases.experts.english.index", "0", "phases.experts.english.index must be an integer"),
    ("phases.experts.english.index", True, "phases.experts.english.index must be an integer"),
    ("phases.experts.english.seconds", float("nan"), "seconds must be a finite number"),
    ("phases.routers.1.expert_sha256", "abc", "phases.routers.1.expert_sha256 must be a list"),
    ("phases.routers.1.expert_sha256", [1, 2], "expert_sha256[0] must be a string"),
    ("phases.dense.files", "dense/ffn", "phases.dense.files must be a list"),
    ("phases.evaluation.matrix", None, "phases.evaluation.matrix must be an object"),
    ("domains", "english,licenses,python", "field domains must be a list"),
    ("domains", ["english", 3, "python"], "field domains[1] must be a string"),
    ("domains", ["english", "english"], "lists a domain twice"),
    ("domains", ["english", "python"], "experts for ['licenses'], not in domains"),
    ("settings", [], "field settings must be an object"),
    ("events", "trained", "field events must be a list"),
    ("version", 999, "field version is 999"),
    ("version", "1", "field version is '1'"),
    ("version", _DELETE, "field version is None"),
    ("format", "modularforge-experts", "not a modularforge pipeline manifest"),
    ("format", _DELETE, "not a modularforge pipeline manifest"),
]


@pytest.mark.parametrize(("field", "value", "words"), WRONG_FIELDS)
def test_a_wrong_field_is_named(good, tmp_path, field, value, words):
    manifest = copy.deepcopy(good)
    _set(manifest, field, value)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest), "utf-8")
    with pytest.raises(ManifestError) as caught:
        read_manifest(tmp_path)
    assert words in str(caught.value)
    assert str(tmp_path / "manifest.json") in str(caught.value)


#: Whole files that are not a manifest, and the words their message must contain.
BAD_FILES = [
    (b"", "is empty"),
    (b"  \n", "is empty"),
    (b"[]", "top level must be an object, got a list"),
    (b'"manifest"', "top level must be an object, got a string"),
    (b"3", "top level must be an object, got an integer"),
    (b"null", "top level must be an object, got null"),
    (b"\xff\xfe{}", "is not UTF-8"),
    (b'{"format": "modularforge-pipeline", "version": 1, "phases": {', "is not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nests JSON too deeply"),
    (b'{"format": "modularforge-pipeline", "version": 1}', "phases is missing"),
]


@pytest.mark.parametrize(("data", "words"), BAD_FILES, ids=range(len(BAD_FILES)))
def test_a_file_that_is_not_a_manifest_is_named(tmp_path, data, words):
    (tmp_path / "manifest.json").write_bytes(data)
    with pytest.raises(ManifestError, match="manifest.json") as caught:
        read_manifest(tmp_path)
    assert words in str(caught.value)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.99])
def test_a_truncated_stored_manifest_is_named(tmp_path, cut):
    data = (STORED / "manifest.json").read_bytes()
    (tmp_path / "manifest.json").write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ManifestError, match=r"manifest.json is not valid JSON \(line \d+"):
        read_manifest(tmp_path)


def test_a_fifo_manifest_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "manifest.json")
    with pytest.raises(ValueError, match="manifest.*FIFO"):
        read_manifest(tmp_path)


def test_validate_accepts_what_it_is_given_back(good):
    assert validate_manifest(good) is good


@pytest.mark.parametrize(
    "data", [b"", b"[]", b'{"format": "modularforge-pipeline", "version": 999}']
)
def test_the_pipeline_command_prints_one_line_for_a_bad_manifest(tmp_path, capsys, data):
    (tmp_path / "manifest.json").write_bytes(data)
    assert main(["pipeline", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "manifest.json" in err and err.count("\n") == 1
