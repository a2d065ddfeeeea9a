"""A catalogue of what goes wrong with experts in the wild, and what the package says.

Each `Fault` sets up one bad situation in a scratch directory (a truncated file,
a mismatched config, a pickle in disguise, a corrupt corpus...) and triggers it.
The test suite runs every fault and checks the exception type and message; the
book's "When things go wrong" page runs the same catalogue and prints the real
messages, so the page cannot drift from the code.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from modularforge.files.checkpoint import (
    CheckpointConfigError,
    CheckpointError,
    SharedMismatchError,
    load_expert,
    load_shared,
    save_expert,
    save_shared,
)
from modularforge.model.config import ModelConfig
from modularforge.model.shared import SharedComponents
from modularforge.model.trainer_model import ModuleTrainerModel
from modularforge.repo_paths import REPO_ROOT

#: A small config so the whole catalogue runs in about a second.
FAULT_CONFIG = ModelConfig.tiny().replace(vocab_size=256, max_seq_len=32)


@dataclass(frozen=True)
class Fault:
    """One thing that goes wrong: how it looks, how to trigger it, what to do about it."""

    area: str  # "checkpoint", "config", "input" or "data"
    symptom: str  # what the user did or has
    trigger: Callable[[Path], object]  # raises when called with a scratch directory
    error: type[BaseException]  # the exception the package raises
    message: str  # a fragment the message must contain
    fix: str  # what to do about it


@dataclass(frozen=True)
class FaultReport:
    """A fault after it was triggered: the real exception and its message."""

    fault: Fault
    error: BaseException

    @property
    def error_type(self) -> str:
        return type(self.error).__name__

    @property
    def message(self) -> str:
        return str(self.error)


def _trunk(seed: int = 0, config: ModelConfig = FAULT_CONFIG) -> SharedComponents:
    torch.manual_seed(seed)
    return SharedComponents(config).freeze()


def _expert_file(directory: Path, config: ModelConfig = FAULT_CONFIG, seed: int = 0) -> Path:
    shared = _trunk(seed, config)
    return save_expert(ModuleTrainerModel(shared, config), directory / "expert.safetensors")


def _truncated(directory: Path) -> object:
    path = _expert_file(directory)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return load_expert(path, _trunk())


def _empty(directory: Path) -> object:
    path = directory / "expert.safetensors"
    path.write_bytes(b"")
    return load_expert(path, _trunk())


def _random_bytes(directory: Path) -> object:
    path = directory / "expert.safetensors"
    path.write_bytes(bytes(range(256)) * 64)
    return load_expert(path, _trunk())


class _Marker:
    """Unpickling this would create a file: proof that a loader ran pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.path,))


def _pickle_in_disguise(directory: Path) -> object:
    path = directory / "expert.safetensors"
    path.write_bytes(pickle.dumps(_Marker(directory / "pwned")))
    try:
        return load_expert(path, _trunk())
    finally:
        if (directory / "pwned").exists():  # pragma: no cover - would be a security bug
            raise AssertionError("the pickle was executed")


def _config_mismatch(directory: Path) -> object:
    path = _expert_file(directory, FAULT_CONFIG.replace(d_ff=256))
    return load_expert(path, _trunk())


def _other_trunk(directory: Path) -> object:
    path = _expert_file(directory, seed=0)
    return load_expert(path, _trunk(seed=1))


def _shared_as_expert(directory: Path) -> object:
    path = save_shared(_trunk(), directory / "shared.safetensors")
    return load_expert(path, _trunk())


def _missing(directory: Path) -> object:
    return load_shared(directory / "no-such-file.safetensors")


def _directory(directory: Path) -> object:
    return load_shared(directory)


def _bad_config(directory: Path) -> object:
    return ModelConfig.seed().replace(n_heads=7)


def _token_out_of_range(directory: Path) -> object:
    model = ModuleTrainerModel(_trunk(), FAULT_CONFIG)
    return model(torch.tensor([[1, 2, FAULT_CONFIG.vocab_size]]))


def _too_long(directory: Path) -> object:
    model = ModuleTrainerModel(_trunk(), FAULT_CONFIG)
    return model(torch.zeros(1, FAULT_CONFIG.max_seq_len + 1, dtype=torch.long))


