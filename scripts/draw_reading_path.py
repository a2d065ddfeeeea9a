"""Draw the book's reading path: which chapters a chapter builds on.

The introduction shows ``book/figures/reading_path.svg``. It is generated here,
from the dependency list below, so the figure and the list can't drift apart.
Regenerate it after adding a chapter or changing what a chapter builds on::

    .venv/bin/python scripts/draw_reading_path.py

A chapter listed here whose file does not exist yet (it is written later) is left
out of the figure, together with its arrows, and the script says so. An arrow
``A -> B`` means "read A before B". Arrows implied by others (A -> B -> C makes
A -> C redundant) are not drawn, so the figure stays readable; the full list is
still what ``tests/book/test_reading_path.py`` checks.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "book" / "figures" / "reading_path.svg"


@dataclass(frozen=True)
class Chapter:
    """One page of the book as the figure shows it."""

    file: str  # the _toc.yml entry, e.g. "book/01_architecture"
    label: str  # the number shown in the box
    title: str  # a short title (the page's own title is longer)
    needs: tuple[str, ...] = ()  # files of the chapters to read first


CHAPTERS: tuple[Chapter, ...] = (
    Chapter("book/00_quickstart", "0", "Quickstart"),
    Chapter(
        "book/00b_should_you_train_in_parts",
        "0b",
        "Should you train in parts?",
        ("book/00_quickstart",),
    ),
    Chapter("book/01_architecture", "1", "Architecture", ("book/00_quickstart",)),
    Chapter("book/02_memory_budget", "2", "The memory budget", ("book/01_architecture",)),
    Chapter("book/03_forward_interleaving", "3", "Forward interleaving", ("book/01_architecture",)),
    Chapter(
        "book/04_expert_saving", "4", "Saving only the expert", ("book/03_forward_interleaving",)
    ),
    Chapter("book/05_qa", "5", "Questions and answers", ("book/03_forward_interleaving",)),
    Chapter(
        "book/06_measured",
        "6",
        "Measured",
        ("book/02_memory_budget", "book/03_forward_interleaving"),
    ),
    Chapter(
        "book/06b_making_205_mb_real",
        "6b",
        "Making 205 MB real",
        ("book/02_memory_budget", "book/06_measured"),
    ),
    Chapter(
        "book/08_assembling_the_mixture",
        "8",
        "Assembling the mixture",
        ("book/02_memory_budget", "book/03_forward_interleaving", "book/04_expert_saving"),
    ),
    Chapter(
        "book/09_did_the_experts_specialize",
        "9",
        "Did the experts specialize?",
        ("book/08_assembling_the_mixture",),
    ),
    Chapter(
        "book/11_the_mixture_that_pays",
        "11",
        "The mixture that pays",
        ("book/08_assembling_the_mixture", "book/09_did_the_experts_specialize"),
    ),
    Chapter(
        "book/11b_a_domain_that_arrives_later",
        "11b",
        "A domain that arrives later",
        ("book/04_expert_saving", "book/11_the_mixture_that_pays"),
    ),
    Chapter(
        "book/07_when_things_go_wrong",
        "7",
        "When things go wrong (appendix)",
        ("book/03_forward_interleaving", "book/04_expert_saving"),
    ),
    Chapter(
        "book/10_scaling_out",
        "10",
        "Scaling out (appendix)",
        ("book/02_memory_budget", "book/04_expert_saving", "book/08_assembling_the_mixture"),
    ),
    Chapter(
        "book/12_how_the_book_measures",
        "12",
        "How the book measures (appendix)",
        ("book/06b_making_205_mb_real",),
    ),
)


def source_exists(file: str, root: Path = REPO_ROOT) -> bool:
    """Whether a _toc.yml-style entry (no suffix) has a notebook or a markdown page."""
    base = root / file
    return base.with_suffix(".ipynb").is_file() or base.with_suffix(".md").is_file()


def existing(chapters: Sequence[Chapter], root: Path = REPO_ROOT) -> list[Chapter]:
    """The chapters whose files exist, with arrows from missing chapters removed."""
    present = {c.file for c in chapters if source_exists(c.file, root)}
    return [
        Chapter(c.file, c.label, c.title, tuple(n for n in c.needs if n in present))
        for c in chapters
        if c.file in present
    ]


def check_order(chapters: Sequence[Chapter]) -> None:
    """Raise if a chapter needs an unknown chapter or one that comes after it.

    The book is read in _toc.yml order, so a chapter can only build on earlier ones;
    this also rules out cycles.
    """
    position = {c.file: i for i, c in enumerate(chapters)}
    for i, chapter in enumerate(chapters):
        for need in chapter.needs:
            if need not in position:
                raise ValueError(
                    f"{chapter.file} needs {need!r}, which is not in CHAPTERS: "
                    "add it, or fix the name"
                )
            if position[need] >= i:
                raise ValueError(
                    f"{chapter.file} needs {need}, which comes after it: a chapter can only "
                    "build on earlier chapters (reorder CHAPTERS or drop the arrow)"
                )


def ancestors(chapters: Sequence[Chapter]) -> dict[str, set[str]]:
    """Every chapter's prerequisites, direct or not."""
    by_file = {c.file: c for c in chapters}
    found: dict[str, set[str]] = {}
    for chapter in chapters:  # in order, so every need is already resolved
        found[chapter.file] = set()
        for need in chapter.needs:
            found[chapter.file] |= {need} | found[by_file[need].file]
    return found


