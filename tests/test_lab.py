"""JupyterLab, as chapter 0 tells a learner to use it: the course extra installs it with jupyterlab-myst.

The Lab server starts, lists every chapter's MyST markdown as a notebook (jupytext), and loads
jupyterlab-myst as a compatible extension, so that exercise blocks and other directives render.
With ``jupytext-config set-default-viewer`` (chapter 0's one-time step), a double-click in headless
Chromium opens a chapter as a notebook, whose exercise blocks render and whose solutions are collapsed
(needs Debian's chromium and chromium-driver, as ``tests/site`` does), and saving it from Lab leaves its
text unchanged.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("jupyterlab", reason="jupyterlab is not installed: pip install -e '.[course]'")

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.name for p in (ROOT / "chapters").glob("*.md"))
TOKEN = "course-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A Lab server on the repository, with a throwaway runtime folder; its base URL."""
    port = _free_port()
    runtime = tmp_path_factory.mktemp("jupyter-runtime")
    config = tmp_path_factory.mktemp("jupyter-config")  # a learner's ~/.jupyter, empty but for chapter 0's step
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime), "JUPYTER_CONFIG_DIR": str(config)}
    set_viewer = [sys.executable, "-m", "jupytext_config", "set-default-viewer"]  # `jupytext-config set-default-viewer`
    subprocess.run(set_viewer, env=env, check=True, capture_output=True, timeout=60)
    overrides = config / "labconfig" / "default_setting_overrides.json"
    settings = json.loads(overrides.read_text())
    settings["@jupyterlab/docmanager-extension:plugin"]["autosave"] = False  # the test never writes a chapter
    overrides.write_text(json.dumps(settings))
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        f"--port={port}",
        "--ServerApp.ip=127.0.0.1",
        f"--IdentityProvider.token={TOKEN}",
        f"--ServerApp.root_dir={ROOT}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: the test finds a cell through Lab's API
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited:\n{server.stdout.read()}")
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail(f"jupyter lab did not answer within 90 s:\n{server.stdout.read()}")
    yield url
    server.terminate()
    server.wait(timeout=30)


def _get(url: str):
    with urllib.request.urlopen(f"{url}?token={TOKEN}", timeout=30) as response:
        return json.load(response)


def test_lab_lists_every_chapter_as_a_notebook(lab):
    listing = _get(f"{lab}/api/contents/chapters")
    kinds = {item["name"]: item["type"] for item in listing["content"]}
    assert CHAPTERS and {name: kinds.get(name) for name in CHAPTERS} == dict.fromkeys(CHAPTERS, "notebook"), kinds
    chapter = _get(f"{lab}/api/contents/chapters/{CHAPTERS[1]}")
    assert chapter["type"] == "notebook" and chapter["content"]["cells"], "jupytext did not open the chapter"


def test_lab_loads_jupyterlab_myst(lab):
    extensions = {e["name"]: e for e in _get(f"{lab}/lab/api/extensions")}
    myst = extensions.get("jupyterlab-myst")
    assert myst and myst["enabled"] and myst["installed"] and myst["status"] == "ok", myst


