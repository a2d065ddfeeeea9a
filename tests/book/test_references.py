"""The bibliography and the glossary: every citation and every term a page uses resolves.

Sphinx with ``-n`` would also report an unknown citation key or glossary term, but
only after building the whole book for minutes; these checks read the sources
directly and say exactly which page uses what. They also hold the bibliography
to a standard Sphinx doesn't check: each entry has the fields a reader needs to
find the work (authors, title, where it appeared, year, a link).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from book_toc import toc_files
from pybtex.database import BibliographyData, Entry, parse_file, parse_string

REPO_ROOT = Path(__file__).resolve().parents[2]
BOOK_DIR = REPO_ROOT / "book"
BIB_PATH = REPO_ROOT / "references.bib"
GLOSSARY_PAGE = BOOK_DIR / "intro.md"

# {cite}`a,b`, {cite:p}`a`, {cite:t}`a`, {cite:ps}`a; b` ... (sphinxcontrib-bibtex roles).
CITE_ROLE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]*)`")
# {term}`trunk` or {term}`experts <expert>`.
TERM_ROLE = re.compile(r"\{term\}`([^`]*)`")

# The fields a reader needs to find the work, by entry type. Every entry also
# needs a url (a free copy where there is one).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "article": ("title", "journal", "year", "url"),
    "inproceedings": ("title", "booktitle", "year", "url"),
    "misc": ("title", "year", "howpublished", "url"),
}


def cited_keys(text: str) -> list[str]:
    """Every citation key in MyST text, in order (a role may cite several, comma-separated)."""
    keys = []
    for match in CITE_ROLE.finditer(text):
        keys += [k.strip() for k in re.split(r"[,;]", match.group(1)) if k.strip()]
    return keys


def used_terms(text: str) -> list[str]:
    """Every glossary term that a {term} role points at (the target, not the shown text)."""
    terms = []
    for match in TERM_ROLE.finditer(text):
        body = match.group(1)
        target = re.search(r"<([^<>]+)>\s*$", body)
        terms.append((target.group(1) if target else body).strip())
    return terms


def glossary_terms(text: str) -> set[str]:
    """The terms defined in the ```{glossary} blocks of a MyST page (lower-cased, as Sphinx matches)."""
    terms: set[str] = set()
    for block in re.findall(r"```\{glossary\}\n(.*?)\n```", text, flags=re.S):
        for line in block.splitlines():
            if line.strip() and not line.startswith((" ", "\t", ":")):
                terms.add(line.strip().lower())
    return terms


def missing_fields(entry: Entry) -> list[str]:
    """The fields this entry lacks for its type (or a note that the type isn't one we check)."""
    kind = entry.type.lower()
    if kind not in REQUIRED_FIELDS:
        return [f"entry type @{kind} (use one of {sorted(REQUIRED_FIELDS)})"]
    missing = [] if entry.persons.get("author") else ["author"]
    return missing + [f for f in REQUIRED_FIELDS[kind] if not entry.fields.get(f, "").strip()]


def page_texts() -> dict[str, str]:
    """The MyST text of every page in book/: markdown files and notebooks' markdown cells."""
    texts = {}
    for path in sorted(BOOK_DIR.glob("*.md")):
        texts[path.name] = path.read_text(encoding="utf-8")
    for path in sorted(BOOK_DIR.glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        texts[path.name] = "\n".join(
            "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in cells
            if c["cell_type"] == "markdown"
        )
    return texts


@pytest.fixture(scope="module")
def bibliography() -> BibliographyData:
    # pybtex refuses duplicate keys, so parsing is already the uniqueness check.
    return parse_file(str(BIB_PATH), bib_format="bibtex")


# --- the parsers, on text where the answer is known -------------------------------------


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("as shown {cite}`fedus2022switch`.", ["fedus2022switch"]),
        ("{cite:p}`a2020, b2021` and {cite:t}`c2022`", ["a2020", "b2021", "c2022"]),
        ("{cite:ps}`a; b`", ["a", "b"]),
        ("no citation, just `code` and {glue:text}`x`", []),
    ],
)
def test_cited_keys_finds_every_key(text: str, keys: list[str]) -> None:
    assert cited_keys(text) == keys


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("the {term}`trunk` is frozen", ["trunk"]),
        ("two {term}`experts <expert>` and {term}`top-k routing`", ["expert", "top-k routing"]),
    ],
)
def test_used_terms_reads_the_target(text: str, terms: list[str]) -> None:
    assert used_terms(text) == terms


def test_glossary_terms_reads_terms_not_definitions() -> None:
    page = "```{glossary}\nTrunk\n  The frozen part.\n\nchecking\ngradient checking\n  Two names.\n```\n"
    assert glossary_terms(page) == {"trunk", "checking", "gradient checking"}


def test_missing_fields_reports_what_an_entry_lacks() -> None:
    data = parse_string(
        "@inproceedings{k, author = {A, B}, title = {T}, year = {2020}}\n"
        "@book{b, author = {A, B}, title = {T}, year = {2020}}\n",
        "bibtex",
    )
    assert missing_fields(data.entries["k"]) == ["booktitle", "url"]
    assert missing_fields(data.entries["b"]) == [
        f"entry type @book (use one of {sorted(REQUIRED_FIELDS)})"
    ]


# --- the book's own sources ------------------------------------------------------------


def test_bibliography_has_at_least_ten_entries(bibliography: BibliographyData) -> None:
    assert len(bibliography.entries) >= 10, sorted(bibliography.entries)


def test_every_entry_has_the_fields_a_reader_needs(bibliography: BibliographyData) -> None:
    problems = {
        key: m for key, entry in bibliography.entries.items() if (m := missing_fields(entry))
    }
    assert not problems, f"references.bib entries lacking fields: {problems}"


@pytest.mark.parametrize("field", ["year"])
def test_every_year_is_a_four_digit_year(bibliography: BibliographyData, field: str) -> None:
    bad = {
        k: e.fields.get(field)
        for k, e in bibliography.entries.items()
        if not re.fullmatch(r"(19|20)\d\d", e.fields.get(field, ""))
    }
    assert not bad, f"entries with a malformed {field}: {bad}"


def test_every_link_is_https_and_every_eprint_an_arxiv_id(bibliography: BibliographyData) -> None:
    bad = {}
    for key, entry in bibliography.entries.items():
        if not entry.fields["url"].startswith("https://"):
            bad[key] = entry.fields["url"]
        eprint = entry.fields.get("eprint")
        if eprint is not None and not re.fullmatch(r"\d{4}\.\d{4,5}", eprint):
            bad[key] = eprint
    assert not bad, f"entries with a bad url or eprint: {bad}"


def test_every_cited_key_is_in_the_bibliography(bibliography: BibliographyData) -> None:
    unknown = {
        page: sorted(set(keys) - set(bibliography.entries))
        for page, text in page_texts().items()
        if set(keys := cited_keys(text)) - set(bibliography.entries)
    }
    assert not unknown, f"citation keys missing from references.bib, by page: {unknown}"


def test_every_entry_is_cited_somewhere(bibliography: BibliographyData) -> None:
    cited = {key for text in page_texts().values() for key in cited_keys(text)}
    uncited = sorted(set(bibliography.entries) - cited)
    assert not uncited, (
        f"references.bib entries no page cites (cite them or remove them): {uncited}"
    )


def test_every_term_role_points_at_a_glossary_entry() -> None:
    defined = glossary_terms(GLOSSARY_PAGE.read_text(encoding="utf-8"))
    assert defined, f"no ```{{glossary}} block in {GLOSSARY_PAGE.name}"
    unknown = {
        page: sorted({t for t in used_terms(text) if t.lower() not in defined})
        for page, text in page_texts().items()
        if any(t.lower() not in defined for t in used_terms(text))
    }
    assert not unknown, f"{{term}} roles without a glossary entry, by page: {unknown}"


