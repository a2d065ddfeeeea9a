"""A domain from a text file: the shipped later domain loads, and every bad file is refused by name."""

from __future__ import annotations

import os

import pytest

from modularforge.files.regular_file import SpecialFileError
from modularforge.training.data import load_tokenizer
from modularforge.training.text_domain import (
    LATER_DIR,
    MIN_TOKENS,
    TextDomainError,
    later_domain,
    load_text_domain,
    read_domain_text,
)

VOCAB = 2048


def test_the_later_domain_loads_with_the_trunks_tokenizer() -> None:
    perl = later_domain("perl", VOCAB)
    assert perl.name == "perl"
    assert len(perl.train) > 150_000 and len(perl.val) > 15_000
    assert int(perl.train.max()) < VOCAB
    text = (LATER_DIR / "perl.txt").read_text(encoding="utf-8")
    tokenizer = load_tokenizer(VOCAB)
    assert (
        tokenizer.decode(perl.train[:50].tolist())
        == text[: len(tokenizer.decode(perl.train[:50].tolist()))]
    )


def test_an_unknown_later_domain_lists_the_ones_there_are() -> None:
    with pytest.raises(ValueError, match="available: perl"):
        later_domain("cobol", VOCAB)


def test_a_users_text_file_becomes_a_domain_named_after_it(tmp_path) -> None:
    path = tmp_path / "recipes.txt"
    path.write_text("Whisk two eggs with a pinch of salt.\n" * 400, encoding="utf-8")
    data = load_text_domain(path, VOCAB)
    assert data.name == "recipes" and len(data.train) > 0 and len(data.val) > 0


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "is empty"),
        (b"text\x00\x01\x02binary", "binary data .a NUL byte at offset 4"),
        (b"caf\xe9 au lait", "not UTF-8 .invalid continuation byte at byte offset 3"),
        (b"short text", f"only .* tokens; a domain needs at least {MIN_TOKENS}"),
    ],
)
def test_bad_text_is_refused_by_name(tmp_path, content, match) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(TextDomainError, match=match) as caught:
        load_text_domain(path, VOCAB)
    assert str(path) in str(caught.value)


def test_a_file_over_the_cap_is_refused_without_reading_it_all(tmp_path) -> None:
    path = tmp_path / "huge.txt"
    path.write_bytes(b"a" * 5000)
    with pytest.raises(TextDomainError, match="larger than 4,096 bytes"):
        read_domain_text(path, max_bytes=4096)
    assert read_domain_text(path, max_bytes=5000) == "a" * 5000  # negative control: at the cap


def test_a_directory_and_a_fifo_are_refused(tmp_path) -> None:
    with pytest.raises(IsADirectoryError):
        load_text_domain(tmp_path, VOCAB)
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(SpecialFileError, match="FIFO"):
        load_text_domain(fifo, VOCAB)
