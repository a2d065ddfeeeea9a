"""Build the book and look at every chapter page in a real (headless) browser.

Marked ``book``: it builds the whole book once per session (into a temporary
folder, so a stale ``_build/`` can never make it pass) and then opens each page
listed in ``_toc.yml`` from ``file://`` in headless Chromium, with every
non-local request blocked, as a reader without network would see it.

Checks, per page:

- the page's ``<h1>`` is the title of its source (the first ``# `` heading);
- every ``<img>`` in the article loaded (``naturalWidth > 0``), and a page whose
  notebook stores ``image/png`` outputs shows at least that many images;
- no JavaScript error in the console, no uncaught exception and no failed
  resource load (``KNOWN_BENIGN_ERRORS`` is empty);
- a page whose notebook has widget outputs actually rendered widgets (the
  vendored ``@jupyter-widgets/html-manager`` turned the stored widget state
  into ``.jupyter-widgets`` elements);
- no request left the machine (only ``file:``, ``data:`` and ``blob:`` URLs).

A screenshot of each page lands in ``test-artifacts/screenshots/<page>.png``.

How the browser is driven: through the Chrome DevTools Protocol (CDP). Chromium
is started with ``--remote-debugging-port=0`` and writes the port it chose into
``DevToolsActivePort`` in its profile folder; the test opens one tab per page
over HTTP (``/json/new``) and talks to it over a WebSocket with the small
``websocket-client`` package. CDP is what makes the checks reliable: console
messages, exceptions and failed loads arrive as events (``Runtime.*``,
``Log.entryAdded``), DOM facts come from ``Runtime.evaluate`` after the page
has settled, and ``Page.captureScreenshot`` takes the picture. ``--dump-dom``
and ``--screenshot`` on the command line can't report console errors.

Without Chromium the tests skip (install it with ``apt-get install chromium``),
except when ``MODULARFORGE_REQUIRE_BROWSER=1`` or ``CI=true``: then they fail.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from book_toc import toc_files

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = REPO_ROOT / "test-artifacts" / "screenshots"

pytestmark = pytest.mark.book

# Console errors a page may print and still pass: none. Two used to be here:
# sphinx-thebe's doubled inline config (`const THEBE_JS_URL` declared twice;
# scripts/sphinx_ext/dedupe_scripts.py removes the copy) and the theme's
# "invalid theme mode" (_config.yml sets html_context.default_mode). The tuple
# stays so that a future harmless error can be listed with its reason.
KNOWN_BENIGN_ERRORS: tuple[re.Pattern[str], ...] = ()

WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
# Hosts that the widget and MathJax scripts would come from without vendoring.
CDN_HOSTS = ("cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com")

PAGE_SETTLE_TIMEOUT_S = 20.0
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# --------------------------------------------------------------------------
# What the sources say each page should show
# --------------------------------------------------------------------------


def source_of(toc_file: str) -> Path:
    """The .md or .ipynb file behind a _toc.yml entry (written without suffix)."""
    base = REPO_ROOT / toc_file
    candidates = [base] if base.suffix else [base.with_suffix(s) for s in (".ipynb", ".md")]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"_toc.yml lists {toc_file!r}, but no such .ipynb/.md file exists")


@dataclass
class Expected:
    title: str
    min_images: int = 0
    has_widgets: bool = False
    has_widget_state: bool = False


def _first_heading(markdown: str) -> str | None:
    in_fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        elif not in_fence and line.startswith("# "):
            return line[2:].strip()
    return None


def _plain(title: str) -> str:
    """Drop inline Markdown markup so the heading compares with the h1's text."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # links
    return re.sub(r"[`*_]", "", title).strip()


def expected_for(source: Path) -> Expected:
    """What the rendered page must show, read from its source file."""
    if source.suffix == ".md":
        text = source.read_text(encoding="utf-8")
        return Expected(title=_plain(_first_heading(text) or ""))
    nb = json.loads(source.read_text(encoding="utf-8"))
    title = None
    images = 0
    widgets = False
    for cell in nb["cells"]:
        src = "".join(cell.get("source", ""))
        if cell["cell_type"] == "markdown" and title is None:
            title = _first_heading(src)
        if cell["cell_type"] != "code":
            continue
        tags = set(cell.get("metadata", {}).get("tags", []))
        if tags & {"remove-output", "remove-cell"}:
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" in data or "image/svg+xml" in data:
                images += 1
            if WIDGET_VIEW_MIME in data:
                widgets = True
    state = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE_MIME, {})
    return Expected(
        title=_plain(title or ""),
        min_images=images,
        has_widgets=widgets,
        has_widget_state=bool(state.get("state")),
    )


