"""The built book in a real browser: headless Chromium opens every chapter page.

For each page of ``_toc.yml`` it checks that the page loads with no console error and no
request leaving the machine (MathJax and the widget manager come from the site itself),
that its figures are present and decoded and none is shown twice, that its math is typeset by MathJax, that saved
widgets render, that every Markdown table a cell displayed is rendered as a table (not shown as its ``| a | b |``
text), that the profile line wraps instead of hiding behind a scroll bar, and that every internal link resolves
(page and anchor). It saves a
screenshot of each page in ``_build/screenshots/``.

Marked ``site`` and left out of the default test run: build the book, then

    jupyter-book build . --all -W -n --keep-going
    python -m pytest tests/site -m site

Needs the Debian packages chromium and chromium-driver (``/usr/bin/chromium``,
``/usr/bin/chromedriver``) and the Python package selenium. ``CVAELIB_BOOK=/path`` tests
the book built in another folder (its ``_toc.yml`` and ``_build/html``).
"""

import base64
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
import yaml

pytestmark = pytest.mark.site

ROOT = Path(__file__).resolve().parent.parent.parent
BOOK = Path(os.environ.get("CVAELIB_BOOK", ROOT)).resolve()
SITE = BOOK / "_build" / "html"
SCREENSHOTS = BOOK / "_build" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
TIMEOUT = 30  # seconds a page may take to load, typeset and render


def _pages():
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    pages = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        pages += [entry["file"] for entry in part.get("chapters", [])]
    return [re.sub(r"\.(md|ipynb)$", "", page) for page in pages]


PAGES = _pages()


def _why_skip():
    if not (SITE / "index.html").exists():
        return f"no built site in {SITE}: build the book first (jupyter-book build .)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing: apt-get install chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[course]'"
    return None


if _why_skip():
    pytest.skip(_why_skip(), allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402


class _Handler(http.server.SimpleHTTPRequestHandler):
    failed = []  # (status, path) of every request the server could not answer

    def log_message(self, *args):
        pass

    def send_error(self, code, message=None, explain=None):
        if self.path != "/favicon.ico":  # asked for by the browser itself, not by a page
            type(self).failed.append((code, self.path))
        super().send_error(code, message, explain)


@pytest.fixture(scope="module")
def server():
    """The built site over HTTP on 127.0.0.1, as a host serves it (fonts and scripts load as on the web)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(SITE)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
        # Nothing but the local server resolves: a page asking a CDN fails loudly.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a driver or a browser
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(TIMEOUT)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, script, timeout=TIMEOUT):
    """Poll a JavaScript condition; whether it came true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.execute_script(script):
            return True
        time.sleep(0.2)
    return False


def _screenshot(driver, path):
    """A full-page PNG (at most 12000 px tall) through the DevTools protocol."""
    height = min(12000, driver.execute_script("return document.documentElement.scrollHeight"))
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1},
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


# The rule under a Markdown table's header, as it reads when the table was not rendered: |---| or, once
# typographic dashes have been applied to the text, |—|.
RAW_TABLE_RULE = re.compile(r"\|[ \t]*:?(?:-{3,}|[\u2013\u2014]-*):?[ \t]*\|")
# The article's text outside code and printed output (a pipe table in a code listing is code, not a table).
ARTICLE_PROSE_JS = """
const copy = (document.querySelector('article') || document.body).cloneNode(true);
copy.querySelectorAll('pre, code, script, style, .highlight').forEach(e => e.remove());
return copy.textContent;
"""


def raw_tables(text: str) -> list[str]:
    """The lines of ``text`` that hold a Markdown table rule, that is, a table shown as text."""
    return [line.strip() for line in text.splitlines() if RAW_TABLE_RULE.search(line)]


FIGURE_AS_TEXT = re.compile(r"<Figure size \d+x\d+ with \d+ Axes>")


def _expected_figures(page):
    """Image outputs of the executed notebook shown on the page, and figures that lost their image.

    A figure displayed as text only (``<Figure size 640x480 with 1 Axes>``) means the kernel
    drew with a non-inline matplotlib backend, such as MPLBACKEND=Agg left set for the build.
    """
    executed = SITE.parent / "jupyter_execute" / f"{page}.ipynb"
    if not executed.exists():
        return 0, 0
    notebook = json.loads(executed.read_text())
    images = lost = 0
    for cell in notebook["cells"]:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if cell["cell_type"] != "code" or tags & {"remove-cell", "remove-output"}:
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if {"image/png", "image/jpeg", "image/svg+xml"} & set(data):
                images += 1
            elif FIGURE_AS_TEXT.search("".join(data.get("text/plain", ""))):
                lost += 1
    return images, lost