def test_jupyterlab_myst_is_compatible_with_this_jupyterlab():
    # The extension manager above does not check versions; `labextension list` does ("not compatible").
    listed = subprocess.run(
        [sys.executable, "-m", "jupyterlab.labextensions", "list"], capture_output=True, text=True, timeout=120
    )
    text = listed.stdout + listed.stderr
    line = next((row for row in text.splitlines() if "jupyterlab-myst" in row and " v" in row), "")
    assert "enabled" in line and "OK" in line and "not compatible" not in text, text


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser():
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed: pip install -e '.[course]'"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def _wait_for(browser, script: str, seconds: float = 90):
    """The first truthy value of a JavaScript expression, polled until ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = browser.execute_script(f"return {script}")
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{script} stayed false for {seconds} s")


def test_a_double_click_opens_a_chapter_as_a_notebook_with_rendered_exercises(lab, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    chapter = "05_structured_output.md"
    browser.get(f"{lab}/lab/tree/chapters?token={TOKEN}&reset")
    _wait_for(
        browser, f"[...document.querySelectorAll('.jp-DirListing-item')].some(e => e.title.includes('{chapter}'))"
    )
    item = next(
        e for e in browser.find_elements(By.CSS_SELECTOR, ".jp-DirListing-item") if chapter in e.get_attribute("title")
    )
    ActionChains(browser).double_click(item).perform()
    # jupytext's "Jupytext Notebook" viewer, not the text editor: a notebook panel with the chapter's cells
    _wait_for(browser, "document.querySelectorAll('.jp-NotebookPanel .jp-MarkdownCell').length > 3")
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not [m for m in severe if "jupytext" in m or "myst" in m or "shared module" in m], severe
    # The first exercise: scroll its cell into view (Lab renders only the cells near the viewport).
    found = browser.execute_script(
        """
        const nb = window.jupyterapp.shell.currentWidget.content;
        const sources = [...nb.model.cells].map(c => c.sharedModel.getSource());
        const i = sources.findIndex(s => s.includes('{exercise} Where does the blur come from?'));
        const j = sources.findIndex(s => s.includes('{solution-end}'));
        if (i >= 0) { nb.activeCellIndex = i; nb.scrollToItem(i); }
        return {i, j, path: window.jupyterapp.shell.currentWidget.context.path};
        """
    )
    assert found["path"] == f"chapters/{chapter}" and 0 <= found["i"] < found["j"], found
    i, j = found["i"], found["j"]
    title = _wait_for(
        browser,
        f"window.jupyterapp.shell.currentWidget.content.widgets[{i}].node"
        ".querySelector('aside.myst-exercise .myst-exercise-title')?.textContent",
    )
    assert "Where does the blur come from?" in title  # a rendered exercise block, not its source
    solution = browser.execute_script(
        f"""
        const widgets = window.jupyterapp.shell.currentWidget.content.widgets;
        const start = widgets[{i}].node.querySelector('details.myst-exercise');
        const inside = widgets.slice({i} + 1, {j});  // the solution's own cells, up to the solution-end cell
        return {{start: start && start.textContent, open: start && start.open,
                 hidden: inside.map(w => w.inputHidden), kinds: inside.map(w => w.model.type)}};
        """
    )
    assert "Solution to" in solution["start"] and not solution["open"], solution
    assert solution["hidden"] and all(solution["hidden"]), solution  # text and code of the solution: collapsed
    assert "code" in solution["kinds"], solution


def test_saving_a_chapter_from_lab_leaves_its_text_unchanged(lab, browser):
    """Lab saves an open chapter (autosave, Ctrl+S) through jupytext: the .md must come back byte for byte,
    not with version lines or another kernel name in its header (jupytext.toml, the chapters' kernelspec)."""
    path = ROOT / "chapters" / "05_structured_output.md"
    before, modified = path.read_bytes(), path.stat().st_mtime_ns
    try:
        browser.get(f"{lab}/lab?token={TOKEN}&reset")
        _wait_for(browser, "window.jupyterapp && window.jupyterapp.commands.hasCommand('docmanager:open')")
        browser.execute_script(
            "window.jupyterapp.commands.execute('docmanager:open', {path: 'chapters/05_structured_output.md'})"
        )
        _wait_for(browser, "document.querySelectorAll('.jp-NotebookPanel .jp-MarkdownCell').length > 3")
        browser.execute_script("window.jupyterapp.commands.execute('docmanager:save')")
        deadline = time.monotonic() + 30
        while path.stat().st_mtime_ns == modified and time.monotonic() < deadline:
            time.sleep(0.2)
        assert path.stat().st_mtime_ns != modified, "Lab did not save the chapter within 30 s"
        after = path.read_bytes()
    finally:
        path.write_bytes(before)  # the repository's copy, whatever happened
    assert after == before, "saving from Lab changed the chapter's text"
