"""A command never writes over one of its own inputs (issue 12, item 3)."""

import os

import pytest

from modularforge.cli.main import main
from modularforge.pipeline.folders import enclosing_pipeline_folder

TRAIN = ["--steps", "1", "--batch-size", "2", "--seq-len", "16", "--no-progress"]


def _case(tmp_path, name):
    """(argv, the input file that must survive) for one way of naming an input as output."""
    trunk = tmp_path / "trunk.safetensors"
    trunk.write_bytes(b"the trunk")
    runs = tmp_path / "runs"
    runs.mkdir()
    if name == "same path":
        out = trunk
    elif name == "dotted path":
        out = tmp_path / "runs" / ".." / "trunk.safetensors"
    elif name == "symlink":
        out = tmp_path / "link.safetensors"
        os.symlink(trunk, out)
    elif name == "hard link":
        out = tmp_path / "hard.safetensors"
        os.link(trunk, out)
    if name in ("same path", "dotted path", "symlink", "hard link"):
        argv = ["train-expert", "--shared", str(trunk), "--domain", "english", "--out", str(out)]
        return [*argv, *TRAIN], trunk
    if name in ("train-experts expert file", "train-experts manifest"):
        inside = "manifest.json" if name.endswith("manifest") else "expert-0-english.safetensors"
        victim = runs / inside
        victim.write_bytes(b"the trunk")
        argv = ["train-experts", "--shared", str(victim), "--domains", "english,python"]
        return [*argv, "--out", str(runs), *TRAIN], victim
    if name == "pipeline-seeds json is a manifest":
        victim = runs / "manifest.json"
        victim.write_bytes(b"the trunk")
        return ["pipeline-seeds", str(runs), "--json", str(victim)], victim
    raise AssertionError(name)


CASES = [
    "same path", "dotted path", "symlink", "hard link", "train-experts expert file",
    "train-experts manifest", "pipeline-seeds json is a manifest",
]  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_an_output_that_is_an_input_is_refused(tmp_path, capsys, name):
    argv, victim = _case(tmp_path, name)
    before = victim.read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "would replace an input" in err and err.count("\n") == 1
    assert victim.read_bytes() == before


def test_a_different_output_passes_the_check(tmp_path):
    from modularforge.cli.main import build_parser, path_roles
    from modularforge.files.output_paths import refuse_outputs_among_inputs

    args = build_parser().parse_args(
        ["train-expert", "--shared", str(tmp_path / "a"), "--domain", "x", "--out", str(tmp_path)]
    )
    refuse_outputs_among_inputs(*path_roles(args))  # a folder is not the file inside it


def _pipeline_folder(tmp_path, manifest: bytes = b'{"format": "modularforge-pipeline"}'):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_bytes(manifest)
    (run / "shared.safetensors").write_bytes(b"the run's trunk")
    return run


@pytest.mark.parametrize(
    "argv",
    [
        ["pipeline-seeds", "{run}", "--json", "{run}/shared.safetensors"],
        ["pipeline-seeds", "{run}", "--json", "{run}/summary.json"],
        ["train-shared", "--out", "{run}/shared.safetensors", *TRAIN],
        ["train-expert", "--shared", "{run}/shared.safetensors", "--domain", "english",
         "--out", "{run}/experts/mine.safetensors", *TRAIN],
    ],
    ids=["json-over-checkpoint", "json-beside-it", "trunk-over-trunk", "expert-into-subfolder"],
)  # fmt: skip
def test_no_other_command_writes_into_a_pipeline_folder(tmp_path, capsys, argv):
    run = _pipeline_folder(tmp_path)
    (run / "experts").mkdir()
    before = sorted(p.name for p in run.rglob("*"))
    assert main([arg.format(run=run) for arg in argv]) == 2
    message = capsys.readouterr().err
    assert "lies inside the pipeline folder" in message and "choose a path outside it" in message
    assert sorted(p.name for p in run.rglob("*")) == before
    assert (run / "shared.safetensors").read_bytes() == b"the run's trunk"


def test_negative_control_a_folder_with_another_manifest_is_not_a_pipeline_folder(tmp_path):
    other = _pipeline_folder(tmp_path, manifest=b'{"format": "someone-elses"}')
    assert enclosing_pipeline_folder(other / "summary.json") is None
    (tmp_path / "b").mkdir()
    run = _pipeline_folder(tmp_path / "b")
    assert enclosing_pipeline_folder(run / "deep" / "er" / "x.json") == run
