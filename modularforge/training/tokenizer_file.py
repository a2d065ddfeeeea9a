"""Reading tokenizer files and checking text before it reaches the tokenizer.

The `tokenizers` library is a Rust extension: on a damaged file it raises a bare
`Exception` without the path, and on text that is not valid Unicode a
`TypeError`. Both are turned here into `ValueError`s that say which file or which
character is wrong and how to fix it.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

__all__ = ["check_text", "parse_tokenizer"]


def parse_tokenizer(path: Path, raw: bytes, rebuild: str) -> Tokenizer:
    """A tokenizer from the file's bytes, or a `ValueError` naming the file and the fix.

    The `tokenizers` library reports a damaged file as a bare `Exception` with no
    path ("expected value at line 1 column 1"); the user needs to know which file
    it was and that rebuilding it is the cure.
    """
    if not raw.strip():
        raise ValueError(f"tokenizer file {path} is empty; {rebuild}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.reason == "unexpected end of data":  # a multi-byte character cut off
            raise ValueError(
                f"tokenizer file {path} ends in the middle of a character (truncated?); {rebuild}"
            ) from None
        raise ValueError(
            f"tokenizer file {path} is binary, not JSON text (byte {error.start} is not "
            f"UTF-8); {rebuild}"
        ) from None
    try:
        return Tokenizer.from_str(text)
    except Exception as error:  # noqa: BLE001 - tokenizers raises a bare Exception
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise ValueError(
            f"tokenizer file {path} is not a valid tokenizer ({reason}); {rebuild}"
        ) from None


def check_text(text: object) -> str:
    """Return `text` if it is a `str` of valid Unicode; otherwise a `ValueError` saying why.

    A lone surrogate (say "\\ud800", which comes out of decoding bad bytes with
    ``errors="surrogateescape"``, as Python does for command-line arguments) has no
    UTF-8 form, and the tokenizer would fail on it with a bare TypeError.
    """
    if not isinstance(text, str):
        raise ValueError(f"text to encode must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"text holds a lone surrogate {text[error.start]!r} (U+{ord(text[error.start]):04X}) "
            f"at character {error.start}, which is not valid Unicode; decode the input with "
            "errors='replace' or remove that character"
        ) from None
    return text
