"""The new-domain frontier: what each arm gains on the new domain against what it forgets.

One small marker per seed, one large marker per arm at the mean, with the gain's 95 %
interval as a horizontal bar. Up is worse (forgetting), right is better (gain), so the
frontier is the lower-right edge. The legend sits below the axes, never on the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from modularforge.measure.paired import paired_difference

__all__ = ["ARM_STYLE", "plot_gain_vs_forgetting"]

#: Colour and marker per arm: dense arms in warm colours, frozen-trunk experts in blues.
ARM_STYLE = {
    "A_finetune": ("#d62728", "o"),
    "B_replay": ("#ff7f0e", "s"),
    "C_expert": ("#1f77b4", "D"),
    "C_expert_2x": ("#17becf", "^"),
    "C_from_python": ("#9467bd", "v"),
    "D_branch": ("#2ca02c", "P"),
}


def plot_gain_vs_forgetting(
    points: Mapping[str, Mapping[str, Sequence[float]]],
    labels: Mapping[str, str],
    ax: Axes | None = None,
) -> Axes:
    """Scatter forgetting (y) against new-domain gain (x): per seed and per arm mean."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.6), dpi=150)
    for arm, values in points.items():
        colour, marker = ARM_STYLE.get(arm, ("#7f7f7f", "o"))
        gain, forget = list(values["gain"]), list(values["forgetting"])
        ax.scatter(gain, forget, s=18, color=colour, marker=marker, alpha=0.45, linewidths=0)
        interval = paired_difference(gain, [0.0] * len(gain))
        mean_forget = sum(forget) / len(forget)
        ax.errorbar(interval.mean, mean_forget,
                    xerr=[[interval.mean - interval.low], [interval.high - interval.mean]],
                    color=colour, marker=marker, markersize=9, capsize=3,
                    markeredgecolor="black", label=labels.get(arm, arm))  # fmt: skip
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("gain on the new domain (nats; right is better)")
    ax.set_ylabel("forgetting of the old domains\n(nats; up is worse)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1, fontsize=9, frameon=False)
    return ax
