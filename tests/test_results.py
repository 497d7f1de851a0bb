"""The recorded runs in results/: every file names its provenance and was made with the settings it names."""

import ast
import json
from dataclasses import asdict

import jupytext
import pytest

from cvaelib.comparison import difference
from cvaelib.provenance import (
    RESULTS,
    check_recorded_run,
    provenance,
    read_results,
    record_chapter,
    source_line,
)
from cvaelib.remedies import RemedyConfig, chapter_settings

FILES = sorted(RESULTS.glob("*.json"))


# The chapters that record their own full-profile run (benchmarks/record_chapter.py).
RECORDED_CHAPTERS = ["01_vae_mnist", "02_cvae_mnist", "03_cvae_fashion_mnist", "05_structured_output"]


def test_there_are_recorded_runs():
    expected = {"04_cvae_cifar10", "benchmark_hierarchical_vs_single", "benchmark_structured_objectives"}
    expected |= set(RECORDED_CHAPTERS)
    assert {p.stem for p in FILES} >= expected


def settings_in_chapter(chapter: str) -> dict:
    """The ``SETTINGS = dict(smoke=dict(...), full=dict(...))`` of a chapter's code, read without running it."""
    notebook = jupytext.read(RESULTS.parent / "chapters" / f"{chapter}.md")
    source = next(c.source for c in notebook.cells if c.cell_type == "code" and "SETTINGS = dict(" in c.source)
    assign = next(n for n in ast.parse(source).body if isinstance(n, ast.Assign) and n.targets[0].id == "SETTINGS")
    return {kw.arg: {k.arg: ast.literal_eval(k.value) for k in kw.value.keywords} for kw in assign.value.keywords}


@pytest.mark.parametrize("chapter", RECORDED_CHAPTERS)
def test_a_chapters_recorded_run_used_its_full_profile_settings(chapter):
    record = check_recorded_run(chapter, settings_in_chapter(chapter)["full"])
    assert record["figures"] and all((RESULTS / image).exists() for image in record["images"].values())


def test_chapter_5s_gsnn_and_hybrid_rows_were_made_with_its_full_settings():
    full = settings_in_chapter("05_structured_output")["full"]
    expected = dict(
        train_per_class=full["train_per_class"],
        test_per_class=full["test_per_class"],
        epochs=full["cvae_epochs"],
        k=full["k"],
        alpha=0.5,  # the hybrid's weight, as the chapter states it
    )
    record = check_recorded_run("benchmark_structured_objectives", expected)
    figures = record["figures"]
    assert set(figures) == {"gsnn", "hybrid"} and all(set(rows) == {"1", "2", "3"} for rows in figures.values())
    assert all((RESULTS / image).exists() for image in record["images"].values())


def test_record_chapter_writes_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("CVAELIB_RECORD", raising=False)
    assert record_chapter("x", {"a": 1.0}, {"n": 1}, 1.0) is None
    monkeypatch.setenv("CVAELIB_RECORD", str(tmp_path))
    path = record_chapter("x", {"a": (1.23456789, 2)}, {"n": (1, 2)}, 12.0)
    record = json.loads(path.read_text())
    assert record["figures"] == {"a": [1.23457, 2]} and record["settings"] == {"n": [1, 2]}
    assert record["wall_seconds"] == 12.0 and record["images"] == {}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_recorded_run_names_its_provenance(path):
    record = json.loads(path.read_text())
    # judges.json holds one run per dataset, each with its own provenance
    for run in record.values() if path.name == "judges.json" else [record]:
        assert {"profile", "commit", "date", "device", "wall_seconds", "settings"} <= set(run)
        assert run["commit"] != "unknown" and run["wall_seconds"] > 0
        if path.name.startswith(
            ("04_", "benchmark_hierarchical_vs_single", "benchmark_batch_size")
        ):  # CIFAR-10 runs say which split they saw
            assert "offline copy" in run["data"]
        assert run["device"] in source_line(run)
        assert run.get("data", "") in source_line(run)  # a figure carries the data it was made on


def test_chapter_4_remedies_are_the_settings_the_code_makes_from_the_recorded_options():
    table = read_results("04_cvae_cifar10")
    settings = chapter_settings(table["settings"]["warmup"], table["settings"]["free_bits"])
    assert list(table["remedies"]) == list(settings)
    for name, row in table["remedies"].items():
        assert row["remedy"] == asdict(RemedyConfig(**settings[name])), name
        assert (RESULTS / table["samples_png"]).exists()


def test_every_sample_image_a_record_names_exists():
    race = read_results("benchmark_hierarchical_vs_single")
    assert all((RESULTS / m["judged"]["samples_png"]).exists() for m in race["models"].values())


def test_a_missing_record_says_how_to_make_it():
    with pytest.raises(FileNotFoundError, match="results/README.md"):
        read_results("no_such_run")


def test_provenance_names_commit_date_and_device():
    record = provenance(12.34, {"minutes": 1}, data="x")
    assert record["wall_seconds"] == 12.3 and record["settings"] == {"minutes": 1} and record["data"] == "x"
    assert record["commit"] and record["date"].count("-") == 2 and record["device"]


def test_a_recorded_run_with_other_settings_or_failing_checks_is_refused():
    full = settings_in_chapter("05_structured_output")["full"]
    with pytest.raises(ValueError, match="record it again"):
        check_recorded_run("05_structured_output", {**full, "k": 7})

    def failing(figures):
        raise AssertionError(figures["k_curve"]["k"])

    with pytest.raises(AssertionError):
        check_recorded_run("05_structured_output", full, failing)


def test_the_batch_size_readme_says_what_its_record_holds():
    """The benchmarks README's table and verdict for batch 64 against 32, checked against the record."""
    record = read_results("benchmark_batch_size")
    bits = record["final_test_bits_per_dim"]
    d = difference(bits["64"], bits["32"], paired=True, higher_is_better=False)
    assert record["verdict"] == f"batch 64 against 32: {d}"
    readme = " ".join((RESULTS.parent / "benchmarks" / "README.md").read_text().split())
    said = f"**{d.verdict}** (difference {d.mean:+.3f} bits/dim, 95 % interval [{d.low:+.2f}, {d.high:+.2f}])"
    assert said in readme
    for b in ("32", "64"):
        runs = [record["runs"][f"batch{b}_seed{s}"] for s in record["settings"]["seeds"]]
        speeds = " / ".join(f"{r['images_per_second']:.1f}" for r in runs)
        final = " / ".join(f"{r['curve'][-1]['test_bits_per_dim']:.3f}" for r in runs)
        assert f"| {b} | {speeds} |" in readme and f"| **{final}** |" in readme
