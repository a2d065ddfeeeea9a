"""The shipped corpus, the tokenizers, and batches of token ids.

Every chapter trains on the same small, committed corpus (``data/corpus/*.txt``, one file
per *domain*) so results are reproducible offline: nothing here downloads anything. The
pipeline is deliberately plain:

    text file -> token ids (cached) -> contiguous train / validation split -> batches

Training batches are random windows drawn with an explicit ``torch.Generator``, so a run
is a pure function of its seed, and :class:`BatchStream` can save and restore its
position so an interrupted run resumes on exactly the batches it would have seen.
Validation batches are fixed, non-overlapping windows, so every evaluation of a model
scores the same tokens.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from modularforge.files.regular_file import open_regular_file
from modularforge.repo_paths import REPO_DATA_DIR
from modularforge.training.tokenizer_file import check_text, parse_tokenizer

#: Environment variable that points the package at another data directory.
DATA_ENV_VAR = "MODULARFORGE_DATA"
#: The repository's ``data/`` directory, found next to the package (or from the env var).
DATA_DIR: Path = Path(os.environ.get(DATA_ENV_VAR) or REPO_DATA_DIR)
#: The special token placed between documents (here: between domains in the mixture).
EOT_TOKEN = "<|endoftext|>"
#: Script that regenerates the tokenizer files; error messages point to it.
TOKENIZER_SCRIPT = "scripts/build_tokenizer.py"
CORPUS_SCRIPT = "scripts/build_corpus.py"

Batch = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------- locating files


def data_dir() -> Path:
    """The data directory in use right now.

    Read at call time (env var first, then the module's ``DATA_DIR``) rather than frozen at
    import, so tests and notebooks can redirect it without reloading the module.
    """
    override = os.environ.get(DATA_ENV_VAR)
    return Path(override) if override else Path(DATA_DIR)


def _require_data_dir() -> Path:
    """The data directory, or a ``FileNotFoundError`` that names the usual cause.

    The corpus and tokenizers ship with the repository, not inside the package, so an
    install that copies only the package (``pip install git+URL``, not editable) has no
    ``data/`` beside it. Saying so beats a message about one missing file.
    """
    root = data_dir()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data directory {root} does not exist. The corpus and tokenizers ship with the "
            f"repository, not inside the installed package: clone the repository and install "
            f"it editable (`pip install -e .`, what the chapters' Colab cell does), or set "
            f"{DATA_ENV_VAR} to a checkout's data/ folder."
        )
    return root


def _corpus_dir() -> Path:
    """``<data>/corpus``, or a ``FileNotFoundError`` that says how to fix the setup."""
    root = _require_data_dir()
    corpus = root / "corpus"
    if not corpus.is_dir():
        raise FileNotFoundError(
            f"corpus directory {corpus} does not exist. Run from a checkout of the repository "
            f"(the corpus is committed under data/corpus/), set {DATA_ENV_VAR} to a directory "
            f"that contains corpus/*.txt, or regenerate it with {CORPUS_SCRIPT}."
        )
    return corpus


def list_domains() -> list[str]:
    """Sorted names of the corpus files (``english``, ``licenses``, ``python`` ...).

    A domain is simply a file ``corpus/<name>.txt``; adding a file adds a domain.
    """
    return sorted(path.stem for path in _corpus_dir().glob("*.txt"))


def require_known_domains(names: Sequence[str]) -> None:
    """Refuse, by name, any domain that has no corpus file (a typo, a missing file)."""
    known = list_domains()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; the corpus has {known}")


def _require_domains() -> list[str]:
    """`list_domains()`, or a message saying what an empty corpus folder needs."""
    domains = list_domains()
    if not domains:
        raise ValueError(
            f"corpus directory {_corpus_dir()} holds no *.txt files, so there is nothing to "
            f"train on. Put one UTF-8 text file per domain there (e.g. english.txt), point "
            f"{DATA_ENV_VAR} at a data directory that has them, or run {CORPUS_SCRIPT}"
        )
    return domains


# --------------------------------------------------------------------------- text


def load_text(domain: str) -> str:
    """The full text of one domain, validated.

    Problems are reported here, with the file name, instead of surfacing later as an empty
    tensor or a tokenizer error far from their cause.
    """
    domains = _require_domains()
    if domain not in domains:
        raise ValueError(f"unknown domain {domain!r}; available domains: {', '.join(domains)}")
    path = _corpus_dir() / f"{domain}.txt"
    hint = f"replace it with a UTF-8 text file, or regenerate the corpus with {CORPUS_SCRIPT}"
    with open_regular_file(path, "corpus file", hint) as handle:  # a FIFO or /dev/zero hangs
        raw = handle.read()
    if not raw:
        raise ValueError(f"corpus file {path} is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"corpus file {path} is not valid UTF-8: {err.reason} at byte offset {err.start}"
        ) from err


# --------------------------------------------------------------------------- tokenizer


def tokenizer_path(vocab_size: int) -> Path:
    """Where the tokenizer with this vocabulary size is stored."""
    return data_dir() / f"tokenizer-{vocab_size}.json"


def load_tokenizer(vocab_size: int) -> Tokenizer:
    """Load the byte-level BPE tokenizer trained for ``vocab_size`` and check its size.

    The model's embedding table has exactly ``vocab_size`` rows, so a tokenizer of any
    other size would produce ids out of range (or waste rows); we refuse it up front.
    """
    _require_data_dir()
    path = tokenizer_path(vocab_size)
    rebuild = f"rebuild it with `python {TOKENIZER_SCRIPT} --vocab-sizes {vocab_size}`"
    if not path.exists():
        raise FileNotFoundError(f"tokenizer file {path} not found; {rebuild}")
    with open_regular_file(path, "tokenizer file", rebuild) as handle:
        raw = handle.read()
    tokenizer = parse_tokenizer(path, raw, rebuild)
    actual = tokenizer.get_vocab_size()
    if actual != vocab_size:
        raise ValueError(
            f"tokenizer file {path} has vocab size {actual}, but {vocab_size} was requested"
        )
    return tokenizer


def encode(text: str, tokenizer: Tokenizer) -> torch.Tensor:
    """Token ids of ``text`` as a 1-D int64 tensor (the dtype embedding lookups expect).

    Text must be a `str` of valid Unicode; a lone surrogate is refused by name
    (`modularforge.training.tokenizer_file.check_text`) instead of failing in the tokenizer.
    """
    check_text(text)
    ids = tokenizer.encode(text).ids
    return torch.tensor(ids, dtype=torch.int64)


def decode(ids: torch.Tensor | list[int], tokenizer: Tokenizer) -> str:
    """Text of a sequence of token ids; the inverse of :func:`encode`."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return tokenizer.decode(ids, skip_special_tokens=False)


@functools.lru_cache(maxsize=32)
def _cached_tokens(root: str, domain: str, vocab_size: int) -> torch.Tensor:
    # Keyed by the data directory too, so redirecting DATA_DIR never serves stale tokens.
    return encode(load_text(domain), load_tokenizer(vocab_size))


def domain_tokens(domain: str, vocab_size: int) -> torch.Tensor:
    """All token ids of one domain, encoded once per process and then cached.

    Encoding a megabyte takes about a second; many chapters ask for the same domain, so
    the result is memoised. Treat the returned tensor as read-only: it is shared.
    """
    return _cached_tokens(str(data_dir()), domain, vocab_size)


# --------------------------------------------------------------------------- splits


def train_val_split(tokens: torch.Tensor, val_fraction: float = 0.1) -> Batch:
    """Split a token stream into (train, validation): the last ``val_fraction`` is validation.

    The split is contiguous rather than random: training windows overlap, so a random
    split of windows would put most of every validation window's tokens in the training
    set as well. One cut point means at most one window straddles the boundary.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    n_val = int(len(tokens) * val_fraction)
    if n_val == 0 or n_val == len(tokens):
        raise ValueError(
            f"cannot split {len(tokens)} tokens with val_fraction={val_fraction}: "
            "one side would be empty"
        )
    cut = len(tokens) - n_val
    return tokens[:cut], tokens[cut:]


@dataclass(frozen=True)
class DomainData:
    """The token ids one training phase uses: a name plus train and validation streams.

    A mixture of domains also keeps each domain's validation stream in ``val_parts``,
    so that its validation can draw the same number of windows from every domain
    (:func:`validation_batches`). Without them, windows taken from the start of the
    concatenated ``val`` stream would all come from the first domain.
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    val_parts: dict[str, torch.Tensor] | None = None  # domain -> its validation tokens

    def __repr__(self) -> str:
        parts = f", val_parts={list(self.val_parts)}" if self.val_parts else ""
        return (
            f"DomainData({self.name!r}, train={len(self.train)} tokens, val={len(self.val)}{parts})"
        )


def load_domain(domain: str, vocab_size: int, val_fraction: float = 0.1) -> DomainData:
    """Tokens of one domain, split into train and validation."""
    train, val = train_val_split(domain_tokens(domain, vocab_size), val_fraction)
    return DomainData(name=domain, train=train, val=val)


def load_mixed(vocab_size: int, val_fraction: float = 0.1) -> DomainData:
    """All domains together (phase 1 trains the shared trunk on this mixture).

    Each domain is split first and the pieces are then joined, so no domain's validation
    text leaks into the mixed training set. An ``<|endoftext|>`` token separates the
    domains so the model is not taught that licence text continues into Python code.
    """
    domains = _require_domains()  # before the tokenizer: an empty corpus is the first problem
    eot = load_tokenizer(vocab_size).token_to_id(EOT_TOKEN)
    if eot is None:
        raise ValueError(f"tokenizer {tokenizer_path(vocab_size)} has no {EOT_TOKEN} token")
    separator = torch.tensor([eot], dtype=torch.int64)
    parts = [load_domain(name, vocab_size, val_fraction) for name in domains]
    train = _join([part.train for part in parts], separator)
    val = _join([part.val for part in parts], separator)
    return DomainData(
        name="mixed", train=train, val=val, val_parts={part.name: part.val for part in parts}
    )


def _join(streams: list[torch.Tensor], separator: torch.Tensor) -> torch.Tensor:
    pieces: list[torch.Tensor] = []
    for i, stream in enumerate(streams):
        if i:
            pieces.append(separator)
        pieces.append(stream)
    return torch.cat(pieces)


# --------------------------------------------------------------------------- batches


def _check_length(tokens: torch.Tensor, seq_len: int) -> None:
    """A window needs ``seq_len + 1`` tokens: ``seq_len`` inputs plus one more target."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be at least 1, got {seq_len}")
    if len(tokens) < seq_len + 1:
        raise ValueError(
            f"token stream has {len(tokens)} tokens, but a window of seq_len={seq_len} "
            f"needs at least {seq_len + 1}"
        )


def _windows(tokens: torch.Tensor, starts: torch.Tensor, seq_len: int) -> Batch:
    """Gather windows ``tokens[s : s + seq_len + 1]`` and split into (inputs, targets)."""
    index = starts.unsqueeze(1) + torch.arange(seq_len + 1)
    chunk = tokens[index]
    return chunk[:, :-1], chunk[:, 1:]


def random_batch(
    tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> Batch:
    """``batch_size`` random windows: inputs and targets, each ``(batch_size, seq_len)``.

    ``targets[:, t]`` is the token that follows ``inputs[:, t]``, which is all next-token
    prediction needs. Randomness comes only from ``generator``, so the same seed gives the
    same batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    _check_length(tokens, seq_len)
    n_starts = len(tokens) - seq_len  # valid starts are 0 .. len - seq_len - 1
    starts = torch.randint(0, n_starts, (batch_size,), generator=generator)
    return _windows(tokens, starts, seq_len)


def eval_batches(
    tokens: torch.Tensor, batch_size: int, seq_len: int, max_batches: int | None = None
) -> Iterator[Batch]:
    """Fixed, non-overlapping windows from the start of ``tokens``, for validation loss.

    Each token is scored at most once and every call yields the same windows, so two
    models (or two checkpoints) are compared on identical data. The last batch may hold
    fewer than ``batch_size`` windows; weight by its size for an exact mean.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    _check_length(tokens, seq_len)
    n_windows = (len(tokens) - 1) // seq_len
    all_starts = torch.arange(n_windows) * seq_len
    for i, first in enumerate(range(0, n_windows, batch_size)):
        if max_batches is not None and i >= max_batches:
            return
        yield _windows(tokens, all_starts[first : first + batch_size], seq_len)


def balanced_window_starts(
    parts: dict[str, torch.Tensor], seq_len: int, windows_per_domain: int | None = None
) -> dict[str, torch.Tensor]:
    """Start offsets of the same number of validation windows in every domain.

    Each domain contributes ``windows_per_domain`` non-overlapping windows (at most as
    many as its smallest domain holds, which is also the default), spread evenly over
    its whole validation stream rather than taken from its start, so that a short
    evaluation still samples each domain's text from beginning to end.
    """
    if not parts:
        raise ValueError("balanced validation needs at least one domain, got none")
    for name, tokens in parts.items():
        try:
            _check_length(tokens, seq_len)
        except ValueError as err:
            raise ValueError(f"validation tokens of domain {name!r}: {err}") from None
    available = {name: (len(tokens) - 1) // seq_len for name, tokens in parts.items()}
    per_domain = min(available.values())
    if windows_per_domain is not None:
        if windows_per_domain < 1:
            raise ValueError(f"windows_per_domain must be >= 1, got {windows_per_domain}")
        per_domain = min(per_domain, windows_per_domain)
    starts = {}
    for name, n_windows in available.items():
        # Evenly spaced window indices: distinct (so windows never overlap) and spanning
        # the stream; with per_domain == n_windows this is every window.
        index = torch.linspace(0, n_windows - 1, per_domain, dtype=torch.float64).round()
        starts[name] = index.to(torch.int64) * seq_len
    return starts


def _balanced_limit(n_domains: int, batch_size: int, max_batches: int | None) -> int | None:
    """Windows per domain so that ``max_batches`` batches hold all of them (rounded up)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_batches is None:
        return None
    if max_batches < 1:
        raise ValueError(f"max_batches must be at least 1 (or None for all), got {max_batches}")
    return max(1, -(-max_batches * batch_size // n_domains))


def balanced_domain_batches(
    data: DomainData, batch_size: int, seq_len: int, max_batches: int | None = None
) -> dict[str, list[Batch]]:
    """The balanced validation windows of a mixture, kept apart by domain.

    The same windows :func:`validation_batches` yields, grouped per domain, so that
    each domain can be scored by a different model (routing by the domain label).
    """
    if not data.val_parts:
        raise ValueError(f"{data.name!r} is not a mixture of domains (it has no val_parts)")
    limit = _balanced_limit(len(data.val_parts), batch_size, max_batches)
    starts = balanced_window_starts(data.val_parts, seq_len, limit)
    return {
        name: [
            _windows(data.val_parts[name], chunk, seq_len)
            for chunk in torch.split(domain_starts, batch_size)
        ]
        for name, domain_starts in starts.items()
    }


def validation_batches(
    data: DomainData, batch_size: int, seq_len: int, max_batches: int | None = None
) -> Iterator[Batch]:
    """The validation windows of ``data``: balanced over domains when it is a mixture.

    A single domain yields :func:`eval_batches` of its ``val`` stream. A mixture (with
    ``val_parts``) yields the same number of windows from every domain, interleaved
    domain by domain so that every batch, and any prefix of the batches, is balanced.
    ``max_batches`` bounds the total: ``ceil(max_batches * batch_size / n_domains)``
    windows per domain. The mean loss over these windows weights each domain equally,
    which is what a "mixed" validation loss should mean.
    """
    if not data.val_parts:
        yield from eval_batches(data.val, batch_size, seq_len, max_batches)
        return
    limit = _balanced_limit(len(data.val_parts), batch_size, max_batches)
    starts = balanced_window_starts(data.val_parts, seq_len, limit)
    # Interleave: domain 0, domain 1, ..., domain 0, domain 1, ... (equal counts).
    columns = zip(*starts.values(), strict=True)
    windows = [
        (name, int(start)) for column in columns for name, start in zip(starts, column, strict=True)
    ]
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        stacked = torch.stack(
            [data.val_parts[name][start : start + seq_len + 1] for name, start in chunk]
        )  # (B, seq_len + 1)
        yield stacked[:, :-1], stacked[:, 1:]


def domain_validation(data: DomainData, domain: str) -> DomainData:
    """One domain of a mixture as its own validation data (for per-domain scores)."""
    if not data.val_parts or domain not in data.val_parts:
        raise ValueError(f"{data.name!r} has no validation part {domain!r}")
    tokens = data.val_parts[domain]
    return DomainData(name=domain, train=tokens[:0], val=tokens)


class BatchStream:
    """An endless, deterministic, resumable stream of training batches.

    It owns its ``torch.Generator`` (seeded from ``seed``), so its batches do not depend on
    any other use of randomness in the program (dropout, initialisation). ``state_dict``
    captures the generator state and the number of batches drawn; restoring it continues
    with exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int) -> None:
        _check_length(tokens, seq_len)
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_drawn = 0

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        batch = random_batch(self.tokens, self.batch_size, self.seq_len, self.generator)
        self.batches_drawn += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: generator state, batch count, and the batch shape."""
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "batches_drawn": self.batches_drawn,
            "generator_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`.

        The batch shape must match: a different shape draws a different amount of
        randomness per batch, so the "same position" would no longer mean the same data.
        """
        for key in ("batch_size", "seq_len"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume: saved {key}={state[key]} but this stream has "
                    f"{key}={getattr(self, key)}"
                )
        self.seed = state["seed"]
        self.generator.set_state(state["generator_state"])
        self.batches_drawn = state["batches_drawn"]
