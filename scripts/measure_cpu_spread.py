"""Measure how far each notebook's trained numbers move on another CPU.

Runs every given notebook again under simulated CPUs and thread counts, and
compares each code cell's text outputs with the stored ones:

- a cell whose metadata names ``cpu_tolerance`` gets, per simulated CPU, the
  largest deviation of any of its numbers (absolute or relative, as the cell
  says); its words must not change at all;
- any other cell must come out identical (after the sanitizers nbval uses), or
  it is reported: it prints a number that depends on the CPU without saying so.

A simulated CPU is this machine with its vector kernels capped: ATen's by
``ATEN_CPU_CAPABILITY``, MKL's by ``MKL_ENABLE_INSTRUCTIONS`` and oneDNN's by
``ONEDNN_MAX_CPU_ISA``. The thread count is the chapters' own knob,
``MODULARFORGE_NUM_THREADS``. The result, with each key's tolerance (MARGIN times
its largest spread), goes to ``book/data/cpu-spread.json``, which the chapters'
notes and the notebook test read.

Usage: python scripts/measure_cpu_spread.py [--out FILE] [--configs NAME,...] NOTEBOOK...
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from modularforge.files.atomic import atomic_write_bytes
from modularforge.measure.reproducibility import (
    MARGIN,
    SPREAD_FILE,
    Tolerance,
    compare_text,
    load_spread,
    split_numbers,
    tolerance_from_spread,
)

NUMBER_KEYS = "cpu_tolerance"  # what `prose` writes into a display's metadata
#: A key's scale, for numbers that reach it only through prose: from the previous file.
try:
    TOLERANCE_SCALES = {key: entry["scale"] for key, entry in load_spread().items()}
except (FileNotFoundError, ValueError):
    TOLERANCE_SCALES = {}

REPO = Path(__file__).resolve().parent.parent
SANITIZE_CFG = REPO / "tests" / "nbval_sanitize.cfg"
TEXT_FIELDS = (
    "text/plain",
    "text/markdown",
    "text/html",
    "application/papermill.record/text/plain",
)

AVX2 = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
PLAIN = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
}
#: name -> environment ("plain": no vector extensions beyond SSE4.2). The stored outputs are the reference: this machine, 1 thread.
CONFIGS: dict[str, dict[str, str]] = {
    "native-2threads": {"MODULARFORGE_NUM_THREADS": "2"},
    "avx2-1thread": {**AVX2, "MODULARFORGE_NUM_THREADS": "1"},
    "avx2-2threads": {**AVX2, "MODULARFORGE_NUM_THREADS": "2"},
    "plain-1thread": {**PLAIN, "MODULARFORGE_NUM_THREADS": "1"},
    "plain-2threads": {**PLAIN, "MODULARFORGE_NUM_THREADS": "2"},
}


def sanitizers() -> list[tuple[re.Pattern[str], str]]:
    """nbval's sanitizers from tests/nbval_sanitize.cfg, applied the same way."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(SANITIZE_CFG, encoding="utf-8")
    return [(re.compile(parser[s]["regex"]), parser[s]["replace"]) for s in parser.sections()]


def sanitize(text: str, patterns: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, replacement in patterns:
        text = pattern.sub(replacement, text)
    return text


def prose_outputs(cell: dict) -> list[tuple[str, list]]:
    """(Markdown, per-number tolerance keys) of each `prose` display in a cell."""
    found = []
    for output in cell.get("outputs", []):
        keys = output.get("metadata", {}).get(NUMBER_KEYS)
        if isinstance(keys, list):
            text = output["data"]["text/markdown"]
            found.append(("".join(text) if isinstance(text, list) else text, keys))
    return found


def cell_texts(cell: dict) -> list[str]:
    """A code cell's text outputs other than `prose` displays, streams merged per name."""
    texts: list[str] = []
    streams: dict[str, str] = {}
    for output in cell.get("outputs", []):
        if isinstance(output.get("metadata", {}).get(NUMBER_KEYS), list):
            continue
        if output["output_type"] == "stream":
            streams[output["name"]] = streams.get(output["name"], "") + "".join(output["text"])
            continue
        for field in TEXT_FIELDS:
            if field in output.get("data", {}):
                value = output["data"][field]
                texts.append("".join(value) if isinstance(value, list) else value)
    return [*streams.values(), *texts]


def execute(notebook: Path, env: dict[str, str], out: Path) -> float:
    """Run `notebook` in a fresh kernel with `env` added; store the result at `out`."""
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter",
            "execute",
            "--timeout=1800",
            f"--output={out}",
            str(notebook),
        ],
        check=True,
        env={**os.environ, **env},
        cwd=notebook.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return time.perf_counter() - start


