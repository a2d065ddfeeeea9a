"""A domain from any UTF-8 text file: the data a domain that arrives later is trained on.

The shipped corpus (`data/corpus/`) is what phase 1 saw. A domain that arrives after
phase 1 (`data/later/perl.txt`, or a reader's own text) is read from its file and
tokenised with the trunk's existing tokenizer: the trunk's embedding table is fixed, so
a new domain cannot bring its own vocabulary.

Every way a text file can be wrong is refused before tokenising, with the path and the
fix in the message: a directory, a FIFO or device (which could block or never end), an
empty file, one larger than `MAX_TEXT_BYTES`, binary data (NUL bytes) and text that is
not UTF-8.
"""

from __future__ import annotations

import os
from pathlib import Path

from modularforge.files.regular_file import open_regular_file
from modularforge.repo_paths import REPO_DATA_DIR
from modularforge.training.data import DomainData, encode, load_tokenizer, train_val_split

__all__ = ["LATER_DIR", "MAX_TEXT_BYTES", "TextDomainError", "later_domain", "load_text_domain"]

#: The shipped domains that no trunk or tokenizer of this repository was trained on.
LATER_DIR = REPO_DATA_DIR / "later"
#: 64 MiB: about 20M tokens, far beyond what a CPU study trains on in one pass. Larger
#: text should be cut into parts; reading it whole would hold it in memory three times
#: (bytes, str, token ids).
MAX_TEXT_BYTES = 64 * 1024 * 1024
#: Fewer tokens than this leave no validation windows at the book's sequence lengths.
MIN_TOKENS = 1024


class TextDomainError(ValueError):
    """The file cannot be a domain: empty, too large, binary or not UTF-8 (named in the message)."""


def read_domain_text(path: str | os.PathLike[str], max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The text of `path`, refused by name unless it is a non-empty UTF-8 regular file."""
    path = Path(path)
    hint = "pass a UTF-8 text file (for example a .txt export of your documents)"
    with open_regular_file(path, "domain text file", hint) as handle:
        raw = handle.read(max_bytes + 1)  # never more than the cap, whatever the file claims
    if not raw:
        raise TextDomainError(f"{path}: the domain text file is empty; {hint}")
    if len(raw) > max_bytes:
        raise TextDomainError(
            f"{path}: the domain text file is larger than {max_bytes:,} bytes; split it and "
            "train on a part, or raise max_bytes if you have the memory"
        )
    if b"\x00" in raw:
        at = raw.index(b"\x00")
        raise TextDomainError(
            f"{path}: the domain text file holds binary data (a NUL byte at offset {at:,}); {hint}"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TextDomainError(
            f"{path}: the domain text file is not UTF-8 ({err.reason} at byte offset "
            f"{err.start:,}); convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from err


def load_text_domain(
    path: str | os.PathLike[str],
    vocab_size: int,
    name: str | None = None,
    val_fraction: float = 0.1,
) -> DomainData:
    """The file's tokens (the trunk's tokenizer), split into train and validation like a corpus domain."""
    path = Path(path)
    tokens = encode(read_domain_text(path), load_tokenizer(vocab_size))
    if len(tokens) < MIN_TOKENS:
        raise TextDomainError(
            f"{path}: the domain text is only {len(tokens)} tokens; a domain needs at least "
            f"{MIN_TOKENS} so that training and validation windows both exist"
        )
    train, val = train_val_split(tokens, val_fraction)
    return DomainData(name=name or path.stem, train=train, val=val)


def later_domain(name: str, vocab_size: int) -> DomainData:
    """A shipped domain that arrives after phase 1 (`data/later/<name>.txt`)."""
    available = sorted(p.stem for p in LATER_DIR.glob("*.txt"))
    if name not in available:
        raise ValueError(f"unknown later domain {name!r}; available: {', '.join(available)}")
    return load_text_domain(LATER_DIR / f"{name}.txt", vocab_size, name=name)
