"""One run per output folder; the refusal names the holder (issue 12, item 7)."""

import os
import subprocess
import sys
import textwrap

import pytest

from modularforge.cli.main import main
from modularforge.files.run_lock import LOCK_NAME, FolderLockedError, lock_holder, locked_folder
from modularforge.pipeline.folders import SUBDIRS
from modularforge.pipeline.run import PipelineSettings, run_pipeline

HOLDER = textwrap.dedent(
    """
    import sys, time
    from modularforge.files.run_lock import locked_folder
    with locked_folder(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.read()  # hold until the test closes our stdin
    """
)


@pytest.fixture
def held(tmp_path):
    """A folder whose lock another live process holds; yields (folder, that pid)."""
    folder = tmp_path / "run"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert process.stdout.readline().strip() == "held"
    yield folder, process.pid
    process.stdin.close()
    process.wait(timeout=30)


def _pipeline(folder):
    fast = dict(steps=1, expert_steps=1, router_steps=1, batch_size=2, seq_len=16, progress=False)
    run_pipeline(folder, PipelineSettings(**fast), log=lambda _: None)


def _cli(folder):
    return main(["pipeline", "--out", str(folder), "--steps", "1", "--no-progress"])


def _in_process(folder):
    with locked_folder(folder):
        pass


@pytest.mark.parametrize("taker", [_pipeline, _in_process], ids=["pipeline", "locked_folder"])
def test_a_second_run_is_refused_naming_the_holder(held, taker):
    folder, pid = held
    with pytest.raises(FolderLockedError, match=rf"in use by process {pid}"):
        taker(folder)
    assert sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME) in (
        [], sorted(SUBDIRS)
    )  # nothing but the folder layout, and no manifest  # fmt: skip
    assert lock_holder(folder) == pid


def test_the_cli_prints_the_holder_in_one_line(held, capsys):
    folder, pid = held
    assert _cli(folder) == 2
    err = capsys.readouterr().err
    assert f"process {pid}" in err and err.count("\n") == 1


def test_the_lock_is_released_when_the_run_ends(tmp_path):
    with locked_folder(tmp_path) as locked:
        assert locked and lock_holder(tmp_path) == os.getpid()
        with pytest.raises(FolderLockedError):  # a second taker, even in this process
            with locked_folder(tmp_path):
                pass
    with locked_folder(tmp_path) as again:
        assert again


def test_a_killed_holder_leaves_the_folder_usable(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert process.stdout.readline().strip() == "held"
    process.kill()
    process.wait(timeout=30)
    with locked_folder(tmp_path) as locked:
        assert locked


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    folder = tmp_path / "run"
    folder.mkdir()
    os.symlink(victim, folder / LOCK_NAME)
    with pytest.raises(ValueError, match="symbolic link"):
        with locked_folder(folder):
            pass
    assert victim.read_text() == "keep"
