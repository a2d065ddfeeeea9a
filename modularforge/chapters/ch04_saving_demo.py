"""The expert-saving chapter's helpers: the document's way, the full model, a harmless trap.

Why these live in the package and not in notebook cells: each one is a claim the
chapter makes (the document's `torch.save` file is about as big as ours, N
experts cost one trunk plus N small files, a pickle runs code when it is loaded),
so each is tested here like the rest of `modularforge`.

`MarkerOnUnpickle` is the "malicious" payload of the safety demonstration. It is
deliberately harmless: unpickling it only creates a marker file at a path the
caller chose (a temporary directory in the book). That is enough to prove that
code ran, without doing anything a real attacker would.
"""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save as safetensors_save

from modularforge.files.atomic import atomic_write_bytes
from modularforge.files.checkpoint import EXPERT_CONFIG_FIELDS
from modularforge.measure.memory import MB
from modularforge.model.trainer_model import ModuleTrainerModel

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes

__all__ = [
    "DOC_EXPERT_FILE_MB",
    "DOC_FULL_FILE_MB",
    "MARKER_TEXT",
    "DiskUsage",
    "MarkerOnUnpickle",
    "describe_error",
    "disk_usage_for_experts",
    "leave_marker",
    "max_abs_difference",
    "plot_disk_usage",
    "pick_lines",
    "plot_file_sizes",
    "save_expert_like_the_document",
    "save_full_model",
    "write_pickle_trap",
]

#: The design document's file sizes ("Expert checkpoint ≈ 33 MB vs full model ≈ 100+ MB"),
#: quoted for reference lines; the book measures its own.
DOC_EXPERT_FILE_MB = 33
DOC_FULL_FILE_MB = 100

#: What the marker file contains, so a test can tell it was written by the payload.
MARKER_TEXT = "created while unpickling: loading this file ran code"


# --------------------------------------------------------------------------- saving


def save_expert_like_the_document(model: ModuleTrainerModel, path: str | os.PathLike[str]) -> Path:
    """The design document's `save_expert`: one `torch.save` (pickle) of a dict.

    Kept only to compare file sizes and to show what loading such a file looks
    like; the package itself writes safetensors (`modularforge.files.checkpoint`).
    """
    expert_state = {
        "expert_idx": model.expert_idx,
        "experts_state_dict": model.experts.state_dict(),
        "config": {field: getattr(model.config, field) for field in EXPERT_CONFIG_FIELDS},
    }
    path = Path(path)
    torch.save(expert_state, path)
    return path


def save_full_model(model: ModuleTrainerModel, path: str | os.PathLike[str]) -> Path:
    """Trunk and expert in one safetensors file: what saving "the full model" per expert costs.

    `model.state_dict()` names the tied embedding / LM-head matrix once (the head
    is `F.linear` with the embedding weight, not a module), and the positions are
    a non-persistent buffer, so the file holds every parameter exactly once.
    """
    tensors = {
        name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()
    }
    metadata = {"kind": "full_model_demo", "config": json.dumps(model.config.to_dict())}
    return atomic_write_bytes(path, safetensors_save(tensors, metadata))


# --------------------------------------------------------------------------- disk usage


@dataclass(frozen=True)
class DiskUsage:
    """Bytes on disk for `n_experts` experts, stored two ways."""

    n_experts: int
    modular: int  # one shared file + n expert-only files
    full_copies: int  # n files that each hold trunk + expert

    @property
    def saved_fraction(self) -> float:
        """Share of the full-copies disk that the modular layout does not need."""
        return 1.0 - self.modular / self.full_copies


def disk_usage_for_experts(
    shared_bytes: int, expert_bytes: int, full_bytes: int, max_experts: int
) -> list[DiskUsage]:
    """Disk for 1..`max_experts` experts: one trunk + N experts, versus N full models.

    Takes measured file sizes (not parameter counts), so headers and metadata are
    included.
    """
    if max_experts < 1:
        raise ValueError(f"max_experts must be >= 1, got {max_experts}")
    return [
        DiskUsage(n, shared_bytes + n * expert_bytes, n * full_bytes)
        for n in range(1, max_experts + 1)
    ]


# --------------------------------------------------------------------------- the pickle trap


def leave_marker(path: str) -> str:
    """Write `MARKER_TEXT` to `path`. Called by the unpickler, never by the book directly."""
    Path(path).write_text(MARKER_TEXT, encoding="utf-8")
    return path


