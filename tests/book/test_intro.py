"""The introduction's maps stay true: every chapter is described, every package folder placed."""

from __future__ import annotations

import re
from pathlib import Path

from book_toc import toc_files

REPO_ROOT = Path(__file__).resolve().parents[2]
INTRO = (REPO_ROOT / "book" / "intro.md").read_text(encoding="utf-8")


def section(title: str, text: str = INTRO) -> str:
    """The body of the `## title` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1)


def code_map_folders(text: str = INTRO) -> list[str]:
    return re.findall(r"^\| `modularforge/(\w+)/` \|", section("Where the code lives", text), re.M)


def test_every_chapter_is_described() -> None:
    described = section("What the chapters cover")
    chapters = [f for f in toc_files() if f not in {"book/intro", "book/references"}]
    missing = [f for f in chapters if f"({Path(f).name}." not in described]
    assert missing == []


def test_code_map_places_every_package_folder_once() -> None:
    folders = sorted(
        p.name for p in (REPO_ROOT / "modularforge").iterdir() if (p / "__init__.py").exists()
    )
    listed = code_map_folders()
    assert sorted(listed) == folders
    assert len(set(listed)) == len(listed)


def test_code_map_names_only_existing_chapters() -> None:
    numbers = {Path(f).name.split("_")[0] for f in toc_files()}
    for row in re.findall(
        r"^\| `modularforge/\w+/` \|.*\| ([^|]+) \|$", section("Where the code lives"), re.M
    ):
        for number in re.findall(r"\w+", row):
            assert number == "each" or re.sub(r"^(\d)(?!\d)", r"0\1", number) in numbers, row


def test_code_map_check_can_fail() -> None:
    """Negative control: a map that forgets a folder is caught."""
    broken = INTRO.replace("| `modularforge/lean/` |", "| lean |")
    assert "lean" not in code_map_folders(broken)
