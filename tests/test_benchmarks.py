"""Benchmarks are not timed here: each runs once on a tiny configuration so it cannot rot."""
import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_quality_runs(real_data_root, tmp_path, capsys):
    result = _load("default_quality").main(["--epochs", "1", "--subset", "20", "--n-per-class", "5",
                                            "--classifier-epochs", "1", "--test-size", "500", "--out", str(tmp_path / "m.pt")])
    assert 0 <= result["judged_accuracy"] <= 1 and result["epochs"] == 1
    assert "judged_accuracy" in capsys.readouterr().out


def test_throughput_runs(real_data_root, capsys):
    rows = _load("throughput").main(["--datasets", "mnist", "--steps", "2"])
    assert [r["loop"] for r in rows] == ["cvaelib", "DataLoader"]
    assert all(r["images_per_s"] > 0 and r["peak_mb"] > 0 for r in rows)
    assert "ratio" in capsys.readouterr().out
