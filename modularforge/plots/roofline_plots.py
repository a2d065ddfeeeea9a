"""The Measured chapter's roofline: each configuration's FLOP/s against the machine's line.

Reads a `python -m modularforge bench` JSON (which records the line since the
roofline was added to the bench); the chapter calls these, so it holds no logic.
"""

from __future__ import annotations

import textwrap
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from modularforge.plots.memory_plots import format_table

#: Colours of the machine's lines by dtype.
LINE_COLOURS = {"float32": "#d62728", "bfloat16": "#9467bd"}
GIGA = 1e9


def check_roofline(result: dict[str, Any]) -> dict[str, Any]:
    """The result's `roofline` section, or a clear error if the JSON predates it."""
    roofline = result.get("roofline")
    if not roofline or roofline.get("reference") not in roofline.get("lines", {}):
        raise ValueError(
            "this bench result records no machine matmul line (it predates the roofline); "
            "regenerate it with the command it records (`make measurements` does all)"
        )
    return roofline


def roofline_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per configuration: FLOPs, best and median step, achieved GFLOP/s, fraction."""
    roofline = check_roofline(result)
    line = roofline["lines"][roofline["reference"]]["flops_per_s"]
    rows = []
    for name, row in result["results"].items():
        achieved = row["achieved"]
        rows.append(
            {
                "configuration": name,
                "GFLOP per step": row["flops"] / GIGA,
                "min s": row["min_s"],
                "GFLOP/s (min)": achieved["min"]["flops_per_s"] / GIGA,
                "of line (min)": achieved["min"]["fraction_of_line"],
                "of line (median)": achieved["median"]["fraction_of_line"],
            }
        )
    rows.append(
        {
            "configuration": f"machine's {roofline['reference']} line",
            "GFLOP per step": None,
            "min s": None,
            "GFLOP/s (min)": line / GIGA,
            "of line (min)": 1.0,
            "of line (median)": None,
        }
    )
    return rows


def roofline_table(result: dict[str, Any]) -> str:
    """`roofline_rows` as a plain-text table."""
    return format_table(
        roofline_rows(result),
        decimals={"min s": 3, "of line (min)": 2, "of line (median)": 2},
    )


def plot_roofline(result: dict[str, Any], ax: Axes | None = None) -> Axes:
    """Bars: each configuration's achieved GFLOP/s (best step; a dot marks the median step).

    Horizontal lines: the machine's matmul throughput on the model's own Linear
    shapes (solid, the reference dtype; dashed, its best single matmul). The
    bar's label is its fraction of the solid line.
    """
    roofline = check_roofline(result)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.2))
    names = list(result["results"])
    best = [result["results"][n]["achieved"]["min"]["flops_per_s"] / GIGA for n in names]
    median = [result["results"][n]["achieved"]["median"]["flops_per_s"] / GIGA for n in names]
    positions = range(len(names))
    bars = ax.bar(positions, best, color="#4c72b0", label="achieved (best step)")
    ax.scatter(positions, median, color="black", zorder=3, s=18, label="achieved (median step)")
    top = max(best)
    for dtype, line in roofline["lines"].items():
        value = line["flops_per_s"] / GIGA
        colour = LINE_COLOURS.get(dtype, "grey")
        ax.axhline(value, color=colour, lw=2, label=f"machine: {dtype} matmul line, model shapes")
        top = max(top, value)
        if dtype == roofline["reference"]:
            single = line["best_matmul_flops_per_s"] / GIGA
            ax.axhline(single, color=colour, lw=1, ls="--", label=f"best single {dtype} matmul")
            top = max(top, single)
            for bar, name in zip(bars, names, strict=True):
                fraction = result["results"][name]["achieved"]["min"]["fraction_of_line"]
                ax.annotate(
                    f"{fraction:.2f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=9,
                )
    ax.set_xticks(list(positions), names, rotation=15)
    ax.set_xlabel("configuration (label: fraction of the machine's line)")
    ax.set_ylabel("throughput (GFLOP/s, 10^9 FLOP per second)")
    ax.set_ylim(0, top * 1.45)  # room above the lines for the legend
    ax.legend(loc="upper center", ncol=2, fontsize=8, frameon=False)
    machine = result.get("machine", {}).get("device_name", "this machine")
    ax.set_title(
        f"Training steps against the machine's matmul throughput ({machine}, "
        f"batch {result['batch_size']}x{result['seq_len']})",
        fontsize=10,
    )
    return ax


def plot_ladder_times(
    result: dict[str, Any], training: str = "expert", target: float = 1.25, ax: Axes | None = None
) -> Axes:
    """Each lean-ladder rung's step time over the plain step's (interleaved medians).

    Bars: median ratio; dots: ratio of the minimums; dashed line: `target`
    (the lean step's time goal, 1.25x: `bench_plots.LEAN_GOAL_TIME_RATIO`). Needs a
    ladder JSON with interleaved times.
    """
    rungs = result["rungs"][training]
    if any("time_over_plain_median" not in rung for rung in rungs):
        raise ValueError(
            "this ladder result has no interleaved times (it predates them); regenerate it "
            "with the command it records"
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 4))
    positions = range(len(rungs))
    median = [rung["time_over_plain_median"] for rung in rungs]
    minimum = [rung["time_over_plain_min"] for rung in rungs]
    ax.bar(positions, median, color="#4c72b0", label="median step / plain median")
    ax.scatter(positions, minimum, color="black", zorder=3, s=18, label="min step / plain min")
    ax.axhline(target, color="#d62728", ls="--", lw=1, label=f"target: {target:g}x")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(list(positions), [textwrap.fill(rung["label"], 16) for rung in rungs], fontsize=8)
    ax.set_xlabel("lean ladder rung (savers added left to right)")
    ax.set_ylabel("step time / plain step time (ratio)")
    ax.set_ylim(0, max(median + minimum + [target]) * 1.3)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_title(
        f"{training} training, {result['batch_size']}x{result['seq_len']} tokens per step, "
        f"{result.get('rounds', '?')} interleaved rounds",
        fontsize=10,
    )
    return ax