def _repeated_images(browser, server):
    """Images of the page's article whose bytes appear more than once: {first src: count}."""
    sources = browser.execute_script("return Array.from(document.querySelectorAll('article img')).map(img => img.src)")
    seen = {}
    for src in sources:
        parts = urlsplit(src)
        if parts.scheme == "data":
            content = base64.b64decode(src.split(",", 1)[1]) if ";base64," in src else src.encode()
        elif src.startswith(server):
            path = SITE / unquote(parts.path[len(urlsplit(server).path) :])
            if not path.is_file():
                continue  # reported as broken elsewhere
            content = path.read_bytes()
        else:
            continue
        digest = hashlib.sha256(content).hexdigest()
        first, count = seen.get(digest, (src, 0))
        seen[digest] = (first, count + 1)
    return {first: count for first, count in seen.values() if count > 1}


@functools.lru_cache(maxsize=None)
def _ids(html_file):
    text = Path(html_file).read_text(errors="replace")
    return set(re.findall(r'\bid="([^"]+)"', text)) | set(re.findall(r'\bname="([^"]+)"', text))


@pytest.mark.parametrize("page", PAGES)
def test_page_in_the_browser(page, server, browser):
    html = SITE / f"{page}.html"
    assert html.exists(), f"{page} is in _toc.yml but {html} was not built"
    browser.get_log("browser"), browser.get_log("performance")  # start from empty logs
    _Handler.failed.clear()
    problems = []  # every check reports here, so one run shows everything wrong with a page
    started = time.monotonic()
    browser.get(urljoin(server, f"{page}.html"))
    if not _wait(browser, "return document.readyState === 'complete'"):
        problems.append(f"the page did not finish loading in {TIMEOUT} s")
    if not browser.title.strip():
        problems.append("the page has no title")

    # Math: every math node typeset by MathJax, none with a TeX error.
    math_nodes = browser.execute_script("return document.querySelectorAll('article .math').length")
    if math_nodes:
        if not _wait(
            browser, f"return document.querySelectorAll('article .math mjx-container').length >= {math_nodes}"
        ):
            typeset = browser.execute_script("return document.querySelectorAll('article .math mjx-container').length")
            problems.append(f"MathJax typeset {typeset} of {math_nodes} math nodes")
        errors = browser.execute_script(
            "return Array.from(document.querySelectorAll('mjx-merror'))"
            ".map(e => e.getAttribute('data-mjx-error') || e.textContent)"
        )
        if errors:
            problems.append(f"MathJax could not typeset: {errors}")

    # Figures: every image decoded, at least as many as the notebook's image outputs.
    if not _wait(browser, "return Array.from(document.images).every(img => img.complete)"):
        problems.append(f"images still loading after {TIMEOUT} s")
    images = browser.execute_script(
        "return Array.from(document.querySelectorAll('article img'))"
        ".map(img => [img.getAttribute('src'), img.naturalWidth, img.naturalHeight])"
    )
    broken = [src for src, width, height in images if not (width and height)]
    if broken:
        problems.append(f"images that did not render: {broken}")
    repeated = _repeated_images(browser, server)
    if repeated:
        problems.append(
            f"the same image shown more than once (a cell ending on a bare figure is drawn twice): {repeated}"
        )
    expected, lost = _expected_figures(page)
    if lost:
        problems.append(
            f"{lost} figures reached the page as text, not images: build the book without "
            "MPLBACKEND=Agg so that the kernel draws inline"
        )
    if len(images) < expected:
        problems.append(f"{expected} figures in the executed notebook, {len(images)} on the page")

    # Widgets saved with the page: the widget manager renders them (no kernel needed).
    widget_views = browser.execute_script(
        "return document.querySelectorAll('script[type=\"application/vnd.jupyter.widget-view+json\"]').length"
    )
    if widget_views and not _wait(browser, "return document.querySelectorAll('.jupyter-widgets').length > 0"):
        problems.append(f"{widget_views} saved widget views, none rendered")

    # Tables: every Markdown table a cell displayed is a table on the page, not its pipe text.
    shown_as_text = raw_tables(browser.execute_script(ARTICLE_PROSE_JS))
    if shown_as_text:
        problems.append(f"{len(shown_as_text)} Markdown tables shown as text, not rendered: {shown_as_text[:3]}")
    # The profile line at the top of a chapter wraps on a narrow page instead of scrolling sideways.
    hidden = browser.execute_script(
        "return Array.from(document.querySelectorAll('article div.cell_output pre'))"
        ".filter(p => p.textContent.includes('profile: ') && p.scrollWidth > p.clientWidth + 1)"
        ".map(p => p.textContent.slice(0, 80))"
    )
    if hidden:
        problems.append(f"printed lines cut off behind a horizontal scroll bar: {hidden}")

    # Internal links: every target page exists, and so does every anchor.
    links = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    unresolved = set()
    for link in links:
        parts = urlsplit(link)
        if parts.scheme not in ("http", "https") or not link.startswith(server):
            continue  # mailto:, javascript:, or external (not followed: the site must work offline)
        target = SITE / unquote(parts.path[len(urlsplit(server).path) :])
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            unresolved.add(link)
        elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _ids(target):
            unresolved.add(link)
    if unresolved:
        problems.append(f"internal links that do not resolve: {sorted(unresolved)}")

    _screenshot(browser, SCREENSHOTS / f"{page.replace('/', '__')}.png")
    elapsed = time.monotonic() - started

    # Nothing left the machine, nothing was missing, nothing was logged as an error.
    requests = [json.loads(entry["message"])["message"] for entry in browser.get_log("performance")]
    outside = sorted(
        {
            r["params"]["request"]["url"]
            for r in requests
            if r["method"] == "Network.requestWillBeSent"
            and urlsplit(r["params"]["request"]["url"]).scheme in ("http", "https")
            and not r["params"]["request"]["url"].startswith(server)
        }
    )
    if outside:
        problems.append(f"requests that leave the site (a CDN?): {outside}")
    if _Handler.failed:
        problems.append(f"requests the site could not answer: {_Handler.failed}")
    errors = [
        entry["message"]
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and "/favicon.ico " not in entry["message"]
    ]
    if errors:
        problems.append(f"console errors: {errors}")
    print(
        f"{page}: {len(images)} figures, {math_nodes} math nodes, {widget_views} widget views, "
        f"{len(links)} links, {elapsed:.1f} s"
    )
    assert not problems, f"{page}:\n- " + "\n- ".join(problems)


