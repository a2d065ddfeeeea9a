"""Hostile inputs and crashes: every fault gets a clear error, and no crash corrupts a save."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modularforge import ModelConfig, ModuleTrainerModel, SharedComponents
from modularforge.chapters.ch07_faults import FAULTS, FaultReport, report_table, trigger
from modularforge.files.checkpoint import (
    load_expert,
    load_shared,
    save_expert,
    save_shared,
    shared_fingerprint,
)
from modularforge.measure.memory import memory_budget, parameter_counts

# --------------------------------------------------------------------------- the catalogue


@pytest.mark.parametrize("fault", FAULTS, ids=[f.symptom for f in FAULTS])
def test_each_fault_raises_its_exact_error_naming_the_problem(fault, tmp_path):
    report = trigger(fault, tmp_path)
    assert type(report.error) is fault.error, report.message
    assert fault.message in report.message
    assert not (tmp_path / "pwned").exists()


def test_fault_table_lists_every_fault_without_scratch_paths(tmp_path):
    reports = []
    for index, fault in enumerate(FAULTS):
        directory = tmp_path / str(index)
        directory.mkdir()
        reports.append(trigger(fault, directory))
    table = report_table(reports, tmp_path)
    assert table.count("\n") == len(FAULTS) + 1
    assert str(tmp_path) not in table


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to drop privileges")
def test_unreadable_file_is_refused_even_when_tests_run_as_root(tmp_path):
    """Root reads any file, so the load runs in a forked child that became `nobody`."""
    torch.manual_seed(0)
    config = ModelConfig.tiny()
    shared = SharedComponents(config).freeze()
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"mf-unreadable-{os.getpid()}"
    folder.mkdir(mode=0o755, exist_ok=True)
    try:
        path = save_expert(ModuleTrainerModel(shared, config), folder / "expert.safetensors")
        path.chmod(0)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: give up root, try to load, report the exception's name
            os.close(read_end)
            outcome = b"no error"
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                load_expert(path, shared)
            except PermissionError as error:
                outcome = b"PermissionError " + str(error).encode()
            except BaseException as error:  # noqa: BLE001
                outcome = type(error).__name__.encode()
            os.write(write_end, outcome)
            os._exit(0)
        os.close(write_end)
        outcome = os.read(read_end, 4096).decode()
        os.waitpid(pid, 0)
        assert outcome.startswith("PermissionError"), outcome
        assert "expert.safetensors" in outcome
    finally:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()


# --------------------------------------------------------------------------- crashes

#: Big enough that a save takes tens of milliseconds, so kills land mid-write.
KILL_CONFIG = ModelConfig(
    d_model=256, n_heads=4, n_layers=2, d_ff=512, vocab_size=16384, max_seq_len=64
)
KILL_TRIALS = 20


def _trunk(seed: int) -> SharedComponents:
    torch.manual_seed(seed)
    return SharedComponents(KILL_CONFIG)


def _start_saver(target: Path, versions: list[SharedComponents], mid_write: bool) -> int:
    """Fork a child that saves the versions in turn, forever, until it is killed.

    A forked child starts instantly (no interpreter start-up, no torch import),
    so twenty kills fit in a few seconds. With `mid_write`, the child stops
    halfway through writing its temp file and tells the parent, so that the kill
    is sure to land in the most dangerous window, not only where chance puts it.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            # OpenMP's thread pool does not survive fork: a parallel copy in the
            # child would wait forever for the parent's threads. One thread runs
            # every op inline.
            torch.set_num_threads(1)
            os.close(read_end)
            if mid_write:
                import modularforge.files.atomic as atomic

                def half_then_wait(fd: int, data: bytes) -> None:
                    os.write(fd, bytes(memoryview(data)[: len(data) // 2]))
                    os.write(write_end, b"w")
                    time.sleep(60)

                atomic._write_all = half_then_wait
            os.write(write_end, b"r")
            n = 0
            while True:
                save_shared(versions[n % 2], target)
                n += 1
        finally:
            os._exit(1)
    os.close(write_end)
    assert os.read(read_end, 1) == b"r"
    if mid_write:
        assert os.read(read_end, 1) == b"w"
    os.close(read_end)
    return pid


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_saves_killed_at_random_moments_never_corrupt_the_checkpoint(tmp_path):
    versions = [_trunk(1), _trunk(2)]
    fingerprints = {shared_fingerprint(_trunk(0))} | {shared_fingerprint(v) for v in versions}
    rng = random.Random(1234)
    left_temp_files = 0
    for trial in range(KILL_TRIALS):
        folder = tmp_path / f"trial-{trial}"
        folder.mkdir()
        target = save_shared(_trunk(0), folder / "shared.safetensors")
        mid_write = trial % 4 == 3  # every fourth kill lands inside a write, for certain
        pid = _start_saver(target, versions, mid_write)
        if not mid_write:
            time.sleep(rng.uniform(0.0, 0.3))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        loaded = load_shared(target)  # always loads, every tensor checked
        assert shared_fingerprint(loaded) in fingerprints
        temps = [p for p in target.parent.iterdir() if ".tmp-" in p.name]
        assert temps or not mid_write, "a kill inside a write leaves its temp file"
        left_temp_files += bool(temps)
        save_shared(loaded, target)  # the next save cleans up after the killed one
        assert [p.name for p in target.parent.iterdir()] == [target.name]
    print(f"{KILL_TRIALS} kills, {left_temp_files} left a temp file that the next save removed")


# --------------------------------------------------------------------------- properties

SIZES = st.integers(min_value=-2, max_value=40)


@settings(max_examples=60, deadline=None)
@given(
    d_model=SIZES,
    n_heads=SIZES,
    n_layers=SIZES,
    d_ff=SIZES,
    dropout=st.floats(min_value=-0.5, max_value=1.5, allow_nan=False),
)
def test_config_is_valid_exactly_when_every_rule_holds(d_model, n_heads, n_layers, d_ff, dropout):
    valid = (
        min(d_model, n_heads, n_layers, d_ff) > 0
        and d_model % n_heads == 0
        and d_model % 2 == 0
        and 0 <= dropout < 1
    )
    kwargs = dict(
        d_model=d_model,
        n_heads=n_heads,
        n_layers=n_layers,
        d_ff=d_ff,
        vocab_size=32,
        max_seq_len=16,
        dropout=dropout,
    )
    if valid:
        assert ModelConfig(**kwargs).d_model == d_model
    else:
        with pytest.raises(ValueError, match="ModelConfig"):
            ModelConfig(**kwargs)


small_configs = st.builds(
    lambda heads, head_dim, layers, d_ff, vocab, seq: ModelConfig(
        d_model=heads * head_dim * 2,
        n_heads=heads,
        n_layers=layers,
        d_ff=d_ff,
        vocab_size=vocab,
        max_seq_len=seq,
    ),
    st.integers(1, 4),
    st.integers(1, 8),
    st.integers(1, 3),
    st.integers(1, 64),
    st.integers(2, 300),
    st.integers(1, 32),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=small_configs, batch=st.integers(1, 4), data=st.data())
def test_budget_is_monotonic_and_freezing_never_costs_more(config, batch, data):
    seq = data.draw(st.integers(1, config.max_seq_len))
    for frozen in (True, False):
        base = memory_budget(config, batch, seq, frozen=frozen)
        assert memory_budget(config, batch + 1, seq, frozen=frozen).total > base.total
        if seq < config.max_seq_len:
            assert memory_budget(config, batch, seq + 1, frozen=frozen).total > base.total
        for field in ("n_layers", "d_ff", "vocab_size"):
            bigger = config.replace(**{field: getattr(config, field) + 1})
            assert memory_budget(bigger, batch, seq, frozen=frozen).total > base.total, field
        wider = config.replace(d_model=config.d_model + 2 * config.n_heads)
        assert memory_budget(wider, batch, seq, frozen=frozen).total > base.total
    assert (
        memory_budget(config, batch, seq, frozen=True).total
        <= memory_budget(config, batch, seq, frozen=False).total
    )


@settings(max_examples=25, deadline=None)
@given(config=small_configs)
def test_analytic_parameter_count_equals_a_built_model(config):
    model = ModuleTrainerModel(SharedComponents(config).freeze(), config)
    counts = parameter_counts(config)
    assert sum(p.numel() for p in model.parameters()) == counts.total
    assert sum(p.numel() for p in model.trainable_parameters()) == counts.expert


def test_report_table_escapes_angle_brackets_so_placeholders_survive_html():
    """`<repo>` in a message must reach the page as text, not as an unknown HTML tag."""
    repo = str(Path(__file__).resolve().parents[2])
    error = FileNotFoundError(f"tokenizer file {repo}/data/x.json not found")
    table = report_table([FaultReport(FAULTS[0], error)])
    assert "&lt;repo&gt;/data/x.json" in table
    assert "<repo>" not in table
