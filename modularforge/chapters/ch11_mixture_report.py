"""Reading a stored mixture study: the BTX-style table with tokens, FLOPs and parameters, and figures.

`ch11_mixture_study` trains and stores; this module only reads. Every figure comes from a
stored study (`read_study`), so chapter 11 runs in seconds. Studies stored before the
accounting existed carry no FLOPs; `arm_accounts` recomputes them from the stored
settings with `mixture_accounting.arm_accounting`, which is exact (it is analytic, and
tested against counted steps), so old and new studies are counted the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from modularforge.measure.mixture_accounting import arm_accounting
from modularforge.measure.paired import paired_difference
from modularforge.measure.spread import range_verdict, spread
from modularforge.measure.text_table import markdown_table

__all__ = [
    "ACCOUNT_KEYS",
    "arm_accounts",
    "ingredient_rows",
    "mean_matrix",
    "mean_routing",
    "plot_expert_domain_heatmap",
    "plot_mixing_memory",
    "plot_mixture_study",
    "plot_routing_fractions",
    "plot_share_curve",
    "share_curve",
    "study_table",
]

#: What `arm_accounting` gives each arm.
ACCOUNT_KEYS = ("phases", "tokens", "flops", "params", "active_params",
                "inference_flops_per_token")  # fmt: skip


def arm_accounts(study: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each arm's tokens/FLOPs per phase, parameters and inference FLOPs (stored or recomputed)."""
    out = {}
    for arm, entry in study["arms"].items():
        if all(key in entry for key in ACCOUNT_KEYS):
            out[arm] = {key: entry[key] for key in ACCOUNT_KEYS}
        else:
            out[arm] = arm_accounting(study["settings"], arm, entry.get("steps"))
    return out


def study_table(study: Mapping[str, Any], digits: int = 3) -> list[dict[str, Any]]:
    """One row per arm: mixed loss and perplexity (mean ± std over seeds), domain means, costs.

    Perplexity is exp(loss) per seed, then mean ± std of those, so both columns read the
    same seeds the same way.
    """
    accounts = arm_accounts(study)
    rows = []
    for arm, entry in study["arms"].items():
        row = {"arm": arm, "mixed (nats)": spread(entry["mixed"]).text(digits),
               "perplexity": spread([math.exp(v) for v in entry["mixed"]]).text(1)}  # fmt: skip
        for domain, values in entry["domains"].items():
            row[domain] = round(spread(values).mean, digits)
        account = accounts[arm]
        rows.append({**row, **{k: account[k] for k in ACCOUNT_KEYS if k != "phases"}})
    return rows


def mean_matrix(
    study: Mapping[str, Any], arm: str = "branched_oracle"
) -> dict[str, dict[str, float]]:
    """Mean over seeds of each expert's loss on each domain: {expert: {domain: nats}}."""
    per_seed = study["arms"][arm].get("matrix")
    if not per_seed:
        raise ValueError(f"arm {arm!r} of this study has no expert x domain matrix; rerun it")
    return {expert: {domain: spread([m[expert][domain] for m in per_seed]).mean
                     for domain in per_seed[0][expert]} for expert in per_seed[0]}  # fmt: skip


def mean_routing(study: Mapping[str, Any], arm: str = "mix_shared") -> dict[str, list[list[float]]]:
    """Mean over seeds of the routing fractions: {domain: [layer][expert]}."""
    per_seed = study["arms"][arm].get("routing")
    if not per_seed:
        raise ValueError(f"arm {arm!r} of this study has no routing fractions; rerun it")
    n = len(per_seed)
    return {domain: [[sum(r[domain][layer][e] for r in per_seed) / n
                      for e in range(len(rows[layer]))] for layer in range(len(rows))]
            for domain, rows in per_seed[0].items()}  # fmt: skip


def expert_names(study: Mapping[str, Any]) -> list[str]:
    """The mixing arms' experts, in router order: one per domain, then the generalist if any."""
    names = [f"{d} expert" for d in study["settings"]["domains"]]
    return names + (["generalist"] if study["settings"].get("generalist", True) else [])


