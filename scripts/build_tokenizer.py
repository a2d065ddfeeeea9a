"""Train the shipped byte-level BPE tokenizers on the mixed corpus in ``data/corpus/``.

Writes ``data/tokenizer-{vocab_size}.json`` for every requested size (default: 16384 for
the "seed" preset and 2048 for the "tiny" preset). Training is made deterministic (one
worker thread, files read in sorted order, no progress bar), so re-running the script
produces byte-identical JSON; the script checks the vocabulary size it got is exactly
the one asked for, because the BPE trainer silently stops early when it runs out of pairs.

Usage::

    python scripts/build_tokenizer.py [--vocab-sizes 16384 2048] [--out data]
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT / "data"
DEFAULT_VOCAB_SIZES = (16384, 2048)
SPECIAL_TOKENS = ["<|endoftext|>"]
CHUNK_LINES = 200


def corpus_chunks(corpus_dir: Path) -> Iterator[str]:
    """Yield the corpus as blocks of lines, newlines kept, in a fixed order.

    Blocks rather than whole files keep memory use per training item small; newlines are
    kept because they are real tokens the model must learn to produce.
    """
    for path in sorted(corpus_dir.glob("*.txt")):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        for start in range(0, len(lines), CHUNK_LINES):
            yield "".join(lines[start : start + CHUNK_LINES])


def train_tokenizer(corpus_dir: Path, vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE: every byte is in the base alphabet, so nothing is ever <unk>."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_chunks(corpus_dir), trainer=trainer)
    got = tokenizer.get_vocab_size()
    if got != vocab_size:
        raise RuntimeError(
            f"trainer produced {got} tokens, not the requested {vocab_size}: "
            "the corpus is too small for this vocabulary size"
        )
    return tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=list(DEFAULT_VOCAB_SIZES))
    parser.add_argument("--out", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_DATA / "corpus")
    args = parser.parse_args()
    # The Rust thread pool starts lazily, on the first training call, so setting these here
    # is early enough. One thread removes any doubt about merge order (ties are broken
    # deterministically anyway: 1 and 8 threads were checked to give identical files).
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.out.mkdir(parents=True, exist_ok=True)
    for vocab_size in args.vocab_sizes:
        tokenizer = train_tokenizer(args.corpus, vocab_size)
        path = args.out / f"tokenizer-{vocab_size}.json"
        tokenizer.save(str(path), pretty=False)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{path.name}\tvocab {vocab_size}\tsha256 {digest}")


if __name__ == "__main__":
    main()