PAGES = toc_files()


def page_id(toc_file: str) -> str:
    """A file name for the page: its path below book/, with '/' as '--'."""
    rel = Path(toc_file)
    if rel.parts and rel.parts[0] == "book":
        rel = Path(*rel.parts[1:])
    return "--".join(rel.with_suffix("").parts)


# --------------------------------------------------------------------------
# Fixtures: one build and one browser per session
# --------------------------------------------------------------------------


def _browser_required() -> bool:
    return os.environ.get("MODULARFORGE_REQUIRE_BROWSER") == "1" or (
        os.environ.get("CI", "").lower() == "true"
    )


def _find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env:
        return env
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def built_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the book once, into a temporary folder, with warnings as errors."""
    out = tmp_path_factory.mktemp("book")
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", "--path-output", str(out)]
    cmd += ["-W", "-n", "--keep-going", str(REPO_ROOT)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        pytest.fail(f"jupyter-book build failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    html = out / "_build" / "html"
    assert (html / "index.html").is_file(), f"no index.html in {html}"
    return html


class CDPError(RuntimeError):
    pass


class Tab:
    """One browser tab, driven over its DevTools WebSocket."""

    def __init__(self, ws_url: str) -> None:
        import websocket  # websocket-client

        self._ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        msg_id = self._next_id
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise CDPError(f"evaluate failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for_event(self, method: str, timeout: float) -> bool:
        if any(e["method"] == method for e in self.events):
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                msg = json.loads(self._ws.recv())
            except Exception:  # timeout
                break
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return True
        self._ws.settimeout(30)
        return False

    def drain(self, seconds: float) -> None:
        """Collect events that arrive within the next `seconds`."""
        self.wait_for_event("__never__", seconds)

    def close(self) -> None:
        self._ws.close()


@dataclass
class Browser:
    process: subprocess.Popen[bytes]
    port: int
    profile: Path
    tabs: list[str] = field(default_factory=list)

    def _http(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read().decode())

    def new_tab(self) -> tuple[str, Tab]:
        info = self._http("/json/new?about:blank", method="PUT")
        return info["id"], Tab(info["webSocketDebuggerUrl"])

    def close_tab(self, target_id: str) -> None:
        req = f"http://127.0.0.1:{self.port}/json/close/{target_id}"
        with urllib.request.urlopen(req, timeout=30):
            pass


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    exe = _find_chromium()
    if exe is None:
        msg = "Chromium not found; install it with `apt-get update && apt-get install -y chromium`"
        if _browser_required():
            pytest.fail(msg + " (required: MODULARFORGE_REQUIRE_BROWSER=1 or CI=true)")
        pytest.skip(msg)
    try:
        import websocket  # noqa: F401
    except ImportError:
        pytest.fail("websocket-client is missing: pip install -r requirements.txt")

    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    args = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        "--mute-audio",
        # Nothing may leave the machine: names never resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    port = None
    while time.monotonic() < deadline and proc.poll() is None:
        if port_file.is_file():
            first = port_file.read_text().splitlines()[:1]
            if first and first[0].isdigit():
                port = int(first[0])
                break
        time.sleep(0.1)
    if port is None:
        proc.kill()
        pytest.fail(f"Chromium ({exe}) did not open its DevTools port (exit code {proc.poll()})")
    try:
        yield Browser(proc, port, profile)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------
# Visiting one page
# --------------------------------------------------------------------------

PAGE_FACTS_JS = r"""
(() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const h1 = article.querySelector('h1');
  let title = null;
  if (h1) {
    const copy = h1.cloneNode(true);
    copy.querySelectorAll('.headerlink').forEach(a => a.remove());
    title = copy.textContent.replace(/\s+/g, ' ').trim();
  }
  const imgs = Array.from(article.querySelectorAll('img'));
  const widgetEls = article.querySelectorAll('.jupyter-widgets, [class*="widget-"]');
  const widgetViews = article.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]');
  return {
    readyState: document.readyState,
    title: title,
    images: imgs.map(i => ({src: i.getAttribute('src'), complete: i.complete, naturalWidth: i.naturalWidth})),
    widgetElements: widgetEls.length,
    widgetViews: widgetViews.length,
    widgetErrors: article.querySelectorAll('.jupyter-widgets-error-widget, .widget-error').length,
    height: Math.ceil(Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)),
    // Output boxes whose content runs past their right edge (hidden or scrolled away).
    overflowing: Array.from(article.querySelectorAll('.cell_output pre, .cell_output .output, div.output pre, pre.overflow-probe'))
      .filter(e => e.scrollWidth > e.clientWidth + 1)
      .map(e => e.textContent.trim().slice(0, 80)),
    // How the book's style sheet (book/_static/outputs.css) lays out printed output.
    outputWhiteSpace: Array.from(article.querySelectorAll('.cell_output pre')).map(e => getComputedStyle(e).whiteSpace),
    // Printed tables (a header, a rule of dashes, rows) whose widest row, laid out
    // unwrapped in the box's own font, is wider than the box: the book's style sheet
    // wraps printed output at spaces, which would break such a table's rows.
    tooWideTables: Array.from(article.querySelectorAll('.cell_output pre, div.output pre, pre.overflow-probe'))
      .flatMap(e => {
        const style = getComputedStyle(e);
        const room = e.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        const ctx = document.createElement('canvas').getContext('2d');
        ctx.font = style.font;
        const lines = e.textContent.split('\n');
        const rule = /^ *-{2,}( +-{2,})* *$/;
        const wide = [];
        lines.forEach((l, i) => {
          if (i === 0 || !rule.test(l) || l.replace(/ /g, '').length < 8) return;
          for (let j = i - 1; j < lines.length && lines[j].trim() !== ''; j++) {
            const px = ctx.measureText(lines[j]).width;
            if (px > room + 1) { wide.push(`${Math.round(px)} px > ${Math.round(room)} px: ${lines[i - 1].trim().slice(0, 60)}`); break; }
          }
        });
        return wide;
      }),
  };
})()
"""


def _errors_from(events: list[dict[str, Any]]) -> list[str]:
    errors = []
    for ev in events:
        method, params = ev["method"], ev.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            parts = []
            for arg in params.get("args", []):
                parts.append(str(arg.get("value", arg.get("description", ""))))
            errors.append("console.error: " + " ".join(parts))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            errors.append("uncaught: " + str(exc.get("description") or details.get("text")))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
    return [e for e in errors if not any(b.search(e) for b in KNOWN_BENIGN_ERRORS)]


def visit(
    browser: Browser, url: str, expect_widgets: bool
) -> tuple[dict, list[str], list[str], bytes]:
    """Load `url`, let it settle, return (facts, errors, requested URLs, PNG)."""
    target_id, tab = browser.new_tab()
    try:
        tab.send("Runtime.enable")
        tab.send("Log.enable")
        tab.send("Page.enable")
        tab.send("Network.enable")
        tab.send("Network.setBlockedURLs", urls=["http://*", "https://*", "ws://*", "wss://*"])
        tab.send(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        tab.events.clear()
        tab.send("Page.navigate", url=url)
        tab.wait_for_event("Page.loadEventFired", PAGE_SETTLE_TIMEOUT_S)
        deadline = time.monotonic() + PAGE_SETTLE_TIMEOUT_S
        facts = tab.evaluate(PAGE_FACTS_JS)
        while time.monotonic() < deadline:
            images_done = all(i["complete"] for i in facts["images"])
            widgets_done = not expect_widgets or facts["widgetElements"] > 0
            if facts["readyState"] == "complete" and images_done and widgets_done:
                break
            tab.drain(0.25)
            facts = tab.evaluate(PAGE_FACTS_JS)
        tab.drain(1.0)  # late console messages (fonts, async scripts)
        facts = tab.evaluate(PAGE_FACTS_JS)
        height = min(max(int(facts["height"]), 900), 12000)
        tab.send(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        tab.drain(0.3)
        shot = tab.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        requested = [
            ev["params"]["request"]["url"]
            for ev in tab.events
            if ev["method"] == "Network.requestWillBeSent"
        ]
        return facts, _errors_from(tab.events), requested, base64.b64decode(shot["data"])
    finally:
        tab.close()
        browser.close_tab(target_id)


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_built_pages_load_no_widget_code_from_a_cdn(built_html: Path) -> None:
    """Widget (and MathJax) scripts come from the vendored copies, never a CDN."""
    offenders = []
    tag = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"([^\"]+)\"", re.I)
    for page in built_html.rglob("*.html"):
        for url in tag.findall(page.read_text(encoding="utf-8", errors="replace")):
            if any(host in url for host in CDN_HOSTS):
                offenders.append(f"{page.relative_to(built_html)}: {url}")
    assert not offenders, "pages load scripts from a CDN:\n" + "\n".join(offenders)
    assert (built_html / "_static" / "widgets" / "embed-amd.js").is_file()
    assert (built_html / "_static" / "widgets" / "require.js").is_file()
    assert (built_html / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()


def test_every_page_declares_each_inline_script_once(built_html: Path) -> None:
    """sphinx-thebe's inline config (`const THEBE_JS_URL`) appears once per page: a second
    copy is a SyntaxError in the console (scripts/sphinx_ext/dedupe_scripts.py)."""
    inline = re.compile(r"<script>(.*?)</script>", re.S)
    pages = sorted(built_html.rglob("book/*.html"))
    assert len(pages) >= 10
    for page in pages:
        bodies = inline.findall(page.read_text(encoding="utf-8"))
        assert sum("const THEBE_JS_URL" in b for b in bodies) == 1, page.name
        repeated = {b for b in bodies if bodies.count(b) > 1}
        assert not repeated, f"{page.name}: {sorted(repeated)[:2]}"


@pytest.mark.parametrize("toc_file", PAGES, ids=[page_id(p) for p in PAGES])
def test_page_renders_in_browser(toc_file: str, built_html: Path, browser: Browser) -> None:
    source = source_of(toc_file)
    expected = expected_for(source)
    html_path = built_html / Path(toc_file).with_suffix(".html")
    assert html_path.is_file(), f"{toc_file} was not built to {html_path}"
    if expected.has_widgets:
        assert expected.has_widget_state, (
            f"{source.name} has widget outputs but no saved widget state; "
            "execute it with `make execute-notebooks` (jupyter execute stores the state)"
        )

    facts, errors, requested, png = visit(browser, html_path.as_uri(), expected.has_widgets)

    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    (SCREENSHOT_DIR / f"{page_id(toc_file)}.png").write_bytes(png)

    assert facts["title"] == expected.title, (
        f"h1 is {facts['title']!r}, source says {expected.title!r}"
    )
    broken = [i["src"] for i in facts["images"] if i["naturalWidth"] == 0]
    assert not broken, f"images that did not load: {broken}"
    assert len(facts["images"]) >= expected.min_images, (
        f"{source.name} stores {expected.min_images} image outputs, "
        f"the page shows {len(facts['images'])}"
    )
    assert not errors, "console errors:\n" + "\n".join(errors)
    assert not facts["overflowing"], "output boxes overflow horizontally:\n" + "\n".join(
        facts["overflowing"]
    )
    assert set(facts["outputWhiteSpace"]) <= {"pre-wrap"}, (
        "printed output is not wrapped: is book/_static/outputs.css in the build?"
    )
    assert not facts["tooWideTables"], "printed tables wider than the column:\n" + "\n".join(
        facts["tooWideTables"]
    )
    external = [u for u in requested if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert not external, "the page requested non-local URLs:\n" + "\n".join(external)
    if expected.has_widgets:
        assert facts["widgetViews"] > 0, "widget outputs were not written into the page"
        assert facts["widgetElements"] > 0, "widgets did not render (no .jupyter-widgets element)"
        assert facts["widgetErrors"] == 0, "a widget rendered as an error"


def test_negative_control_overflow_and_thrown_error_are_caught(
    tmp_path: Path, browser: Browser
) -> None:
    """The page checks can fail: an overflowing output box and a thrown error are reported."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><body><main><h1>Bad</h1>"
        '<div class="cell_output"><pre style="width:300px;overflow-x:auto">'
        + "x"
        * 400
        + "</pre></div>"
        # A table as the book's style sheet shows it: wrapped at spaces, so the box
        # does not overflow, but its rows are broken.
        '<div class="cell_output"><pre style="width:300px;white-space:pre-wrap">'
        + "name        "
        + "value " * 20
        + "\n"
        + "----  " * 22
        + "\n"
        + "row         "
        + "1.0   " * 20
        + "</pre></div>"
        "<script>throw new Error('negative control');</script>"
        "</main></body></html>",
        encoding="utf-8",
    )
    facts, errors, _, _ = visit(browser, page.as_uri(), expect_widgets=False)
    assert facts["overflowing"] and facts["overflowing"][0].startswith("xxx")
    assert facts["tooWideTables"] and "name" in facts["tooWideTables"][0]
    assert any("negative control" in e for e in errors)