def plot_expert_domain_heatmap(study: Mapping[str, Any], arm: str = "branched_oracle", ax=None):
    """Loss of each expert (rows; the phase-1 FFN as "generalist") on each domain (columns)."""
    import matplotlib.pyplot as plt

    matrix = mean_matrix(study, arm)
    domains = study["settings"]["domains"]
    rows = [[matrix[e][d] for d in domains] for e in matrix]
    rows.append([spread(study["arms"]["phase1"]["domains"][d]).mean for d in domains])
    labels = [f"{e} expert" for e in matrix] + ["generalist (phase-1 FFN)"]
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    image = ax.imshow(rows, cmap="viridis_r", aspect="auto")
    middle = (max(map(max, rows)) + min(map(min, rows))) / 2
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            best = value == min(r[j] for r in rows)  # the lowest loss of its domain
            ax.text(j, i, f"{value:.3f}" + (" *" if best else ""), ha="center", va="center",
                    color="white" if value > middle else "black", fontsize=9)  # fmt: skip
    ax.set_xticks(range(len(domains)), [f"{d} text" for d in domains])
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("validation domain")
    ax.set_ylabel("expert (branched, frozen trunk)")
    ax.set_title("Loss of each expert on each domain (nats, mean over seeds; * = best)")
    ax.figure.colorbar(image, ax=ax, label="validation loss (nats)")
    return ax


def plot_routing_fractions(study: Mapping[str, Any], arm: str = "mix_shared", axes=None):
    """Per layer, the share of each domain's tokens whose top-1 expert is each expert."""
    import matplotlib.pyplot as plt

    fractions = mean_routing(study, arm)
    domains = list(fractions)
    n_layers = len(fractions[domains[0]])
    names = expert_names(study)
    if axes is None:
        _, axes = plt.subplots(1, n_layers, figsize=(3.6 * n_layers, 3.4), layout="constrained",
                               sharey=True, squeeze=False)  # fmt: skip
        axes = axes[0]
    colours = plt.get_cmap("tab10").colors
    for layer, ax in enumerate(axes):
        bottom = [0.0] * len(domains)
        for e, name in enumerate(names):
            heights = [fractions[d][layer][e] for d in domains]
            ax.bar(domains, heights, bottom=bottom, color=colours[e], label=name)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("validation domain")
    axes[0].set_ylabel("share of the domain's tokens (top-1 choice)")
    axes[0].figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
                          ncol=len(names), fontsize=8)  # fmt: skip
    return axes


def plot_mixture_study(study: Mapping[str, Any], ax=None):
    """Each arm's mixed validation loss: one dot per seed, a bar for the mean, tokens in the label."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    accounts = arm_accounts(study)
    arms = list(study["arms"])
    for y, arm in enumerate(arms):
        values = study["arms"][arm]["mixed"]
        ax.scatter(values, [y] * len(values), color="tab:blue", s=25, zorder=3,
                   label="one seed" if y == 0 else None)  # fmt: skip
        mean = spread(values).mean
        ax.plot([mean, mean], [y - 0.3, y + 0.3], color="black", lw=2,
                label="mean over seeds" if y == 0 else None)  # fmt: skip
    dense = spread(study["arms"]["dense"]["mixed"]).mean
    ax.axvline(dense, color="grey", ls=":", label="dense mean")
    ax.set_yticks(range(len(arms)))
    ax.set_yticklabels([f"{arm}\n{accounts[arm]['tokens'] / 1e6:.2f}M tok, "
                        f"{accounts[arm]['flops'] / 1e12:.2f} TFLOP" for arm in arms],
                       fontsize=8)  # fmt: skip
    ax.invert_yaxis()
    ax.set_xlabel("validation loss, mean over domains (nats; lower is better)")
    ax.set_title("Mixed validation loss per arm")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    return ax


def plot_mixing_memory(memory: Mapping[str, Any], ax=None):
    """Peak memory of one step of each stage: phase 1, an expert step, each mixing choice."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 3.8), layout="constrained")
    labels = list(memory["rows"])
    peaks = [memory["rows"][label]["peak_bytes"] / 1e6 for label in labels]
    static = [memory["rows"][label]["static_bytes"] / 1e6 for label in labels]
    y = range(len(labels))
    ax.barh(y, peaks, color="tab:orange", label="peak of the step")
    ax.barh(y, static, color="tab:blue", label="weights + grads + AdamW state")
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("memory (MB, 10^6 bytes)")
    ax.set_title(f"One training step, {memory['preset']} preset, batch "
                 f"{memory['batch_size']} x {memory['seq_len']}")  # fmt: skip
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2)  # below the bars
    return ax