def ignored_by_nbval(cell: dict) -> bool:
    """nbval does not compare this cell's output (a comment marker or a tag says so)."""
    tags = cell.get("metadata", {}).get("tags", [])
    lines = [line.strip() for line in "".join(cell["source"]).splitlines()]
    return "nbval-ignore-output" in tags or "# NBVAL_IGNORE_OUTPUT" in lines


def compare_notebooks(stored: dict, fresh: dict, patterns, name: str) -> tuple[dict, list[str]]:
    """Per tolerance key, the worst deviation; and the cells that changed without a key."""
    spreads: dict[str, dict] = {}
    problems: list[str] = []
    code = [c for c in stored["cells"] if c["cell_type"] == "code"]
    fresh_code = [c for c in fresh["cells"] if c["cell_type"] == "code"]
    for index, (old, new) in enumerate(zip(code, fresh_code, strict=True)):
        old_texts = [sanitize(t, patterns) for t in cell_texts(old)]
        new_texts = [sanitize(t, patterns) for t in cell_texts(new)]
        spec = old.get("metadata", {}).get("cpu_tolerance")
        where = f"{name} code cell {index}"
        if ignored_by_nbval(old):
            continue
        old_prose, new_prose = prose_outputs(old), prose_outputs(new)
        if len(old_prose) != len(new_prose):
            problems.append(f"{where}: {len(new_prose)} prose displays, stored {len(old_prose)}")
        for (a, keys), (b, _) in zip(old_prose, new_prose, strict=False):
            a, b = sanitize(a, patterns), sanitize(b, patterns)
            ref, obs = split_numbers(a), split_numbers(b)
            if ref.skeleton != obs.skeleton or len(ref.numbers) != len(obs.numbers):
                problems.append(f"{where}: prose words changed")
                continue
            for key, x, y in zip(keys, ref.numbers, obs.numbers, strict=True):
                if key is None:
                    if x != y:
                        problems.append(f"{where}: exact prose number {x:g} became {y:g}")
                    continue
                scale = TOLERANCE_SCALES.get(key, "abs")
                entry = spreads.setdefault(key, {"scale": scale, "cells": {}})
                worst = Tolerance(scale, 1e300).deviation(x, y)
                entry["cells"][where] = max(entry["cells"].get(where, 0.0), worst)
        if len(old_texts) != len(new_texts):
            problems.append(f"{where}: {len(new_texts)} text outputs, stored {len(old_texts)}")
            continue
        if spec is None:
            if old_texts != new_texts:
                problems.append(f"{where}: output changed and the cell names no cpu_tolerance")
            continue
        probe = Tolerance(spec["scale"], 1e300)  # only the deviation is wanted here
        entry = spreads.setdefault(spec["key"], {"scale": spec["scale"], "cells": {}})
        worst = 0.0
        for a, b in zip(old_texts, new_texts, strict=True):
            result = compare_text(a, b, probe)
            if not result.same_words:
                problems.append(f"{where}: words around the numbers changed")
            else:
                worst = max(worst, result.worst)
        entry["cells"][where] = worst
    return spreads, problems


