"""Draw the three training phases as book/figures/three_phases.svg.

Phase 1 trains the trunk with temporary feed-forward blocks on the mixed corpus;
the trunk is frozen; phase 2 trains one expert per domain against it, each on
its own and in any order or in parallel; phase 3 trains a router that mixes the
frozen experts (optionally with a short mixing stage). The introduction and
chapter 8 show the figure. Run `python scripts/draw_three_phases.py` after
changing it; tests/book/test_three_phases_figure.py checks that the committed
file is what this script draws.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIGURE = REPO_ROOT / "book" / "figures" / "three_phases.svg"

TRAINS, FROZEN, EDGE = "#f4a259", "#c9d6ea", "#3d5a80"
DOMAINS = ("python", "english", "licenses")
BLOCK_W, BLOCK_H, GAP = 1.5, 0.34, 0.1


def _block(ax, x: float, y: float, width: float, label: str, trains: bool) -> None:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            width,
            BLOCK_H,
            boxstyle="round,pad=0,rounding_size=0.05",
            facecolor=TRAINS if trains else FROZEN,
            edgecolor=EDGE,
            linewidth=0.8,
        )
    )
    ax.text(x + width / 2, y + BLOCK_H / 2, label, ha="center", va="center", fontsize=7.5)


def _stack(ax, x: float, blocks: list) -> float:
    """Draw blocks bottom-up at x (left edge); each (label, trains), or a list of such
    drawn side by side in one row. Returns the y above the top block."""
    y = 0.0
    for block in blocks:
        parts = block if isinstance(block, list) else [block]
        width = (BLOCK_W - GAP / 2 * (len(parts) - 1)) / len(parts)
        for i, (label, trains) in enumerate(parts):
            _block(ax, x + i * (width + GAP / 2), y, width, label, trains)
        y += BLOCK_H + GAP
    return y


def _model(ffn, trunk_trains: bool, n_layers: int = 2) -> list:
    """A two-layer model's blocks; `ffn(layer)` gives the FFN slot's block(s)."""
    blocks: list = [("embedding + positions", trunk_trains)]
    for layer in range(n_layers):
        blocks += [(f"attention {layer}", trunk_trains), ffn(layer)]
    return [*blocks, ("norm + tied head", trunk_trains)]


def draw(out: Path = FIGURE) -> Path:
    """Write the figure as SVG (deterministic: no date, fixed ids, text kept as text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, Patch

    plt.rcParams["svg.hashsalt"] = "modularforge-three-phases"
    plt.rcParams["svg.fonttype"] = "none"
    fig, ax = plt.subplots(figsize=(9.6, 3.9))
    fig.subplots_adjust(0, 0.12, 1, 0.93)
    ax.axis("off")
    columns = [  # (x, title, blocks)
        (
            0.0,
            "phase 1: trunk + temporary\nFFNs, mixed corpus",
            _model(lambda i: (f"FFN {i}", True), True),
        ),
    ]
    x = BLOCK_W + 0.9
    for domain in DOMAINS:
        expert = _model(lambda i: (f"expert FFN {i}", True), False)
        columns.append((x, f"expert: {domain}", expert))
        x += BLOCK_W + 0.15
    x += 0.75
    mixture = _model(lambda i: [("router", True), ("3 experts", False)], False)
    columns.append((x, "phase 3: a router over\nthe frozen experts", mixture))
    top = 0.0
    for left, title, blocks in columns:
        top = _stack(ax, left, blocks)
        ax.text(left + BLOCK_W / 2, top + 0.05, title, ha="center", va="bottom", fontsize=8)
    phase2_left, phase2_right = columns[1][0], columns[3][0] + BLOCK_W
    ax.text(
        (phase2_left + phase2_right) / 2,
        top + 0.55,
        "phase 2: one expert per domain, trunk frozen (one at a time, or in parallel)",
        ha="center",
        va="bottom",
        fontsize=8,
        fontweight="bold",
    )
    middle = top / 2
    for start, end, label in (
        (BLOCK_W + 0.05, phase2_left - 0.05, "freeze"),
        (phase2_right + 0.05, columns[4][0] - 0.05, "assemble"),
    ):
        ax.add_patch(
            FancyArrowPatch(
                (start, middle), (end, middle), arrowstyle="-|>", mutation_scale=12, color=EDGE
            )
        )
        ax.text((start + end) / 2, middle + 0.08, label, ha="center", va="bottom", fontsize=7.5)
    ax.set_xlim(-0.15, columns[4][0] + BLOCK_W + 0.15)
    ax.set_ylim(-0.05, top + 0.95)
    fig.legend(
        handles=[
            Patch(facecolor=TRAINS, edgecolor=EDGE, label="trains in this phase"),
            Patch(facecolor=FROZEN, edgecolor=EDGE, label="frozen"),
        ],
        loc="lower center",
        ncol=2,
        frameon=False,
        fontsize=8,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="svg", metadata={"Date": None})
    plt.close(fig)
    return out


if __name__ == "__main__":
    print("wrote", draw())
