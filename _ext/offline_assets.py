"""Serve the scripts the book's pages need from the site itself, not from a CDN.

MathJax (math), RequireJS and the Jupyter widget manager (widgets saved in the pages) are
fetched once from the npm registry, at pinned versions, into ``_build/offline_assets/``
(never committed), and copied into the site's ``_static/vendor/`` by every book build.
``_config.yml`` points ``mathjax_path`` and ``nb_ipywidgets_js`` at those copies, so the
published site works offline and in a classroom without internet.

As a Sphinx extension (``sphinx.local_extensions`` in ``_config.yml``) it fetches what is
missing before the build. To fetch ahead of time, for instance before going offline:

    python _ext/offline_assets.py

``CVAELIB_WEB_ASSETS=/path`` keeps the files somewhere else (a shared cache).

It also keeps the pages' browser console clean (tests/site checks it): the theme gets a
default colour mode, and a script the theme stack registers twice is written once.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# npm package -> {folder inside the package: folder under vendor/}; the versions are pinned.
PACKAGES = {
    "mathjax@3.2.2": {"es5": "mathjax"},
    "requirejs@2.3.8": {"require.js": "require.js"},
    "@jupyter-widgets/html-manager@1.0.15": {"dist": "html-manager"},
}
# What the pages load from those packages; the build fails if one is missing.
ENTRY_POINTS = ["vendor/mathjax/tex-mml-chtml.js", "vendor/require.js", "vendor/html-manager/embed-amd.js"]
# Two things the widget manager needs to know on these pages, set before it loads:
# - its modules find their fonts relative to their requirejs address, which is the page's
#   folder unless requirejs is told that they live in html-manager/;
# - it typesets widget labels with MathJax 2's API (MathJax.Hub.Queue), and the book loads
#   MathJax 3: a small adapter forwards those calls to MathJax 3's typesetPromise.
WIDGETS_CONFIG = """\
// Loaded after require.js and before html-manager/embed-amd.js.
(function () {
  var here = new URL("html-manager/", document.currentScript.src).href;
  var paths = {"@jupyter-widgets/html-manager/dist": here.replace(/\\/$/, "")};
  ["base", "base7", "controls", "controls7", "html-manager"].forEach(function (name) {
    paths["@jupyter-widgets/" + name] = here + name;
  });
  window.requirejs.config({paths: paths});
  window.__jupyter_widgets_assets_path__ = here;
  // Runs before the widget manager's own "load" handler, which was registered after this one.
  window.addEventListener("load", function () {
    var mathjax = window.MathJax;
    if (mathjax && mathjax.startup && !mathjax.Hub) {
      mathjax.Hub = {Queue: function (job) {
        var element = job && job[2];
        mathjax.startup.promise.then(function () {
          return mathjax.typesetPromise(element ? [element] : undefined);
        });
      }};
    }
  });
})();
"""


def assets_dir():
    """The folder whose ``vendor/`` is copied into the site's ``_static/``."""
    return Path(os.environ.get("CVAELIB_WEB_ASSETS", ROOT / "_build" / "offline_assets")).resolve()


def missing(folder=None):
    folder = Path(folder or assets_dir())
    return [entry for entry in ENTRY_POINTS if not (folder / entry).is_file()]


def fetch(folder=None, quiet=False):
    """Fetch the pinned packages with ``npm pack`` and unpack what the site needs into ``folder``."""
    folder = Path(folder or assets_dir())
    if missing(folder):
        _fetch_packages(folder, quiet)
    config = folder / "vendor" / "widgets-config.js"
    if not config.exists() or config.read_text() != WIDGETS_CONFIG:
        config.write_text(WIDGETS_CONFIG)
    return folder


def _fetch_packages(folder, quiet):
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"npm is needed once to fetch MathJax and the widget manager into {folder}; "
            "install Node.js (npm), or copy a fetched folder there and set CVAELIB_WEB_ASSETS"
        )
    vendor = folder / "vendor"
    with tempfile.TemporaryDirectory() as work:
        for spec, parts in PACKAGES.items():
            done = subprocess.run(
                [npm, "pack", spec, "--pack-destination", work, "--silent"], capture_output=True, text=True
            )
            if done.returncode:
                raise RuntimeError(f"npm pack {spec} failed (is the npm registry reachable?):\n{done.stderr}")
            tarball = Path(work) / done.stdout.strip().splitlines()[-1]
            unpacked = Path(work) / tarball.stem
            with tarfile.open(tarball) as archive:
                try:
                    archive.extractall(unpacked, filter="data")
                except TypeError:  # Python without extraction filters
                    archive.extractall(unpacked)
            for inside, target in parts.items():
                source, target = unpacked / "package" / inside, vendor / target
                if target.exists():
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                target.parent.mkdir(parents=True, exist_ok=True)
                if source.is_dir():
                    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.map", "*.d.ts"))
                else:
                    shutil.copy2(source, target)
            if not quiet:
                print(f"offline assets: {spec} -> {vendor}", file=sys.stderr)
    lost = missing(folder)
    if lost:
        raise RuntimeError(f"after fetching, still missing in {folder}: {lost}")


def _add_static_path(app, config):
    from sphinx.errors import ExtensionError

    try:
        folder = fetch(quiet=True)
    except RuntimeError as error:
        raise ExtensionError(str(error)) from error
    config.html_static_path.append(str(folder))


def _quiet_theme(app, config):
    # Without a default the theme's first page view logs "Got invalid theme mode" as an error.
    config.html_context.setdefault("default_mode", "auto")


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    # sphinx-thebe's inline settings reach the page twice (as a script with no file name,
    # once as None and once as ""); the second copy redeclares a const, a console error on
    # every page. Keep the first copy of each script, in place (the list is the builder's).
    scripts, seen = context.get("script_files", []), set()
    unique = []
    for script in scripts:
        key = (getattr(script, "filename", script) or "", repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app):
    app.connect("config-inited", _add_static_path)
    app.connect("config-inited", _quiet_theme)
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    print(fetch())
