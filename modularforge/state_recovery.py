"""A training-state file that no longer loads is set aside, said so, and the work retrained.

The pipeline's rule is that a file which no longer loads is retrained. Training
states fell outside it: a garbage, truncated or tampered state made every rerun
stop at the same `CheckpointError`, so the folder was blocked for good. Here the
state is renamed (never deleted: it may be worth a look) to a name no glob for
`*.safetensors` matches, a message names both, and the unit of work starts over
from step 0. What is refused is only what `load_training_state` refuses before it
changes anything, so the retry starts from a clean model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .checkpoint_format import CheckpointError

T = TypeVar("T")


def set_aside(path: str | os.PathLike[str]) -> Path:
    """Rename `path` to `<name>.bad-<UTC time>-<pid>` next to it; return the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.bad-{stamp}-{os.getpid()}")
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
