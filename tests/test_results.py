"""The recorded runs in results/: every file names its provenance and was made with the settings it names."""

import json
from dataclasses import asdict

import pytest

from cvaelib.provenance import RESULTS, provenance, read_results, source_line
from cvaelib.remedies import RemedyConfig, chapter_settings

FILES = sorted(RESULTS.glob("*.json"))


def test_there_are_recorded_runs():
    assert {p.stem for p in FILES} >= {"04_cvae_cifar10", "benchmark_hierarchical_vs_single"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_recorded_run_names_its_provenance(path):
    record = json.loads(path.read_text())
    assert {"profile", "commit", "date", "device", "wall_seconds", "settings"} <= set(record)
    assert record["commit"] != "unknown" and record["wall_seconds"] > 0
    assert "offline copy" in record.get("data", "offline copy")  # CIFAR-10 runs say which training split they saw
    assert record["device"] in source_line(record)


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
