"""A training-state file that no longer loads is set aside, said so, and the work retrained.

The pipeline's rule is that a file which no longer loads is retrained. Training
states fell outside it: a garbage, truncated or tampered state made every rerun
stop at the same `CheckpointError`, so the folder was blocked for good. Here the
state is renamed (never deleted: it may be worth a look) to `<name>.bad`, a name no
glob for `*.safetensors` matches, a message names both, and the unit of work starts over
from step 0. What is refused is only what `load_training_state` refuses before it
changes anything, so the retry starts from a clean model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from modularforge.files.checkpoint_format import CheckpointError

T = TypeVar("T")


def first_free(folder: Path, stem: str, suffix: str = "") -> Path:
    """`folder/stem+suffix`, or `stem-2`, `stem-3`, ... : the first name nothing holds yet.

    Deterministic (no time or pid in the name), so a log line reads the same on every
    machine; never an existing name, so nothing set aside earlier is replaced.
    """
    candidate, n = folder / f"{stem}{suffix}", 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = folder / f"{stem}-{n}{suffix}"
    return candidate


def set_aside(path: str | os.PathLike[str]) -> Path:
    """Rename `path` to `<name>.bad` (or `.bad-2`, ...) next to it; return the new path."""
    path = Path(path)
    aside = first_free(path.parent, f"{path.name}.bad")
    os.replace(path, aside)
    return aside


def train_or_set_aside(
    state: Path | None,
    train: Callable[[], T],
    note: Callable[[str, str], None],
    event: str,
    prefix: str,
) -> T:
    """Run `train()`; if it refuses `state` as a checkpoint, set the state aside and rerun once.

    `note(event, f"{prefix}: ...")` reports the setting aside (the pipeline's log).
    """
    try:
        return train()
    except CheckpointError as error:
        if state is None or not state.is_file():
            raise
        aside = set_aside(state)
        note(
            event,
            f"{prefix}: {state} does not load as a training state ({error}); set aside as {aside.name}, "
            "training this step of the pipeline from the start",
        )
        return train()