class MarkerOnUnpickle:
    """An object whose unpickling calls `leave_marker(marker_path)`.

    `__reduce__` tells pickle "to rebuild me, call this function with these
    arguments". A real attacker would name `os.system` there; this demo names a
    function that only writes a marker file, so the chapter can prove that
    loading a pickle runs code while staying harmless.
    """

    def __init__(self, marker_path: str | os.PathLike[str]) -> None:
        self.marker_path = str(marker_path)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (leave_marker, (self.marker_path,))


def write_pickle_trap(path: str | os.PathLike[str], marker_path: str | os.PathLike[str]) -> Path:
    """Write a `torch.save` file that looks like an expert but leaves a marker when unpickled.

    Saved under whatever name the caller gives, e.g. `expert.safetensors`, to
    check that a loader refuses it without ever unpickling it.
    """
    trap = {"expert_idx": 0, "experts_state_dict": MarkerOnUnpickle(marker_path)}
    path = Path(path)
    torch.save(trap, path)
    return path


# --------------------------------------------------------------------------- reporting


def describe_error(error: BaseException, hide_dir: str | os.PathLike[str] | None = None) -> str:
    """`"TypeName: message"`, with `hide_dir` removed so only file names remain.

    Temporary directories differ on every run; printing them would make the
    book's outputs change each time it is executed.
    """
    message = str(error)
    if hide_dir is not None:
        message = message.replace(str(hide_dir) + os.sep, "").replace(str(hide_dir), "<dir>")
    return wrap_for_page(f"{type(error).__name__}: {message}")


#: Characters per line that fit an output box at the book's column width (688 px).
PAGE_WIDTH_CHARS = 80


def wrap_for_page(text: str, width: int = PAGE_WIDTH_CHARS) -> str:
    """`text` re-flowed into lines of at most `width` characters, paragraph by paragraph.

    Output boxes on the rendered page do not wrap: a 300-character error message
    would show only its first 80 characters, the rest hidden past the right edge.
    Continuation lines are indented so the reader sees where one message ends.
    """
    return "\n".join(
        textwrap.fill(line, width, subsequent_indent="    ", break_on_hyphens=False) or line
        for line in text.splitlines()
    )


def pick_lines(text: str, containing: str | None = None, limit: int = 1) -> str:
    """The first `limit` lines of `text` (those containing `containing`, if given).

    PyTorch's errors run to a dozen lines; the book prints the one that matters.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if containing is not None:
        lines = [line for line in lines if containing in line]
    return "\n".join(lines[:limit])


def max_abs_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute elementwise difference, as a Python float."""
    return float((a - b).abs().max())


# --------------------------------------------------------------------------- figures


def plot_file_sizes(
    sizes: dict[str, int],
    highlight: tuple[str, ...] = (),
    references: dict[str, float] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Bar chart of file sizes in decimal MB, each bar labelled with its size.

    Bars named in `highlight` are drawn orange (the expert's colour in the book),
    the others blue-grey. `references` maps a label to a size in MB, drawn as a
    dashed horizontal line (the document's figures).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    labels = list(sizes)
    values = [sizes[label] / MB for label in labels]
    colors = ["#f28e2b" if label in highlight else "#9db4cc" for label in labels]
    ax.bar(labels, values, color=colors, edgecolor="black")
    for i, value in enumerate(values):
        ax.text(i, value + max(values) * 0.01, f"{value:.1f} MB", ha="center", va="bottom")
    references = references or {}
    styles = iter([":", "--", "-."])
    for label, mb in references.items():
        ax.axhline(mb, color="black", linestyle=next(styles, "--"), linewidth=1, label=label)
    if references:
        ax.legend(loc="upper left", fontsize=8)
    ax.set_ylim(0, max([*values, *references.values()]) * 1.2)
    ax.set_ylabel("file size (MB, 10^6 bytes)")
    ax.set_title("Checkpoint files, seed preset (float32)")
    return ax


def plot_disk_usage(usage: list[DiskUsage], ax: Axes | None = None) -> Axes:
    """Disk for N experts, two layouts, as lines in decimal MB."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    n = [u.n_experts for u in usage]
    ax.plot(
        n,
        [u.full_copies / MB for u in usage],
        "o-",
        color="#9db4cc",
        label="N full models (trunk + expert each)",
    )
    ax.plot(
        n,
        [u.modular / MB for u in usage],
        "o-",
        color="#f28e2b",
        label="one shared trunk + N expert-only files",
    )
    ax.set_xlabel("number of experts N")
    ax.set_ylabel("disk used (MB, 10^6 bytes)")
    ax.set_title("Disk for N experts, seed preset")
    ax.set_xticks(n)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