def _float_ids(directory: Path) -> object:
    model = ModuleTrainerModel(_trunk(), FAULT_CONFIG)
    return model(torch.zeros(1, 4))


def _with_data_dir(
    directory: Path,
    files: dict[str, bytes],
    action: Callable[[], object],
    extra: dict[str, bytes] | None = None,
):
    """Run `action` with MODULARFORGE_DATA pointing at a corpus made of `files`.

    `extra` files go to the data directory itself (tokenizers live there).
    """
    corpus = directory / "data" / "corpus"
    corpus.mkdir(parents=True)
    for name, content in files.items():
        (corpus / name).write_bytes(content)
    for name, content in (extra or {}).items():
        (directory / "data" / name).write_bytes(content)
    previous = os.environ.get("MODULARFORGE_DATA")
    os.environ["MODULARFORGE_DATA"] = str(directory / "data")
    try:
        return action()
    finally:
        if previous is None:
            del os.environ["MODULARFORGE_DATA"]
        else:
            os.environ["MODULARFORGE_DATA"] = previous


def _unknown_domain(directory: Path) -> object:
    from modularforge.training.data import load_text

    return _with_data_dir(directory, {"prose.txt": b"text"}, lambda: load_text("poetry"))


def _empty_corpus(directory: Path) -> object:
    from modularforge.training.data import load_text

    return _with_data_dir(directory, {"prose.txt": b""}, lambda: load_text("prose"))


def _not_utf8(directory: Path) -> object:
    from modularforge.training.data import load_text

    content = "caf\u00e9 au lait".encode("latin-1")
    return _with_data_dir(directory, {"prose.txt": content}, lambda: load_text("prose"))


def _short_corpus(directory: Path) -> object:
    from modularforge.training.data import random_batch

    tokens = torch.arange(10)
    return random_batch(tokens, batch_size=2, seq_len=64, generator=torch.Generator())


def _tokenizer_missing(directory: Path) -> object:
    from modularforge.training.data import load_tokenizer

    return load_tokenizer(FAULT_CONFIG.vocab_size)


def _tokenizer_mismatch(directory: Path) -> object:
    from modularforge.training.data import load_tokenizer, tokenizer_path

    wrong = tokenizer_path(ModelConfig.tiny().vocab_size).read_bytes()  # a 2048-token file
    name = f"tokenizer-{FAULT_CONFIG.vocab_size}.json"
    return _with_data_dir(
        directory,
        {"prose.txt": b"text"},
        lambda: load_tokenizer(FAULT_CONFIG.vocab_size),
        extra={name: wrong},
    )


