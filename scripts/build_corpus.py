"""Regenerate the shipped corpus in ``data/corpus/`` from local Debian sources.

This is a maintainer script: the committed text files are the product, and nothing in
the package or the tests runs it. It exists so that anyone can see exactly where every
byte of the corpus came from and rebuild it bit-for-bit on the same system.

Requirements (Debian 12 "bookworm"):

* ``bible-kjv`` and ``bible-kjv-text`` (``apt-get install bible-kjv``) for ``english.txt``;
* ``base-files`` (always installed) for ``/usr/share/common-licenses``;
* ``libpython3.11-stdlib`` / ``libpython3.11-minimal`` for ``/usr/lib/python3.11``.

After running it, update the sizes and SHA-256 sums in ``data/SOURCES.md`` (the script
prints them).

Usage::

    python scripts/build_corpus.py [--out data/corpus]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "data" / "corpus"

# The Pentateuch (Genesis to Deuteronomy): one contiguous, self-contained slice of ~0.8 MB.
KJV_RANGE = "Gen1:1-Deu34:12"

LICENSE_DIR = Path("/usr/share/common-licenses")
PYTHON_LICENSE = Path("/usr/lib/python3.11/LICENSE.txt")
DEBIAN_DOC_DIR = Path("/usr/share/doc")
# The common licences alone are ~240 KB; Debian copyright files of these packages (mostly
# licence text in DEP-5 form) bring the domain over 300 KB. A fixed list keeps it stable.
DEBIAN_COPYRIGHT_PACKAGES = (
    "bash",
    "coreutils",
    "dpkg",
    "findutils",
    "grep",
    "gzip",
    "libc6",
    "sed",
    "tar",
    "util-linux",
)

PERL_LIB = Path("/usr/share/perl/5.36")
PERL_TARGET_BYTES = 400_000
#: The domain that arrives later: not in corpus/, so no trunk or tokenizer ever saw it.
LATER_OUT = REPO_ROOT / "data" / "later"

PYTHON_STDLIB = Path("/usr/lib/python3.11")
PYTHON_TARGET_BYTES = 1_000_000

VERSE_PREFIX = re.compile(r"^\s+\d+ ")


def build_english() -> str:
    """Pentateuch of the King James Bible, one verse per line, verse numbers removed.

    Verse numbers are dropped because they are markup, not prose: a model trained on them
    spends capacity predicting counters. Chapter headings ("Genesis 1") are kept as
    natural section breaks.
    """
    raw = subprocess.run(
        ["bible", "-l0", KJV_RANGE], check=True, capture_output=True, text=True
    ).stdout
    lines = []
    for line in raw.splitlines():
        line = VERSE_PREFIX.sub("", line.rstrip())
        lines.append(line)
    return "\n".join(lines).strip("\n") + "\n"


def _section(title: str, body: str) -> str:
    return f"==== {title} ====\n\n{body.strip()}\n\n"


def build_licenses() -> str:
    """All licence texts in common-licenses, CPython's licence, then Debian copyright files.

    Symlinks (e.g. ``GPL -> GPL-3``) are skipped so no text appears twice.
    """
    parts = []
    for path in sorted(p for p in LICENSE_DIR.iterdir() if p.is_file() and not p.is_symlink()):
        parts.append(_section(path.name, path.read_text(encoding="utf-8")))
    parts.append(_section("Python-3.11", PYTHON_LICENSE.read_text(encoding="utf-8")))
    for package in DEBIAN_COPYRIGHT_PACKAGES:
        path = DEBIAN_DOC_DIR / package / "copyright"
        parts.append(_section(f"debian/{package}", path.read_text(encoding="utf-8")))
    return "".join(parts)


def whole_files(files: Iterable[tuple[str, Path]], target_bytes: int) -> str:
    """Whole source files, each under a ``# ==== label ====`` comment, until `target_bytes`.

    Whole files keep every module syntactically complete; the last file may carry the
    text past the target, so the domain ends at a file boundary.
    """
    parts: list[str] = []
    total = 0
    for label, path in files:
        text = path.read_text(encoding="utf-8")
        chunk = f"# ==== {label} ====\n{text.rstrip()}\n\n"
        parts.append(chunk)
        total += len(chunk.encode("utf-8"))
        if total >= target_bytes:
            break
    return "".join(parts)


def build_python() -> str:
    """Top-level CPython standard-library modules in sorted order, whole files only.

    We stop once the target size is reached so the domain stays close to the other two
    in size.
    """
    files = ((path.name, path) for path in sorted(PYTHON_STDLIB.glob("*.py")))
    return whole_files(files, PYTHON_TARGET_BYTES)


def build_perl() -> str:
    """Perl core modules (``perl-modules-5.36``) in sorted path order, whole files only.

    The domain that arrives after phase 1: a programming language the trunk never saw,
    tokenised with the existing tokenizer, as a user's new domain would be.
    """
    paths = (p for p in sorted(PERL_LIB.rglob("*.pm")) if not p.is_symlink())
    return whole_files(((str(p.relative_to(PERL_LIB)), p) for p in paths), PERL_TARGET_BYTES)


BUILDERS = {"english": build_english, "licenses": build_licenses, "python": build_python}
LATER_BUILDERS = {"perl": build_perl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only-later", action="store_true", help="build data/later/ only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    LATER_OUT.mkdir(parents=True, exist_ok=True)
    builders = [] if args.only_later else [(args.out, n, b) for n, b in BUILDERS.items()]
    builders += [(LATER_OUT, n, b) for n, b in LATER_BUILDERS.items()]
    for folder, name, build in builders:
        data = build().encode("utf-8")
        path = folder / f"{name}.txt"
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        print(f"{path.name}\t{len(data)} bytes\tsha256 {digest}")


if __name__ == "__main__":
    main()
