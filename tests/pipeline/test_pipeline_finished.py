"""A finished pipeline folder: verified read-only, its files checked on load (items 15, 9, 8)."""

import builtins
import errno
import json
import os
import shutil

import pytest

import modularforge.pipeline.manifest as manifest_module
from modularforge.cli.main import main
from modularforge.files.checkpoint import CheckpointError
from modularforge.pipeline.manifest import ManifestError
from modularforge.pipeline.run import (
    PipelineSettings,
    expert_path,
    load_pipeline_dense,
    load_pipeline_experts,
    load_pipeline_mixture,
    load_pipeline_phase1,
    load_pipeline_shared,
    router_path,
    run_pipeline,
    shared_path,
)

FAST = dict(
    steps=2, expert_steps=2, router_steps=1, batch_size=2, seq_len=16, top_k=(1, 2),
    checkpoint_every=1, eval_max_batches=1, progress=False,
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, one_thread_per_module):
    out = tmp_path_factory.mktemp("finished") / "run"
    run_pipeline(out, PipelineSettings(**FAST), log=lambda _: None)
    return out


@pytest.fixture
def copy(finished, tmp_path):
    """A private copy of the finished run, for tests that damage it."""
    return shutil.copytree(finished, tmp_path / "run")


def _read_only_storage(monkeypatch):
    """Every way this process could write a file fails as on a read-only mount."""
    real_open, real_builtin_open = os.open, builtins.open
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def ro_open(path, flags, *args, **kwargs):
        if flags & writes:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    def ro_mkdir(path, *args, **kwargs):
        if os.path.exists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def ro_builtin_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_builtin_open(file, mode, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)
    monkeypatch.setattr(builtins, "open", ro_builtin_open)
    for name in ("replace", "rename", "unlink", "remove", "rmdir"):
        monkeypatch.setattr(os, name, refuse)


@pytest.mark.parametrize(
    "change",
    [{}, {"progress": True}, {"device": "cpu"}, {"top_k": (1,)}],
    ids=["same", "progress", "device", "fewer-mixtures"],
)
def test_a_finished_run_verifies_from_read_only_storage(finished, monkeypatch, change):
    manifest = finished / "manifest.json"
    before = (manifest.read_bytes(), manifest.stat().st_mtime_ns, manifest.stat().st_ino)
    _read_only_storage(monkeypatch)
    result = run_pipeline(finished, PipelineSettings(**{**FAST, **change}), log=lambda _: None)
    monkeypatch.undo()
    assert all(event.startswith("skipped") for event in result.events), result.events
    assert (manifest.read_bytes(), manifest.stat().st_mtime_ns, manifest.stat().st_ino) == before


def test_read_only_storage_is_real_in_this_test(copy, monkeypatch):
    """Negative control: work that must write fails on the simulated read-only storage."""
    expert_path(copy, 1, "licenses").unlink()
    _read_only_storage(monkeypatch)
    with pytest.raises(OSError) as caught:
        run_pipeline(copy, PipelineSettings(**FAST), log=lambda _: None)
    assert caught.value.errno == errno.EROFS


def test_a_rerun_that_changes_nothing_does_not_write_the_manifest(finished, monkeypatch):
    def no_write(*args, **kwargs):
        raise AssertionError("manifest written")

    monkeypatch.setattr(manifest_module, "atomic_write_bytes", no_write)
    run_pipeline(finished, PipelineSettings(**FAST), log=lambda _: None)


def test_loading_the_finished_run_checks_every_hash(finished):
    assert set(load_pipeline_experts(finished)) == {"english", "licenses", "python"}
    for k in (1, 2):
        assert load_pipeline_mixture(finished, k) is not None
    assert load_pipeline_dense(finished) is not None and load_pipeline_phase1(finished) is not None


def _swap_experts(out):
    a, b = expert_path(out, 0, "english"), expert_path(out, 1, "licenses")
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)


def _copy_router(out):
    router_path(out, 1).write_bytes(router_path(out, 2).read_bytes())


def _edit_manifest(out, edit):
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


#: (damage, loader, words of the refusal)
DAMAGE = [
    ("swap experts", _swap_experts, lambda o: load_pipeline_mixture(o, 1), "expert 0 (english)"),
    ("swap experts, no router", _swap_experts, load_pipeline_experts, "not the expert 0"),
    ("router of top-2 as top-1", _copy_router, lambda o: load_pipeline_mixture(o, 1), "top-1 router"),
    ("trunk replaced", lambda o: shared_path(o).write_bytes((o / "dense" / "shared.safetensors").read_bytes()),
     load_pipeline_shared, "not the shared trunk"),
    ("phase-1 FFNs replaced", lambda o: (o / "phase1-ffn.safetensors").write_bytes(
        (o / "dense" / "ffn.safetensors").read_bytes()), load_pipeline_phase1, "phase-1 FFNs"),
    ("dense swapped", lambda o: (o / "dense" / "ffn.safetensors").write_bytes(
        (o / "phase1-ffn.safetensors").read_bytes()), load_pipeline_dense, "dense baseline's FFNs"),
    ("expert hash edited", lambda o: _edit_manifest(
        o, lambda m: m["phases"]["experts"]["python"].update(sha256="0" * 64)),
     lambda o: load_pipeline_mixture(o, 2), "trained with other experts"),
    ("router hash removed", lambda o: _edit_manifest(
        o, lambda m: m["phases"]["routers"].pop("2")), lambda o: load_pipeline_mixture(o, 2),
     "records no hash"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("damage", "loader", "words"), [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE]
)
def test_a_file_the_manifest_does_not_record_is_refused_on_load(copy, damage, loader, words):
    damage(copy)
    with pytest.raises(CheckpointError, match="rerun the pipeline") as caught:
        loader(copy)
    assert words in str(caught.value) and str(copy) in str(caught.value)


def test_a_folder_without_manifest_is_not_a_pipeline(tmp_path):
    with pytest.raises(ManifestError, match="not a finished pipeline folder"):
        load_pipeline_experts(tmp_path)


@pytest.mark.parametrize(
    "existing",
    ["pipeline", "other-json", "garbage", "list"],
)
def test_train_experts_refuses_a_foreign_manifest(finished, tmp_path, capsys, existing):
    out = tmp_path / "out"
    if existing == "pipeline":
        out = shutil.copytree(finished, out)
    else:
        out.mkdir()
        data = {"other-json": b'{"format": "x"}', "garbage": b"\x00{", "list": b"[1]"}[existing]
        (out / "manifest.json").write_bytes(data)
    before = (out / "manifest.json").read_bytes()
    argv = ["train-experts", "--shared", str(shared_path(finished)), "--domains", "english",
            "--out", str(out), "--steps", "1", "--batch-size", "2", "--seq-len", "16",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "manifest.json" in err and "train-experts would overwrite it" in err
    assert (out / "manifest.json").read_bytes() == before
    assert not (out / "expert-0-english.safetensors").exists()