def test_raw_tables_are_found():
    """The check above finds a table shown as text, in both spellings of its rule, and nothing else."""
    assert raw_tables("| model | nats |\n|---|---|\n| a | 1 |") == ["|---|---|"]
    assert raw_tables("| model | nats | |\u2014|\u2014| | a | 1 |")
    assert not raw_tables("a | b, and a rule --- in prose; |x| = 3")


def test_no_page_loads_a_script_from_a_cdn():
    pages = sorted(SITE.rglob("*.html"))
    assert pages
    remote = {}
    for html in pages:
        sources = re.findall(r'<script[^>]*\bsrc="([^"]+)"', html.read_text(errors="replace"))
        sources = [src for src in sources if re.match(r"(https?:)?//", src)]
        if sources:
            remote[str(html.relative_to(SITE))] = sources
    assert not remote, f"scripts loaded from outside the site: {remote}"
    assert (SITE / "_static" / "vendor" / "mathjax" / "tex-mml-chtml.js").is_file()


@pytest.mark.parametrize("page", [p for p in PAGES if Path(p).name[:2] in ("01", "02", "03", "04", "05")])
def test_every_chapter_page_shows_a_diagram(page):
    """Each chapter draws a diagram (cvaelib.diagrams): an image, then its caption starting "Diagram:"."""
    html = (SITE / f"{page}.html").read_text(errors="replace")
    caption = html.find("Diagram:")
    assert caption > 0, f"{page}: no diagram caption"
    image = html.rfind("<img", 0, caption)  # the diagram: a cell's output image, just above its caption
    assert image > 0 and "_images/" in html[image : html.find(">", image)], (
        f"{page}: no image above the diagram's caption"
    )
