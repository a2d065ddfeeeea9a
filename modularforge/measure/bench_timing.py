"""Step times from `python -m modularforge bench`, read against the FLOPs.

A shared machine makes single step times unreliable, so the comparisons here
lean on the benchmark's interleaving: round i steps every configuration in
turn, and a ratio taken within a round cancels most of the load that other
processes put on the machine. The spread of those per-round ratios is what the
verdicts read, in the spirit of `modularforge.measure.spread`: a difference the noise
covers is not called.
"""

from __future__ import annotations

import statistics
from typing import Any


def paired_time_ratios(result: dict[str, Any], a: str = "expert", b: str = "full") -> list[float]:
    """`a`'s step time over `b`'s, round by round.

    The benchmark interleaves the configurations (round i steps every one of
    them in turn), so a burst of load from another process hits round i of
    every arm alike. A ratio per round cancels most of that load; the spread of
    the ratios over the rounds is then the noise left in the comparison.
    """
    times_a = result["results"][a]["step_times_s"]
    times_b = result["results"][b]["step_times_s"]
    if not times_a or len(times_a) != len(times_b):
        raise ValueError(
            f"{a} and {b} need the same, non-zero number of timed steps "
            f"(got {len(times_a)} and {len(times_b)}): re-run the bench with --steps >= 1"
        )
    return [x / y for x, y in zip(times_a, times_b, strict=True)]


def time_vs_flops(result: dict[str, Any], a: str = "expert", b: str = "full") -> dict[str, Any]:
    """Does `a`/`b` step time follow `a`/`b` FLOPs? Both ratios, the gap, and the noise.

    The FLOPs count attention on both sides (see `modularforge.measure.flops`). `gap`
    is the ratio of the fastest steps minus the FLOP ratio (negative: `a` is
    faster than its FLOPs predict); `low`/`high` bound the per-round ratios
    (`paired_time_ratios`), and `covers` says whether they include the FLOP
    ratio, i.e. whether this machine's noise can tell the two apart.
    """
    rows = result["results"]
    paired = paired_time_ratios(result, a, b)
    flop_ratio = rows[a]["flops"] / rows[b]["flops"]
    min_ratio = rows[a]["min_s"] / rows[b]["min_s"]
    low, high = min(paired), max(paired)
    return {
        "flop_ratio": flop_ratio,
        "min_ratio": min_ratio,
        "median_ratio": rows[a]["median_s"] / rows[b]["median_s"],
        "gap": min_ratio - flop_ratio,
        "paired": paired,
        "paired_median": statistics.median(paired),
        "low": low,
        "high": high,
        "covers": low <= flop_ratio <= high,
    }


def time_verdict(result: dict[str, Any], a: str = "expert", b: str = "full") -> str:
    """The step-time comparison of `a` with `b` in words, against their FLOP ratio."""
    check = time_vs_flops(result, a, b)
    where = (
        "include the FLOP ratio"
        if check["covers"]
        else ("lie below the FLOP ratio" if check["high"] < check["flop_ratio"] else
              "lie above the FLOP ratio")
    )  # fmt: skip
    return (
        f"per-round ratios {check['low']:.2f}–{check['high']:.2f} "
        f"(median {check['paired_median']:.3f}) {where} of {check['flop_ratio']:.3f}"
    )


def time_verdict_label(result: dict[str, Any], a: str = "expert", b: str = "full") -> str:
    """A verdict on "saved FLOPs become saved seconds" from the per-round ratios.

    * "holds": every round was faster and the rounds' range includes the FLOP
      ratio (time in proportion to FLOPs, within this machine's noise);
    * "holds, beyond the FLOPs": every round faster than the FLOP ratio predicts;
    * "holds in part": every round faster, but not as much as the FLOPs predict;
    * "inconclusive": some round was not faster at all.
    """
    check = time_vs_flops(result, a, b)
    if check["high"] >= 1:
        return "inconclusive"
    if check["covers"]:
        return "holds"
    return "holds, beyond the FLOPs" if check["high"] < check["flop_ratio"] else "holds in part"


def speedup_words(ratio: float) -> str:
    """A ratio of throughputs as words: "1.68x the throughput" or "0.91x (slower)"."""
    return f"{ratio:.2f}x the throughput" + (" (slower)" if ratio < 1 else "")


#: The benchmark's arms compared one difference at a time (a, b): freezing alone,
#: the math attention path, trunk dropout, and the modular structure against a
#: plain GPT that also trains with dropout on the path PyTorch picks.
ONE_DIFFERENCE_PAIRS = (
    ("expert", "full"),
    ("full-math", "full"),
    ("full-dropout", "full-math"),
    ("full-dropout", "baseline"),
)


def time_direction(result: dict[str, Any], a: str, b: str) -> str:
    """Whether `a` steps faster or slower than `b`, by the per-round ratios.

    "faster" only when every round's ratio is below 1, "slower" only when every
    one is above 1; otherwise the machine's noise covers the difference and the
    answer is "inconclusive".
    """
    paired = paired_time_ratios(result, a, b)
    if max(paired) < 1:
        return "faster"
    if min(paired) > 1:
        return "slower"
    return "inconclusive"


def pair_time_rows(
    result: dict[str, Any], pairs: tuple[tuple[str, str], ...] = ONE_DIFFERENCE_PAIRS
) -> list[dict[str, Any]]:
    """One row per pair: FLOP ratio, step-time ratios (fastest, per round) and the direction."""
    rows = []
    for a, b in pairs:
        check = time_vs_flops(result, a, b)
        rows.append(
            {
                "a / b": f"{a} / {b}",
                "FLOPs": check["flop_ratio"],
                "fastest": check["min_ratio"],
                "rounds: low": check["low"],
                "median": check["paired_median"],
                "high": check["high"],
                "a is": time_direction(result, a, b),
            }
        )
    return rows


#: What each `time_verdict_label` means, as a sentence for the page.
VERDICT_MEANINGS = {
    "holds": "every round saved time, and the rounds' range includes the FLOP ratio: "
    "time follows the FLOPs within this machine's noise",
    "holds, beyond the FLOPs": "every round saved more time than the FLOPs predict",
    "holds in part": "every round saved time, but less than the FLOPs predict",
    "inconclusive": "not every round saved time: this machine's noise covers the difference",
}
#: What each `time_direction` means for arm a against arm b, as a phrase for the page.
DIRECTION_MEANINGS = {
    "faster": "faster in every round",
    "slower": "slower in every round",
    "inconclusive": "inconclusive (the rounds disagree on the direction)",
}
