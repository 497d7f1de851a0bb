"""Benchmarks are not timed here: each runs once on a tiny configuration so it cannot rot."""

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_quality_runs(data_root, tmp_path, capsys):
    result = _load("default_quality").main(
        [
            "--epochs",
            "1",
            "--subset",
            "20",
            "--n-per-class",
            "5",
            "--classifier-epochs",
            "1",
            "--test-size",
            "500",
            "--out",
            str(tmp_path / "m.pt"),
        ]
    )
    assert 0 <= result["judged_accuracy"] <= 1 and result["epochs"] == 1
    assert "judged_accuracy" in capsys.readouterr().out


def test_throughput_runs(data_root, capsys):
    rows = _load("throughput").main(
        [
            "--datasets",
            "mnist",
            "--steps",
            "2",
            "--bf16",
            "--quality",
            "1000",
            "--max-epochs",
            "1",
            "--train-size",
            "256",
        ]
    )
    assert [(r["loop"], r["switches"]) for r in rows] == [
        ("DataLoader", "none"),
        ("cvaelib", "none"),
        ("DataLoader", "--bf16"),
        ("cvaelib", "--bf16"),
    ] * 2
    assert all(r["peak_mb"] > 0 for r in rows) and rows[0]["speedup"] == 1.0
    assert all(r["images_per_s"] > 0 for r in rows[:4]) and all(r["seconds"] > 0 and r["epochs"] == 1 for r in rows[4:])
    out = capsys.readouterr().out
    assert "x usual" in out and "time to quality" in out


def test_remedy_table_runs(data_root, tmp_path, capsys):
    rows = _load("remedy_table").main(
        [
            "--per-class",
            "4",
            "--epochs",
            "1",
            "--latent-dim",
            "8",
            "--batch-size",
            "20",
            "--test-per-class",
            "3",
            "--judge-per-class",
            "5",
            "--judge-epochs",
            "1",
            "--samples-per-class",
            "2",
            "--only",
            "constant",
            "collapse",
            "--runs",
            str(tmp_path),
        ]
    )
    assert set(rows) == {"real test images", "constant", "collapse"}
    assert rows["constant"]["samples"].shape == (20, 3, 32, 32) and (tmp_path / "samples.png").exists()
    assert "| collapse |" in capsys.readouterr().out


def test_time_to_quality_runs(data_root, capsys):
    results = _load("time_to_quality").main(
        [
            "--datasets",
            "mnist",
            "--peer-epochs",
            "1",
            "--default-epochs",
            "1",
            "--samples-per-class",
            "2",
            "--judge-epochs",
            "1",
            "--train-size",
            "1024",
            "--no-command",
        ]
    )
    r = results[0]
    assert len(r["default"]) == len(r["peer"]) == 1 and all(0 <= acc <= 1 for _, acc in r["default"] + r["peer"])
    assert r["peer_to_peer_final"] == r["peer"][0][0]  # the peer reaches its own final accuracy at its last epoch
    assert "time to the peer's final" in capsys.readouterr().out