@pytest.mark.parametrize(
    "term",
    [
        "trunk",
        "expert",
        "router",
        "static floor",
        "activation",
        "micro-batch",
        "checkpointing",
        "fingerprint",
        "perplexity",
        "top-k routing",
        "balancing loss",
        "phase 1",
        "phase 2",
        "phase 3",
        "oracle routing",
    ],
)
def test_glossary_defines_the_books_terms(term: str) -> None:
    assert term in glossary_terms(GLOSSARY_PAGE.read_text(encoding="utf-8"))


def test_sphinx_reads_the_bibliography_and_a_page_renders_it() -> None:
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert config.get("bibtex_bibfiles") == ["references.bib"]
    pages = [f for f in toc_files() if (REPO_ROOT / f).with_suffix(".md").is_file()]
    rendering = [
        f
        for f in pages
        if "```{bibliography}" in (REPO_ROOT / f).with_suffix(".md").read_text(encoding="utf-8")
    ]
    assert rendering == ["book/references"], (
        f"pages in _toc.yml with a {{bibliography}}: {rendering}"
    )


#: A citation as the notebooks write it (they cannot use {cite}: Colab shows it raw):
#: "[Fedus et al., 2022](url)" or "[Qiu et al. (2025)](url)".
CITATION_LINK = re.compile(r"\[[^\[\]]+?(?:, |\()(\d{4})\)?\]\((https?://[^)\s]+)\)")


def citation_links(text: str) -> list[tuple[str, str]]:
    """(year, url) of every citation-shaped link in `text`."""
    return CITATION_LINK.findall(text)


def test_citation_links_find_both_forms() -> None:
    text = "([Fedus et al., 2022](https://a/b)) and [Qiu et al. (2025)](https://c/d); [a link](x)"
    assert citation_links(text) == [("2022", "https://a/b"), ("2025", "https://c/d")]


def test_every_citation_link_in_a_notebook_is_a_bibliography_entry(
    bibliography: BibliographyData,
) -> None:
    """A notebook's citation links point at references.bib entries, with their year."""
    known = {(e.fields["year"], e.fields["url"]) for e in bibliography.entries.values()}
    found = {
        path.name: citation_links(path.read_text(encoding="utf-8"))
        for path in sorted(BOOK_DIR.glob("*.ipynb"))
    }
    assert sum(len(links) for links in found.values()) >= 10
    unknown = {
        name: sorted(set(links) - known) for name, links in found.items() if set(links) - known
    }
    assert not unknown, f"citation links that match no references.bib entry (year, url): {unknown}"
