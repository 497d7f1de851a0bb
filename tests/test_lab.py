"""JupyterLab, as chapter 0 tells a learner to use it: the course extra installs it with jupyterlab-myst.

The Lab server starts, lists every chapter's MyST markdown as a notebook (jupytext), and loads
jupyterlab-myst as a compatible extension, so that exercise blocks and other directives render.
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
    ]
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)}
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