def merged_keys(before: dict[str, dict], fresh: dict[str, dict], measured: set[str]) -> dict:
    """The fresh keys, plus each earlier key that belongs to a notebook not measured now.

    A key measured now replaces its earlier record; an earlier key whose cells all
    lie in the notebooks measured now, and that this run did not find, is gone
    from those notebooks and is dropped.
    """
    merged = dict(fresh)
    for key, record in before.items():
        notebooks = {cell.split(" code cell")[0] for cell in record.get("per_cell", {})}
        if key not in merged and (notebooks - measured or not notebooks):
            merged[key] = record
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=SPREAD_FILE)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks run at once")
    parser.add_argument("--keep", type=Path, help="also keep each executed notebook in this folder")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the keys of notebooks not measured now from the existing --out file",
    )
    args = parser.parse_args(argv)
    configs = {name: CONFIGS[name] for name in args.configs.split(",")}
    patterns = sanitizers()
    keys: dict[str, dict] = {}
    problems: list[str] = []
    seconds: dict[str, dict[str, float]] = {}
    jobs = [(notebook, config) for notebook in args.notebooks for config in configs]

    def run(job: tuple[Path, str]) -> tuple[Path, str, float, dict]:
        notebook, config = job
        out = Path(scratch) / f"{notebook.stem}-{config}.ipynb"
        took = execute(notebook.resolve(), configs[config], out)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            (args.keep / out.name).write_bytes(out.read_bytes())
        return notebook, config, took, json.loads(out.read_text(encoding="utf-8"))

    # Kernels that use n threads each share the machine's cores: two 2-thread kernels on
    # 2 cores spin-wait on each other for minutes, so several at once only for 1 thread.
    single = [job for job in jobs if configs[job[1]].get("MODULARFORGE_NUM_THREADS", "1") == "1"]
    multi = [job for job in jobs if job not in single]
    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(args.jobs) as pool:
        results = [*pool.map(run, single), *map(run, multi)]
        for notebook, config, took, fresh in results:
            stored = json.loads(notebook.read_text(encoding="utf-8"))
            seconds.setdefault(notebook.name, {})[config] = round(took, 1)
            spreads, found = compare_notebooks(stored, fresh, patterns, notebook.name)
            problems += [f"[{config}] {p}" for p in found]
            for key, entry in spreads.items():
                record = keys.setdefault(
                    key, {"scale": entry["scale"], "per_config": {}, "per_cell": {}}
                )
                spread = max(entry["cells"].values())
                record["per_config"][config] = max(record["per_config"].get(config, 0.0), spread)
                for cell, worst in entry["cells"].items():
                    record["per_cell"][cell] = max(record["per_cell"].get(cell, 0.0), worst)
            print(f"{notebook.name} [{config}] {took:.0f} s, {len(found)} problem(s)", flush=True)
    for record in keys.values():
        record["max_spread"] = max(record["per_config"].values())
        record["tolerance"] = tolerance_from_spread(record["max_spread"], record["scale"]).value
    if args.merge and args.out.exists():
        measured = {notebook.name for notebook in args.notebooks}
        before = json.loads(args.out.read_text(encoding="utf-8"))
        for name, times in before.get("seconds", {}).items():
            seconds.setdefault(name, times)
        keys = merged_keys(before["keys"], keys, measured)
    result = {
        "what": "largest deviation of a trained number from the stored notebook output, per "
        "tolerance key and simulated CPU; tolerance = margin x the largest, rounded up",
        "margin": MARGIN,
        "configs": configs,
        "reference": "this machine's own kernels, 1 thread (the stored outputs)",
        "command": "python scripts/measure_cpu_spread.py "
        + ("--merge " if args.merge else "")
        + " ".join(str(n) for n in args.notebooks),
        "seconds": seconds,
        "keys": dict(sorted(keys.items())),
        "problems": problems,
    }
    text = json.dumps(result, indent=1, sort_keys=False) + "\n"
    atomic_write_bytes(args.out, text.encode("utf-8"))
    for problem in problems:
        print("PROBLEM", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