def ingredient_rows(
    steps: list[tuple[str, tuple[Mapping[str, Any], str], tuple[Mapping[str, Any], str]]],
) -> list[dict[str, Any]]:
    """How much of the gap to dense each ingredient closes: one row per (label, before, after).

    `before` and `after` are (study, arm). The gap of a system is its mean mixed loss minus
    the dense mean *of its own study* (every study trains or reuses the same dense arm,
    so this is one yardstick). `closed` = gap before - gap after, in nats (positive: the
    ingredient helped), with the range rule's verdict on after against before.
    """
    rows = []
    for label, (study_a, arm_a), (study_b, arm_b) in steps:
        a, b = spread(study_a["arms"][arm_a]["mixed"]), spread(study_b["arms"][arm_b]["mixed"])
        gap_a = a.mean - spread(study_a["arms"]["dense"]["mixed"]).mean
        gap_b = b.mean - spread(study_b["arms"]["dense"]["mixed"]).mean
        rows.append({"ingredient": label, "before": arm_a, "after": arm_b,
                     "gap before": gap_a, "gap after": gap_b, "closed": gap_a - gap_b,
                     "verdict": range_verdict(b, a)})  # fmt: skip
    return rows


def share_curve(
    studies: Mapping[str, Mapping[str, Any]],
    arms: tuple[str, ...] = ("branched_oracle", "mix_shared"),
) -> dict[str, list[tuple[float, float, float]]]:
    """Per arm, (phase-1 share %, mean, std) of the mixed loss, sorted by share.

    Only studies that differ from each other in the split alone belong on one curve,
    so the caller passes studies with the same routing and mixing steps.
    """
    curve: dict[str, list[tuple[float, float, float]]] = {arm: [] for arm in arms}
    for study in studies.values():
        settings = study["settings"]
        share = 100 * settings["phase1_steps"] / settings["budget_steps"]
        for arm in arms:
            values = spread(study["arms"][arm]["mixed"])
            curve[arm].append((share, values.mean, values.std))
    return {arm: sorted(points) for arm, points in curve.items()}


def plot_share_curve(studies: Mapping[str, Mapping[str, Any]], ax=None):
    """Mixed loss against the share of the budget spent on phase 1, dense as a band."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.8, 3.8), layout="constrained")
    for arm, points in share_curve(studies).items():
        x, y, err = zip(*points, strict=True)
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=arm)
    dense = spread(next(iter(studies.values()))["arms"]["dense"]["mixed"])
    ax.axhspan(dense.mean - dense.std, dense.mean + dense.std, color="grey", alpha=0.3,
               label="dense (mean ± std)")  # fmt: skip
    ax.set_xlabel("share of the token budget spent on phase 1 (%)")
    ax.set_ylabel("mixed validation loss (nats)")
    ax.set_title("Where the split of the budget puts the modular system")
    ax.legend(fontsize=8, loc="upper right")
    return ax


#: The comparisons the chapter's paired table makes: (arm, against, what it asks).
PAIRED_COMPARISONS = (
    ("dense_eqflops", "dense", "calibration: dense on {share:.0f} % of the steps (known worse)"),
    ("mix_shared", "dense", "the best mixture, at equal tokens"),
    ("mix_shared", "dense_eqflops", "the best mixture, at equal FLOPs"),
    ("branched_oracle", "dense_eqflops", "branched experts, label-routed, at equal FLOPs"),
    ("branched_oracle", "phase1", "what branched experts add to phase 1"),
    ("mix_shared", "phase1", "what the deployable mixture adds to phase 1"),
    ("mix_shared", "mix_router", "mixing that trains attention, against routers alone"),
)
#: A verdict on a loss difference (lower is better), in words.
LOSS_READING = {"lower": "better", "higher": "worse", "inconclusive": "not settled"}


def paired_table(study: Mapping[str, Any]) -> str:
    """The headline comparisons as per-seed paired differences, beside the range rule.

    A Markdown table: mean difference in mixed validation loss (nats) with its 95 %
    interval, what the interval says, and what the unpaired range rule says about the
    same two arms. Loss is lower-is-better, so "higher" reads "worse".
    """
    arms = study["arms"]
    rows = []
    for arm, baseline, question in PAIRED_COMPARISONS:
        if arm not in arms or baseline not in arms:
            continue
        pair = paired_difference(arms[arm]["mixed"], arms[baseline]["mixed"])
        unpaired = range_verdict(arms[arm]["mixed"], arms[baseline]["mixed"])
        if "{share" in question:  # the calibration row: how much shorter the known-worse arm ran
            question = question.format(share=100 * arms[arm]["steps"] / arms[baseline]["steps"])
        rows.append(
            [f"{question}: `{arm}` − `{baseline}`", pair.describe()]
            + [LOSS_READING[pair.verdict], LOSS_READING[unpaired]]
        )
    header = ["comparison", "arm − baseline, nats [95 % interval]", "paired verdict", "range rule"]
    return markdown_table(header, rows, right=[1])
