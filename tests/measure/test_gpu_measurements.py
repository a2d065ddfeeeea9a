"""The GPU measurements, tested without a GPU: arguments, refusal, schema, the chapter's loader."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch

from modularforge.measure import gpu_measurements as gm
from modularforge.measure.bench import run_bench
from modularforge.model.config import ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread_per_module")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_as_if_cuda() -> dict[str, Any]:
    """A tiny CPU bench dressed as a CUDA one: the schema is the same."""
    result = run_bench(ModelConfig.tiny(), 2, 8, steps=1, warmup=0)
    result["machine"]["device"] = "cuda:0"
    return {
        "command": "python -m modularforge.measure.gpu_measurements",
        "part": "bench-fp32",
        **result,
    }


def memory_result() -> dict[str, Any]:
    return {
        "command": "python -m modularforge.measure.gpu_measurements",
        "machine": {"device": "cuda:0"},
        "peaks": {"lean expert step 16x512": {"measured": 205_000_000, "analytic": 206_000_000}},
        "snapshot": {"file": "runs/gpu/x.pickle", "bytes": 10},
    }


def test_defaults_and_command_round_trip() -> None:
    args = gm.parse_args([])
    assert args.parts == list(gm.PARTS) and args.out_dir == Path("book/data")
    assert (args.bench_batch, args.bench_seq, args.ladder_batch, args.ladder_seq) == (
        4,
        256,
        16,
        512,
    )
    command = gm.command_line(args)
    again = gm.parse_args(shlex.split(command)[3:])
    assert vars(again) == vars(args)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--ladder-seq", "-1"], "--ladder-seq must be >= 1"),
        (["--warmup", "-1"], "--warmup must be >= 0"),
        (["--parts", "everything"], "invalid choice"),
        (["--rounds", "two"], "invalid int value"),
    ],
)
def test_bad_arguments_are_refused(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit):
        gm.parse_args(argv)
    assert message in capsys.readouterr().err


def test_refuses_without_cuda(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gm.main(["--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "need a CUDA GPU" in err and "make measurements" in err
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_refuses_a_cpu_device_even_with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(gm.CudaUnavailable, match="must be a CUDA device"):
        gm.require_cuda("cpu")


def test_makefile_target_runs_the_module() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "gpu-measurements:" in makefile
    assert "-m modularforge.measure.gpu_measurements --out-dir book/data" in makefile


def test_validate_accepts_a_complete_bench(bench_as_if_cuda: dict[str, Any]) -> None:
    assert gm.validate("bench-fp32", bench_as_if_cuda) is bench_as_if_cuda


@pytest.mark.parametrize(
    ("part", "change", "message"),
    [
        ("bench-fp32", lambda r: r.pop("roofline"), r"missing \['roofline'\]"),
        ("bench-bf16", lambda r: None, "against the bfloat16 line"),
        ("bench-fp32", lambda r: r["machine"].update(device="cpu"), "not measured on CUDA"),
        ("bench-fp32", lambda r: r["results"]["expert"].pop("achieved"), "lacks achieved"),
        ("ladder", lambda r: None, "missing"),
        ("nonsense", lambda r: None, "unknown part"),
    ],
)
def test_validate_names_what_is_wrong(
    bench_as_if_cuda: dict[str, Any], part: str, change, message: str
) -> None:
    broken = copy.deepcopy(bench_as_if_cuda)
    change(broken)
    with pytest.raises(ValueError, match=message):
        gm.validate(part, broken)


def test_validate_memory() -> None:
    gm.validate("memory", memory_result())
    bad = memory_result()
    bad["peaks"]["lean expert step 16x512"]["measured"] = 0
    with pytest.raises(ValueError, match="positive int of bytes"):
        gm.validate("memory", bad)


def test_loader_says_plainly_when_nothing_is_stored(tmp_path: Path) -> None:
    assert gm.load_gpu_figures(tmp_path) == gm.NO_GPU_FIGURES == "no GPU figures stored"
    assert gm.gpu_summary(tmp_path) == gm.NO_GPU_FIGURES


def test_loader_returns_what_is_stored(tmp_path: Path, bench_as_if_cuda: dict[str, Any]) -> None:
    (tmp_path / gm.FILES["memory"]).write_text(json.dumps(memory_result()))
    (tmp_path / gm.FILES["bench-fp32"]).write_text(json.dumps(bench_as_if_cuda))
    figures = gm.load_gpu_figures(tmp_path)
    assert set(figures) == {"memory", "bench-fp32"}
    summary = gm.gpu_summary(tmp_path)
    assert "memory: lean expert step 16x512: 205.0 MB" in summary
    assert "bench-fp32: expert step" in summary and "of the float32 matmul line" in summary


def test_loader_refuses_a_broken_file(tmp_path: Path) -> None:
    (tmp_path / gm.FILES["memory"]).write_text(json.dumps({"peaks": {}}))
    with pytest.raises(ValueError, match="memory result is missing"):
        gm.load_gpu_figures(tmp_path)