FAULTS: tuple[Fault, ...] = (
    Fault(
        "checkpoint",
        "an expert file cut off mid-copy",
        _truncated,
        CheckpointError,
        "truncated",
        "copy the file again; compare sizes or sha256 with the source",
    ),
    Fault(
        "checkpoint",
        "a zero-length expert file",
        _empty,
        CheckpointError,
        "empty",
        "the save or the copy never happened; save or copy it again",
    ),
    Fault(
        "checkpoint",
        "a file of random bytes",
        _random_bytes,
        CheckpointError,
        "not safetensors",
        "point at the .safetensors file that save_expert wrote",
    ),
    Fault(
        "checkpoint",
        "a pickle renamed to .safetensors",
        _pickle_in_disguise,
        CheckpointError,
        "never unpickled",
        "refused without running it; re-save the weights with save_expert",
    ),
    Fault(
        "checkpoint",
        "an expert trained with another d_ff",
        _config_mismatch,
        CheckpointConfigError,
        "d_ff: checkpoint 256, model 512",
        "load it against a trunk built with its config",
    ),
    Fault(
        "checkpoint",
        "an expert trained against other shared weights",
        _other_trunk,
        SharedMismatchError,
        "shared",
        "load the trunk it was trained with (or pass allow_shared_mismatch=True, knowingly)",
    ),
    Fault(
        "checkpoint",
        "a shared-trunk file loaded as an expert",
        _shared_as_expert,
        CheckpointError,
        "kind",
        "use load_shared for trunk files, load_expert for experts",
    ),
    Fault(
        "checkpoint",
        "a path that does not exist",
        _missing,
        FileNotFoundError,
        "no-such-file",
        "check the path; `python -m modularforge info PATH` describes a file",
    ),
    Fault(
        "checkpoint",
        "a directory instead of a file",
        _directory,
        IsADirectoryError,
        "directory",
        "name the .safetensors file inside the directory",
    ),
    Fault(
        "config",
        "n_heads that does not divide d_model",
        _bad_config,
        ValueError,
        "divisible by n_heads",
        "pick n_heads from the divisors of d_model",
    ),
    Fault(
        "input",
        "a token id beyond the vocabulary",
        _token_out_of_range,
        ValueError,
        "token ids must lie in",
        "encode with the tokenizer whose size is the config's vocab",
    ),
    Fault(
        "input",
        "a sequence longer than max_seq_len",
        _too_long,
        ValueError,
        "exceeds max_seq_len",
        "split the text into windows of at most max_seq_len tokens",
    ),
    Fault(
        "input",
        "float token ids",
        _float_ids,
        ValueError,
        "integer dtype",
        "pass a torch.long tensor of token ids",
    ),
    Fault(
        "data",
        "a domain name that does not exist",
        _unknown_domain,
        ValueError,
        "prose",
        "use one of the domains the message lists",
    ),
    Fault(
        "data",
        "an empty corpus file",
        _empty_corpus,
        ValueError,
        "empty",
        "fill the file or remove it from data/corpus",
    ),
    Fault(
        "data",
        "a corpus file that is not UTF-8",
        _not_utf8,
        ValueError,
        "UTF-8",
        "re-encode it: iconv -f latin1 -t utf-8",
    ),
    Fault(
        "data",
        "a corpus shorter than one sequence",
        _short_corpus,
        ValueError,
        "needs at least 65",
        "use a shorter seq_len or more text",
    ),
    Fault(
        "data",
        "no tokenizer for the config's vocab size",
        _tokenizer_missing,
        FileNotFoundError,
        "tokenizer-256.json",
        "run scripts/build_tokenizer.py for that size",
    ),
    Fault(
        "data",
        "a tokenizer whose vocabulary differs from the config's",
        _tokenizer_mismatch,
        ValueError,
        "2048",
        "rebuild the tokenizer with the config's vocab_size",
    ),
)


def trigger(fault: Fault, directory: Path) -> FaultReport:
    """Trigger `fault` in `directory` and report what was raised.

    Raises AssertionError if nothing was raised: a fault the package lets pass
    silently is a bug, not a report.
    """
    try:
        fault.trigger(directory)
    except Exception as error:  # noqa: BLE001 - we report whatever was raised
        return FaultReport(fault, error)
    raise AssertionError(f"no error for: {fault.symptom}")


def report_table(reports: list[FaultReport], directory: Path | None = None) -> str:
    """Markdown table: symptom, exception and message, fix.

    Paths that differ between machines (the scratch directory, the checkout's
    location) are shortened, so the table reads the same everywhere.
    """
    replacements = {str(REPO_ROOT): "<repo>"}
    if directory is not None:
        replacements = {str(directory): "…", **replacements}
    lines = ["| symptom | error and message | fix |", "| --- | --- | --- |"]
    for report in reports:
        message = report.message
        for old, new in replacements.items():
            message = message.replace(old, new)
        # `<` and `>` are escaped so that a placeholder such as `<repo>` is shown,
        # not swallowed by the page as an unknown HTML tag.
        message = message.replace("<", "&lt;").replace(">", "&gt;")
        message = message.replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {report.fault.symptom} | `{report.error_type}`: {message} | {report.fault.fix} |"
        )
    return "\n".join(lines)


def run_catalogue(directory: Path) -> list[FaultReport]:
    """Trigger every fault, each in its own sub-directory of `directory`."""
    reports = []
    for index, fault in enumerate(FAULTS):
        scratch = directory / f"{index:02d}"
        scratch.mkdir()
        reports.append(trigger(fault, scratch))
    return reports
