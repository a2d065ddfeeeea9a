"""`make gpu-measurements`: every CUDA figure the book would show, in one command.

On a machine with one GPU (about five minutes) this writes, beside the CPU
files in book/data:

* ``bench-cuda-seed-4x256.json``: the benchmark at the seed preset in fp32,
  with the machine's fp32 and bf16 matmul lines (`modularforge.measure.roofline`);
* ``bench-cuda-seed-4x256-bf16.json``: the same under bf16 autocast, measured
  against the bf16 line;
* ``lean-ladder-cuda-seed.json``: the lean ladder at 16 x 512, peaks from
  `torch.cuda.max_memory_allocated`, times interleaved;
* ``memory-cuda-seed.json``: the peak of the plain and the lean expert step,
  and where the memory snapshot went: a pickle written by
  `torch.cuda.memory._dump_snapshot` that https://pytorch.org/memory_viz opens
  (the book never loads it; it is for a reader's browser).

Without CUDA it refuses with a message that says so, and the chapter's loader
(`load_gpu_figures`) returns `NO_GPU_FIGURES` when no file is stored.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from modularforge.lean.step import LEAN_EXPERT
from modularforge.measure.bench import run_bench, write_result
from modularforge.measure.ladder import TRAININGS, lean_ladder, run_ladder
from modularforge.measure.peak import PLAIN, build_step, measure_lean_step, peak_budget
from modularforge.model.config import ModelConfig

#: What the chapter says when no GPU figure is stored.
NO_GPU_FIGURES = "no GPU figures stored"
#: Each part of the run and the file it writes in the output folder.
FILES = {
    "bench-fp32": "bench-cuda-seed-4x256.json",
    "bench-bf16": "bench-cuda-seed-4x256-bf16.json",
    "ladder": "lean-ladder-cuda-seed.json",
    "memory": "memory-cuda-seed.json",
}
PARTS = tuple(FILES)
SNAPSHOT = "memory-snapshot-cuda-seed-lean.pickle"
#: Keys every stored file of a kind must have (checked by `validate`).
REQUIRED = {
    "bench-fp32": ("command", "machine", "config", "results", "ratios", "roofline"),
    "bench-bf16": ("command", "machine", "config", "results", "ratios", "roofline"),
    "ladder": ("command", "machine", "config", "static_floor", "rungs", "peak_method"),
    "memory": ("command", "machine", "peaks", "snapshot"),
}


class CudaUnavailable(RuntimeError):
    """Raised when the GPU measurements are asked for on a machine without CUDA."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; sizes must be positive ints and parts a subset of `PARTS`."""
    parser = argparse.ArgumentParser(
        prog="python -m modularforge.measure.gpu_measurements", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out-dir", type=Path, default=Path("book/data"))
    parser.add_argument("--snapshot-dir", type=Path, default=Path("runs/gpu"))
    parser.add_argument("--preset", choices=["seed", "tiny"], default="seed")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    for name, default in (
        ("bench-batch", 4),
        ("bench-seq", 256),
        ("steps", 10),
        ("warmup", 2),
        ("ladder-batch", 16),
        ("ladder-seq", 512),
        ("rounds", 3),
    ):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args(argv)
    for name in ("bench_batch", "bench_seq", "steps", "ladder_batch", "ladder_seq", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces the run, every option spelled out."""
    parts = ["python", "-m", "modularforge.measure.gpu_measurements"]
    for key, value in sorted(vars(args).items()):
        flag = "--" + key.replace("_", "-")
        parts += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return shlex.join(parts)


def require_cuda(device: str) -> torch.device:
    """The CUDA device to measure on, or `CudaUnavailable` saying why there is none."""
    if not torch.cuda.is_available():
        raise CudaUnavailable(
            "the GPU measurements need a CUDA GPU, and torch.cuda.is_available() is False "
            f"here (torch {torch.__version__}, built for CUDA {torch.version.cuda}). Run "
            "`make gpu-measurements` on a machine with one; the CPU figures come from "
            "`make measurements`."
        )
    resolved = torch.device(device)
    if resolved.type != "cuda":
        raise CudaUnavailable(f"--device must be a CUDA device (cuda, cuda:0, ...), got {device}")
    return resolved


def _step_peak(config: ModelConfig, batch: int, seq: int, options: Any, optimizer: str, device):
    """Peak bytes of one expert step (after a warm-up step), from max_memory_allocated."""
    from modularforge.lean.step import lean_training_step

    model, opt, data = build_step(config, batch, seq, True, optimizer)
    model.to(device)
    lean_training_step(model, data, opt, options)
    return model, opt, data, measure_lean_step(model, data, opt, options).peak


def measure_memory(
    config: ModelConfig, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Peaks of the plain and lean expert steps, and a memory snapshot of the lean one."""
    from modularforge.lean.step import lean_training_step

    peaks = {}
    for label, batch, seq, options, optimizer in (
        ("plain expert step", args.bench_batch, args.bench_seq, PLAIN, "adamw"),
        ("plain expert step", args.ladder_batch, args.ladder_seq, PLAIN, "adamw"),
        ("lean expert step", args.ladder_batch, args.ladder_seq, LEAN_EXPERT, "adamw-fused"),
    ):
        model, opt, data, peak = _step_peak(config, batch, seq, options, optimizer, device)
        peaks[f"{label} {batch}x{seq}"] = {
            "measured": peak,
            "analytic": peak_budget(config, batch, seq, True, options, optimizer).peak,
        }
    # The lean step once more, recorded allocation by allocation.
    args.snapshot_dir.mkdir(parents=True, exist_ok=True)
    target = args.snapshot_dir / SNAPSHOT
    torch.cuda.memory._record_memory_history(max_entries=200_000)
    try:
        lean_training_step(model, data, opt, LEAN_EXPERT)
        torch.cuda.synchronize(device)
        handle, temporary = tempfile.mkstemp(dir=args.snapshot_dir, suffix=".tmp")
        os.close(handle)
        torch.cuda.memory._dump_snapshot(temporary)
        os.replace(temporary, target)
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    return {
        "peaks": peaks,
        "peak_method": "torch.cuda.max_memory_allocated",
        "snapshot": {
            "file": str(target),
            "bytes": target.stat().st_size,
            "step": f"lean expert step {args.ladder_batch}x{args.ladder_seq}",
            "opens_in": "https://pytorch.org/memory_viz",
        },
    }


def run(args: argparse.Namespace) -> dict[str, Path]:
    """Measure every part asked for and write its JSON; the files written, by part."""
    device = require_cuda(args.device)
    config = ModelConfig.preset(args.preset)
    command = command_line(args)
    written = {}
    for part in args.parts:
        print(f"== {part}", flush=True)
        if part in ("bench-fp32", "bench-bf16"):
            result = run_bench(
                config,
                args.bench_batch,
                args.bench_seq,
                args.steps,
                device=device,
                warmup=args.warmup,
                bf16=part == "bench-bf16",
            )
        elif part == "ladder":
            result = run_ladder(
                config,
                args.ladder_batch,
                args.ladder_seq,
                lean_ladder(),
                TRAININGS,
                rounds=args.rounds,
                device=device,
            )
        else:
            from modularforge.measure.bench import machine_info

            result = {"machine": machine_info(device), **measure_memory(config, args, device)}
        result = {"command": command, "preset": args.preset, "part": part, **result}
        validate(part, result)
        written[part] = args.out_dir / FILES[part]
        write_result(written[part], result)
    return written


def validate(part: str, result: dict[str, Any]) -> dict[str, Any]:
    """Check a GPU result has what the chapter reads; raise naming what is missing."""
    if part not in REQUIRED:
        raise ValueError(f"unknown part {part!r}; choose one of {PARTS}")
    missing = [key for key in REQUIRED[part] if key not in result]
    if missing:
        raise ValueError(f"{part} result is missing {missing}: regenerate it with the command")
    if part.startswith("bench"):
        roofline = result["roofline"]
        wanted = "bfloat16" if part == "bench-bf16" else "float32"
        if roofline.get("reference") != wanted or wanted not in roofline.get("lines", {}):
            raise ValueError(f"{part} must be measured against the {wanted} line")
        if not str(result["machine"].get("device", "")).startswith("cuda"):
            raise ValueError(f"{part} was not measured on CUDA: {result['machine'].get('device')}")
        for name, row in result["results"].items():
            if "achieved" not in row or row["memory"]["peak"] <= 0:
                raise ValueError(f"{part} row {name!r} lacks achieved FLOP/s or a peak")
    if part == "ladder" and result["peak_method"] != "torch.cuda.max_memory_allocated":
        raise ValueError(f"ladder peaks must come from CUDA, got {result['peak_method']!r}")
    if part == "memory":
        for label, peak in result["peaks"].items():
            if not isinstance(peak.get("measured"), int) or peak["measured"] <= 0:
                raise ValueError(f"memory peak {label!r} must be a positive int of bytes")
    return result


def load_gpu_figures(data_dir: str | Path = "book/data") -> dict[str, dict[str, Any]] | str:
    """The stored GPU results by part, validated; `NO_GPU_FIGURES` when none is stored.

    A part that is stored but malformed raises (a broken file must not pass as
    absent); parts that are absent are simply left out.
    """
    figures = {}
    for part, name in FILES.items():
        path = Path(data_dir) / name
        if path.is_file():
            figures[part] = validate(part, json.loads(path.read_text()))
    return figures or NO_GPU_FIGURES


def gpu_summary(data_dir: str | Path = "book/data") -> str:
    """One line per stored part for the chapter, or the plain `NO_GPU_FIGURES` sentence."""
    figures = load_gpu_figures(data_dir)
    if isinstance(figures, str):
        return figures
    lines = []
    for part, result in figures.items():
        if part.startswith("bench"):
            expert = result["results"]["expert"]
            lines.append(
                f"{part}: expert step {expert['min_s'] * 1e3:.1f} ms, "
                f"{expert['achieved']['min']['fraction_of_line']:.2f} of the "
                f"{result['roofline']['reference']} matmul line, "
                f"peak {expert['memory']['peak'] / 1e6:.1f} MB"
            )
        elif part == "ladder":
            last = result["rungs"]["expert"][-1]
            lines.append(
                f"ladder: {last['label']}: {last['peak'] / 1e6:.1f} MB, "
                f"{last.get('time_over_plain_median', float('nan')):.2f}x the plain step's time"
            )
        else:
            for label, peak in result["peaks"].items():
                lines.append(f"memory: {label}: {peak['measured'] / 1e6:.1f} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the measurements; 2 with a clear message where there is no CUDA."""
    args = parse_args(argv)
    try:
        written = run(args)
    except CudaUnavailable as error:
        print(f"gpu-measurements: {error}", file=sys.stderr)
        return 2
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
