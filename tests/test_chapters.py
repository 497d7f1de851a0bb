"""The chapters' sources: .md only (the .ipynb are generated), all in the table of contents, well formed."""

import shutil
import subprocess
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).parent.parent
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
PAGES = [TOC["root"]] + [entry["file"] for entry in TOC["chapters"]]


def test_every_chapter_is_in_the_toc_and_every_toc_page_exists():
    assert sorted(PAGES) == sorted(f"chapters/{p.stem}" for p in (ROOT / "chapters").glob("*.md"))


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_only_markdown_sources_are_committed():
    tracked = subprocess.run(["git", "ls-files", "chapters"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert tracked and all(name.endswith(".md") for name in tracked), tracked


@pytest.mark.parametrize("page", PAGES)
def test_chapter_is_a_myst_notebook(page):
    notebook = jupytext.read(ROOT / f"{page}.md")
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert any(cell.cell_type == "code" for cell in notebook.cells)


@pytest.mark.parametrize("page", PAGES[1:])
def test_chapter_has_goals_summary_exercises_and_hidden_checks(page):
    notebook = jupytext.read(ROOT / f"{page}.md")
    text = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    assert "will be able to" in text
    assert "## Summary" in text and "## Exercises" in text and "{exercise}" in text
    hidden = [c for c in notebook.cells if c.cell_type == "code" and "remove-cell" in c.metadata.get("tags", [])]
    assert any("assert" in c.source for c in hidden), "a chapter ends with hidden checks of its results"
