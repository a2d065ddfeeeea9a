"""The book's Sphinx extension that drops repeated page scripts, on Sphinx's own objects."""

from repo_scripts import load_script
from sphinx.builders.html._assets import _JavaScript

dedupe_scripts = load_script("scripts/sphinx_ext/dedupe_scripts.py")

THEBE = 'const THEBE_JS_URL = "x"'


def test_none_and_empty_filename_copies_are_one_script():
    """The real duplicate: Sphinx holds the inline config as filename None and as ''."""
    scripts = [
        _JavaScript("_static/doctools.js", priority=200),
        _JavaScript(None, body=THEBE),
        _JavaScript("_static/sphinx-thebe.js", **{"async": "async"}),
        _JavaScript("", body=THEBE),
    ]
    assert scripts[1] != scripts[3]  # why Sphinx keeps both
    kept = dedupe_scripts.unique_scripts(scripts)
    assert kept == scripts[:3]


def test_different_scripts_all_stay():
    """Negative control: other bodies, files, priorities or attributes are not merged."""
    scripts = [
        _JavaScript(None, body=THEBE),
        _JavaScript(None, body="let a = 1;"),
        _JavaScript(None, body=THEBE, priority=600),
        _JavaScript("a.js"),
        _JavaScript("a.js", defer="defer"),
    ]
    assert dedupe_scripts.unique_scripts(scripts) == scripts


def test_page_context_is_edited_in_place():
    """The builder restores its list object after each page, so edit that object."""
    scripts = [_JavaScript(None, body=THEBE), _JavaScript("", body=THEBE)]
    context = {"script_files": scripts}
    dedupe_scripts.dedupe_page_scripts(None, "p", "page.html", context, None)
    assert context["script_files"] is scripts
    assert len(scripts) == 1
