"""The book build runs every exercise solution and says in the terminal what it is doing.

In JupyterLab, "Run all" skips the solutions that train a model unless ``CVAELIB_EXERCISES=1``
(``cvaelib.profile.train_exercises``). The published pages show every solution's output, so the
build sets it for the kernels it starts, which inherit this process's environment (so do
``cvaelib``'s own settings, such as how torch's threads wait, set when it is imported here).

Executing the chapters takes minutes, during which Sphinx prints nothing. So before the first
chapter runs, the build prints one line: the profile, why it was chosen, and how long the run is
expected to take; then a line as each chapter starts and ends. The expected time is this machine's
last build of the same profile (``_build/chapter_times.json``, written by every build), else the
recorded build in ``results/book_build_<profile>.json`` with the machine it was recorded on.
"""

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAST_BUILD = ROOT / "_build" / "chapter_times.json"  # this machine's last build: seconds per chapter


def _say(text):
    # stderr, flushed: Sphinx's own status line ("reading sources... [ 33%]") has no newline yet
    print(f"\n[course] {text}", file=sys.stderr, flush=True)


def _minutes(seconds):
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def expected_times(profile: str) -> tuple[dict, str]:
    """Seconds per chapter expected in ``profile``, and where the figures come from ({} if nowhere)."""
    last = _read(LAST_BUILD)
    if last and last.get("profile") == profile:
        return last["chapters"], f"this machine's last {profile} build, {last['date']}"
    from cvaelib.provenance import read_results

    recorded = read_results(f"book_build_{profile}", missing_ok=True)
    if recorded:
        return recorded["chapters"], f"recorded on {recorded['device']}, {recorded['date']}"
    return {}, ""


class _Progress:
    def __init__(self):
        self.expected, self.todo = {}, []
        self.started, self.chapter_started, self.times = None, None, {}

    def before_reading(self, app, env, docnames):
        from cvaelib.profile import describe, profile

        active = profile()
        self.todo = sorted(d for d in docnames if d.startswith("chapters/"))
        self.expected, source = expected_times(active)
        total = sum(self.expected.get(d, 0) for d in self.todo)
        known = all(d in self.expected for d in self.todo)
        if not self.todo:
            when = "nothing to execute"
        elif known:
            when = f"expected about {_minutes(total)} ({source})"
        else:
            when = f"no earlier {active} build to estimate its time from"
        _say(f"executing {len(self.todo)} chapters; {describe()}; {when}")
        self.started = time.monotonic()

    def chapter_starts(self, app, docname, source):
        if docname not in self.todo:
            return
        self.chapter_started = time.monotonic()
        guess = f", expected about {_minutes(self.expected[docname])}" if docname in self.expected else ""
        _say(f"{docname}: executing ({self.todo.index(docname) + 1} of {len(self.todo)}{guess})")

    def chapter_done(self, app, doctree):
        docname = app.env.docname
        if docname not in self.todo or self.chapter_started is None:
            return
        now = time.monotonic()
        elapsed, self.chapter_started = now - self.chapter_started, None
        self.times[docname] = round(elapsed, 1)
        _say(f"{docname}: done in {_minutes(elapsed)} ({_minutes(now - self.started)} in all)")

    def finished(self, app, exception):
        if exception is not None or not self.times or set(self.times) != set(self.todo):
            return  # only a whole, successful build is a figure to expect next time
        from cvaelib.provenance import provenance

        total = time.monotonic() - self.started
        record = provenance(total, {}, chapters=self.times)
        LAST_BUILD.parent.mkdir(parents=True, exist_ok=True)
        LAST_BUILD.write_text(json.dumps(record, indent=1) + "\n")
        _say(f"executed {len(self.times)} chapters in {_minutes(total)}; times in {LAST_BUILD.relative_to(ROOT)}")


def setup(app):
    os.environ.setdefault("CVAELIB_EXERCISES", "1")
    import cvaelib  # noqa: F401  (its settings reach the kernels through this process's environment)

    progress = _Progress()
    app.connect("env-before-read-docs", progress.before_reading)
    app.connect("source-read", progress.chapter_starts)
    app.connect("doctree-read", progress.chapter_done)
    app.connect("build-finished", progress.finished)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