def drawn_edges(chapters: Sequence[Chapter]) -> list[tuple[str, str]]:
    """The arrows to draw: every need that no other need already implies."""
    above = ancestors(chapters)
    edges = []
    for chapter in chapters:
        for need in chapter.needs:
            implied = any(need in above[other] for other in chapter.needs if other != need)
            if not implied:
                edges.append((need, chapter.file))
    return edges


def layers(chapters: Sequence[Chapter]) -> dict[str, int]:
    """Row of each chapter: the length of the longest chain of prerequisites above it."""
    row: dict[str, int] = {}
    for chapter in chapters:
        row[chapter.file] = 1 + max((row[n] for n in chapter.needs), default=-1)
    return row


def _slots(chapters: Sequence[Chapter]) -> tuple[list[list[str]], list[list[str]]]:
    """Rows of slots (a chapter, or a waypoint of an arrow that skips a row) and each arrow's path.

    An arrow from row r to row r + n (n > 1) gets a waypoint in every row between,
    so that it runs through its own gap instead of across a box (the usual way to
    draw layered graphs). Within a row, slots are ordered by the mean position of
    what points at them in the row above, which keeps arrows from crossing.
    """
    row = layers(chapters)
    n_rows = max(row.values()) + 1
    rows: list[list[str]] = [[] for _ in range(n_rows)]
    for chapter in chapters:
        rows[row[chapter.file]].append(chapter.file)
    parents: dict[str, list[str]] = {}
    paths: list[list[str]] = []
    for need, target in drawn_edges(chapters):
        path = [need]
        for r in range(row[need] + 1, row[target]):
            waypoint = f"via:{need}->{target}@{r}"
            rows[r].append(waypoint)
            parents[waypoint] = [path[-1]]
            path.append(waypoint)
        parents.setdefault(target, []).append(path[-1])
        path.append(target)
        paths.append(path)
    for r in range(1, n_rows):
        index = {slot: i for i, slot in enumerate(rows[r - 1])}
        order = {slot: i for i, slot in enumerate(rows[r])}

        def barycentre(slot: str, index: dict[str, int] = index, order: dict[str, int] = order):
            above = [index[p] for p in parents.get(slot, []) if p in index]
            mean = sum(above) / len(above) if above else order[slot]
            # Half a slot to the right for a waypoint, so that a long arrow runs
            # between the boxes fed by the same chapter rather than around them.
            return (mean + (0.5 if slot.startswith("via:") else 0.0), order[slot])

        rows[r].sort(key=barycentre)
    return rows, paths


def draw(chapters: Sequence[Chapter], out: Path) -> Path:
    """Write the reading-path figure as SVG (deterministic: no date, fixed ids)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    check_order(chapters)
    rows, paths = _slots(chapters)
    box_w, box_h, via_w, gap_x, gap_y = 2.45, 0.42, 0.3, 0.2, 0.42

    def slot_w(slot: str) -> float:
        return via_w if slot.startswith("via:") else box_w

    row_w = [sum(slot_w(s) for s in r) + gap_x * (len(r) - 1) for r in rows]
    fig_w = max(row_w)
    pos: dict[str, tuple[float, float]] = {}
    for r, members in enumerate(rows):
        x = (fig_w - row_w[r]) / 2
        for slot in members:
            pos[slot] = (x + slot_w(slot) / 2, -r * (box_h + gap_y))
            x += slot_w(slot) + gap_x

    plt.rcParams["svg.hashsalt"] = "modularforge-reading-path"
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: searchable, crisp at any size
    fig_h = len(rows) * box_h + (len(rows) - 1) * gap_y
    fig, ax = plt.subplots(figsize=(fig_w + 0.1, fig_h + 0.1))
    fig.subplots_adjust(0, 0, 1, 1)
    ax.set_xlim(-0.05, fig_w + 0.05)
    ax.set_ylim(-fig_h + box_h / 2 - 0.05, box_h / 2 + 0.05)
    ax.axis("off")

    colour = "#4a6fa5"
    for chapter in chapters:
        x, y = pos[chapter.file]
        appendix = "appendix" in chapter.title.lower()
        ax.add_patch(
            FancyBboxPatch(
                (x - box_w / 2, y - box_h / 2),
                box_w,
                box_h,
                boxstyle="round,pad=0,rounding_size=0.08",
                facecolor="#f3f3f3" if appendix else "#e8f0fb",
                edgecolor=colour,
                linewidth=1.0,
                linestyle="--" if appendix else "-",
            )
        )
        ax.text(x, y, f"{chapter.label}. {chapter.title}", ha="center", va="center", fontsize=10)

    for path in paths:
        points = [pos[slot] for slot in path]
        start = (points[0][0], points[0][1] - box_h / 2)
        end = (points[-1][0], points[-1][1] + box_h / 2)
        line = [start] + [
            p for p in points[1:-1] for p in ((p[0], p[1] + box_h / 2), (p[0], p[1] - box_h / 2))
        ]
        for a, b in zip(line[:-1], line[1:], strict=True):
            ax.plot([a[0], b[0]], [a[1], b[1]], color=colour, linewidth=1.0)
        ax.add_patch(
            FancyArrowPatch(
                line[-1],
                end,
                arrowstyle="-|>",
                mutation_scale=10,
                color=colour,
                linewidth=1.0,
                shrinkA=0,
                shrinkB=1,
            )
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, format="svg", metadata={"Date": None})
    plt.close(fig)
    tmp.replace(out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="SVG file to write")
    args = parser.parse_args(argv)
    chapters = existing(CHAPTERS)
    for missing in sorted({c.file for c in CHAPTERS} - {c.file for c in chapters}):
        print(f"not drawn (no file yet): {missing}")
    print(f"wrote {draw(chapters, args.out)}")


if __name__ == "__main__":
    main()
