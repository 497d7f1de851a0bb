"""Benchmarks are not timed here: each runs once on a tiny configuration so it cannot rot."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from cvaelib.judge import BLUR_SIGMAS
from cvaelib.provenance import source_line

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


def test_time_to_quality_runs(data_root, tmp_path, capsys, monkeypatch):
    module = _load("time_to_quality")
    judged_weights, judged = [], module.judged_accuracy

    def judged_keeping_weights(judge, sample, samples_per_class, seed=0):
        if hasattr(sample, "__self__"):  # a model's own sample (the fitted priors' samplers are functions)
            judged_weights.append(torch.cat([p.detach().flatten() for p in sample.__self__.parameters()]))
        return judged(judge, sample, samples_per_class, seed)

    monkeypatch.setattr(module, "judged_accuracy", judged_keeping_weights)
    results = module.main(
        [
            "--datasets",
            "mnist",
            "--peer-epochs",
            "1",
            "--default-epochs",
            "2",
            "--samples-per-class",
            "2",
            "--train-size",
            "1024",
            "--no-command",
            "--components",
            "1",
            "2",
            "--out",
            str(tmp_path / "ttq.json"),
        ]
    )
    r = results[0]
    assert len(r["peer"]) == 1 and all(0 <= acc <= 1 for _, acc in r["default"] + r["peer"])
    # one point per epoch of the one training run, its clock going forward
    assert len(r["default"]) == 2 and 0 < r["default"][0][0] < r["default"][1][0]
    # each point judges its own epoch's weights (the last one once judged the weights before it)
    assert not torch.equal(judged_weights[0], judged_weights[1])
    assert 0 <= r["default_reconstructions_judged"] <= 1
    assert set(r["default_fitted_prior"]) == {1, 2} and all(
        0 <= f["judged"] <= 1 and f["fit_seconds"] > 0 for f in r["default_fitted_prior"].values()
    )
    split = r["default_kl_split"]
    assert [e["class"] for e in split] == list(range(10)) and sum(e["images"] for e in split) == 1024
    record = json.loads((tmp_path / "ttq.json").read_text())
    assert record["settings"]["components"] == [1, 2] and record["results"][0]["dataset"] == "mnist"
    assert {"commit", "date", "device", "wall_seconds"} <= set(record)
    assert list(r["judge_on_blurred_test"]) == list(BLUR_SIGMAS)
    assert r["peer_to_peer_final"] == r["peer"][0][0]  # the peer reaches its own final accuracy at its last epoch
    assert "time to the peer's final" in capsys.readouterr().out


def test_time_to_quality_varies_the_default_only_where_asked(capsys):
    module = _load("time_to_quality")
    assert module.varied_recipe("fashion_mnist") == module.default_recipe("fashion_mnist")
    varied = module.varied_recipe("fashion_mnist", latent_dim=32, beta=0.01)
    assert varied.model.latent_dim == 32 and varied.remedies.beta == 0.01
    assert varied.train == module.default_recipe("fashion_mnist").train
    with pytest.raises(SystemExit):  # refused before any work: the command would time the unchanged default
        module.main(["--datasets", "fashion_mnist", "--beta", "0.1"])
    assert "add --no-command" in capsys.readouterr().err


def test_hierarchical_vs_single_runs_and_resumes(data_root, tmp_path, capsys):
    args = [
        "--minutes",
        "0.02",
        "--eval-every",
        "0.01",
        "--test-images",
        "50",
        "--per-class",
        "3",
        "--size",
        "tiny",
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "race.json"),
    ]
    module = _load("hierarchical_vs_single")
    module.main(args)
    record = json.loads((tmp_path / "race.json").read_text())
    assert {"commit", "date", "device", "wall_seconds", "settings", "data"} <= set(record)
    for name in ("single_latent", "hierarchical"):
        model = record["models"][name]
        assert model["curve"] and all(math.isfinite(p["test_bits_per_dim"]) for p in model["curve"])
        assert (tmp_path / model["judged"]["samples_png"]).exists()
    assert len(record["models"]["hierarchical"]["curve"][0]["test_kl_groups_nats"]) == 3  # tiny: 3 groups
    assert 0 < record["gaussian_bits_per_dim"] < 8  # the same-data yardstick
    deep, single = (record["models"][name]["diagnosis"] for name in ("hierarchical", "single_latent"))
    assert deep["images"] == 50 and len(deep["groups"]) == 3
    assert deep["mutual_information_nats"] is None and single["mutual_information_nats"] is not None
    for g in deep["groups"]:  # each estimate beside its cap, marked when it sits there
        assert g["mutual_information_nats"] <= g["mutual_information_cap_nats"] + 0.01
        assert g["mutual_information_at_cap"] == (
            g["mutual_information_nats"] > 0.99 * g["mutual_information_cap_nats"]
        )
    assert (tmp_path / deep["resampling_png"]).exists() and "resampling_png" not in single
    module.main(args)  # the budget is spent: the second run loads the checkpoints and trains no more
    again = json.loads((tmp_path / "race.json").read_text())
    assert again["models"]["hierarchical"]["curve"] == record["models"]["hierarchical"]["curve"]
    # a finished run of another setting under the same name is refused, never loaded as this one's
    with pytest.raises(ValueError, match="holds a checkpoint of another model or setting"):
        module.main([*(("small" if a == "tiny" else a) for a in args), "--only", "hierarchical"])


def test_remedy_table_runs(data_root, tmp_path, monkeypatch):
    module = _load("remedy_table")
    args = [
        "--per-class",
        "2",
        "--epochs",
        "1",
        "--eval-every",
        "0.01",
        "--test-images",
        "50",
        "--stats-images",
        "50",
        "--samples-per-class",
        "3",
        "--size",
        "tiny",
        "--seeds",
        "2",
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "table.json"),
    ]
    assert module.main(args + ["--only", "none"]) is None and not (tmp_path / "table.json").exists()
    assert module.main(args + ["--only", "warmup", "--only-seeds", "1"]) is None
    judged, compare = [], module.compare
    monkeypatch.setattr(module, "compare", lambda *a, **k: judged.append(1) or compare(*a, **k))
    record = module.main(args)  # the runs made above are read back, not judged again
    assert len(judged) == 4 * 2 + 1 - 1
    assert list(record["remedies"]) == ["none", "warmup", "free_bits", "group_balance", "kl_balance", "beta_1e-5"]
    for name, row in record["remedies"].items():
        assert [s["seed"] for s in row["seeds"]] == ([0] if name == "beta_1e-5" else [0, 1])
        for s in row["seeds"]:
            assert s["groups"] == 3 and len(s["kl_groups_nats"]) == 3 and 0 <= s["judged"] <= 1
            assert len(s["skipped_updates_per_epoch"]) == 1 and 0 <= s["skipped_updates_per_epoch"][0] <= 10
            assert math.isfinite(s["bits_per_dim"]) and s["best_temperature"] in (0.6, 0.8, 1.0)
        bpd = [s["bits_per_dim"] for s in row["seeds"]]
        assert row["intervals"]["bits_per_dim"]["mean"] == pytest.approx(sum(bpd) / len(bpd))
        assert row["bits_per_dim"] == bpd[0]  # the first seed's figures at the top
    assert record["remedies"]["none"]["seeds"][0] != record["remedies"]["none"]["seeds"][1]  # other seeds, other runs
    assert record["remedies"]["beta_1e-5"]["intervals"]["judged"]["interval"] is None
    assert (tmp_path / record["samples_png"]).exists()
    assert 0 < record["gaussian_bits_per_dim"] < 8  # the same-data yardstick
    # the collecting call is short; the record says what the runs it collected took
    minutes = sum(s["training_minutes"] for r in record["remedies"].values() for s in r["seeds"])
    assert record["runs_training_minutes"] == pytest.approx(minutes, abs=0.05)
    # the line formats the record's figure (rounded to 0.1 first), not the sum itself
    assert f"runs that trained for {record['runs_training_minutes']:.0f} minutes in all" in source_line(record)


def test_mean_interval_is_students_t():
    mean_interval = _load("remedy_table").mean_interval
    # [1, 2, 3]: mean 2, standard error 1/sqrt(3), t quantile 4.3027 at 2 degrees of freedom (97.5 %)
    r = mean_interval([1.0, 2.0, 3.0])
    assert r["mean"] == 2 and r["interval"] == pytest.approx([2 - 4.302653 / 3**0.5, 2 + 4.302653 / 3**0.5])
    assert mean_interval([5.0])["interval"] is None and mean_interval([1.0, 1.0])["interval"] == [1.0, 1.0]


def test_structured_objectives_runs_resumes_and_collects(data_root, tmp_path, capsys):
    module = _load("structured_objectives")
    common = ["--epochs", "2", "--k", "3", "--train-per-class", "5", "--test-per-class", "2"]
    common += ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "objectives.json")]
    module.main(["--models", "gsnn:1", "--max-minutes", "0.0001", *common])  # stopped by the clock, checkpointed
    assert "stopped after --max-minutes" in capsys.readouterr().out
    assert (tmp_path / "runs" / "gsnn_1.pt").exists() and not (tmp_path / "runs" / "gsnn_1.json").exists()
    module.main(["--models", "gsnn:1", "gsnn:2", *common])  # goes on; the results file waits for all six
    assert "2 of 6 models done" in capsys.readouterr().out and not (tmp_path / "objectives.json").exists()
    module.main(common)
    record = json.loads((tmp_path / "objectives.json").read_text())
    assert record["profile"] == "smoke" and record["resumed"] == ["gsnn:1"]
    assert set(record["figures"]["gsnn"]["1"]) == {"gsnn_bound", "nll_prior", "spread", "sharpness", "train_seconds"}
    assert {"nelbo", "nll", "gsnn_bound", "nll_prior"} <= set(record["figures"]["hybrid"]["3"])
    assert all((tmp_path / image).exists() for image in record["images"].values())


def test_structured_objectives_rejects_a_bad_model_name_before_any_work(capsys):
    with pytest.raises(SystemExit):
        _load("structured_objectives").parse_args(["--models", "gsnn:4"])
    assert "--models: 'gsnn:4'" in capsys.readouterr().err


def test_contention_runs(data_root, tmp_path, capsys):
    from cvaelib.cli import main

    checkpoint = tmp_path / "m.pt"
    main(
        [
            "train",
            "--dataset",
            "mnist",
            "--epochs",
            "1",
            "--subset",
            "10",
            "--latent-dim",
            "2",
            "--out",
            str(checkpoint),
        ]
        + ["--no-progress", "--data-root", data_root]
    )
    capsys.readouterr()
    _load("contention").main(["--checkpoint", str(checkpoint), "--n", "50", "--repeats", "1", "--variants", "course"])
    out = capsys.readouterr().out
    assert "evaluate, course, idle:" in out and "evaluate, course, busy:" in out
    assert "| course |" in out and ">600 s" not in out


def test_rate_distortion_runs_and_resumes(data_root, tmp_path, capsys):
    args = ["--betas", "1", "8", "--epochs", "1", "--per-class", "5", "--runs", str(tmp_path / "runs")]
    module = _load("rate_distortion")
    record = module.main(args + ["--out", str(tmp_path / "rd.json")])
    assert [p["beta"] for p in record["points"]] == [1, 8] and record["profile"] == "benchmark"
    assert all(p["rate_nats"] >= 0 and p["distortion_nats"] > 0 for p in record["points"])
    again = module.main(args + ["--out", str(tmp_path / "rd2.json")])  # every model resumes from its checkpoint
    assert again["points"] == record["points"]
    with pytest.raises(SystemExit):
        module.main(["--betas", "2", "4"])  # no beta = 1: refused before any work
    assert "include 1" in capsys.readouterr().err


def test_training_speed_runs(data_root, capsys):
    from cvaelib.train import bf16_is_fast

    module = _load("training_speed")
    rows = module.main(["--steps", "2", "--warmup", "1", "--batch-sizes", "4", "--size", "tiny"])
    assert len(rows) == (4 if bf16_is_fast("cpu") else 2) + 1 and all(r["images_per_s"] > 0 for r in rows)
    # the last row: what --arch hierarchical trains with, the average of the weights included
    assert rows[-1]["ema"] and rows[-1]["channels_last"] and rows[-1]["bf16"] == bf16_is_fast("cpu")
    assert "| float32 | contiguous | no | 4 | no |" in capsys.readouterr().out
    # --default-only: the default's precision and layout, and then the default as trained
    rows = module.main(["--steps", "2", "--warmup", "1", "--batch-sizes", "4", "--size", "tiny", "--default-only"])
    assert [(r["bf16"], r["channels_last"]) for r in rows] == [(bf16_is_fast("cpu"), True)] * 2
    assert all(r["warmup_s"] > 0 for r in rows)
    # a flat CVAE (its last row at the recipe's batch of 512: enough images for 3 steps): the conv one as the
    # dataset's default trains it (no EMA), the MLP without a memory layout
    common = ["--steps", "2", "--warmup", "1", "--batch-sizes", "4", "--train-size", "1536", "--dataset", "mnist"]
    rows = module.main([*common, "--arch", "conv"])
    assert len(rows) == (4 if bf16_is_fast("cpu") else 2) + 1 and not rows[-1]["ema"] and rows[-1]["channels_last"]
    rows = module.main([*common, "--arch", "mlp"])
    assert len(rows) == (2 if bf16_is_fast("cpu") else 1) + 1 and not any(r["channels_last"] for r in rows)
    assert rows[-1]["bf16"] == bf16_is_fast("cpu") and "--arch mlp: ModelConfig" in capsys.readouterr().out


def test_evaluate_speed_runs(data_root, tmp_path):
    args = ["--checkpoint", str(tmp_path / "cvae.pt"), "--subset", "5", "--n", "20"]
    result = _load("evaluate_speed").main(args)
    assert result["seconds"] > 0 and result["iwae_k"] == 20 and math.isfinite(result["bits_per_dim"])


def test_long_run_records_its_curve_and_ships_a_model_that_loads(data_root, tmp_path):
    from cvaelib.shipped import load_shipped, manifest

    args = ["--minutes", "0.02", "--eval-every", "0.01", "--epochs", "1", "--size", "tiny", "--iwae-images", "20"]
    args += ["--test-images", "600"]
    args += ["--k", "2", "--per-class", "2", "--fit-per-class", "3", "--runs", str(tmp_path / "runs")]
    args += ["--out", str(tmp_path / "long.json"), "--models", str(tmp_path / "models")]
    _load("long_run").main(args)
    record = json.loads((tmp_path / "long.json").read_text())
    assert {"commit", "date", "device", "wall_seconds", "settings", "data", "training_threads"} <= set(record)
    assert record["speed_switches"]["compile"] is False  # one epoch is too short to win a compilation back
    curve = record["curve"]
    assert curve and all(p["images_per_second"] > 0 and math.isfinite(p["test_bits_per_dim"]) for p in curve)
    assert record["test_bits_per_dim"] == curve[-1]["test_bits_per_dim"] and record["test_images"] == 600
    assert record["iwae"]["k"] == 2 and record["iwae"]["images"] == 20
    for name in ("judged_learned_prior", "judged_fitted_top_prior"):
        judged = record[name]
        assert judged["temperature"] in (0.6, 0.8, 1.0) and 0 <= judged["judged"] <= 1
        assert set(judged["choosing_by_temperature"]) == {"0.6", "0.8", "1.0"}
    entry = manifest(tmp_path / "models")[record["shipped"]["name"]]
    model = load_shipped(record["shipped"]["name"], folder=tmp_path / "models")
    assert model.config.size == "tiny" and model.fitted_prior is not None
    assert entry["check_bits_per_dim_500"] == pytest.approx(record["shipped"]["check_bits_per_dim_500"])
    assert entry["provenance"]["commit"] == record["commit"]
    assert record["schedule"] == [{"num_epochs": 1, "from_minutes": 0, "from_epochs": 0}]


def test_long_run_resumed_with_more_epochs_records_where_the_new_schedule_took_over(tmp_path):
    module = _load("long_run")
    runs = tmp_path / "runs"
    runs.mkdir()
    assert module.planned(runs, 20) == [{"num_epochs": 20, "from_minutes": 0, "from_epochs": 0}]
    (runs / "hierarchical.json").write_text(json.dumps({"curve": [{"minutes": 120.0, "epochs": 17.9}]}))
    assert module.planned(runs, 20) == [{"num_epochs": 20, "from_minutes": 0, "from_epochs": 0}]  # the same plan
    assert module.planned(runs, 30)[-1] == {"num_epochs": 30, "from_minutes": 120.0, "from_epochs": 17.9}
    assert len(module.planned(runs, 30)) == 2


def test_gpu_check_dry_run_lists_every_step_with_an_estimate(capsys):
    module = _load("gpu_check")
    assert module.main(["--dry-run", "--out", "does/not/exist.json"]) == 0
    out = capsys.readouterr().out
    chapters = sorted(p.stem for p in (BENCHMARKS.parent / "chapters").glob("[0-9]*.md"))
    assert "cuda tests" in out and "-m cuda tests" in out and "CVAELIB_PROFILE=full" in out
    for name in chapters:
        assert f"chapters/{name}.ipynb" in out
    # a recorded full run gives its chapter's estimate (CPU minutes: an upper bound)
    assert "01_vae_mnist" in out and "its recorded full run on" in out and "estimated:" in out
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            module.main(["--out", "does/not/exist.json"])
        assert "no CUDA GPU here" in capsys.readouterr().err


def test_ship_defaults_trains_judges_and_ships(data_root, tmp_path):
    from cvaelib.shipped import judged_line, load_shipped, manifest

    args = ["--datasets", "mnist", "--components", "2", "--samples-per-class", "2", "--runs", str(tmp_path / "runs")]
    args += ["--models", str(tmp_path / "models"), "--out", str(tmp_path / "ship.json")]
    _load("ship_defaults").main([*args, "--subset", "10", "--epochs", "1"])
    record = json.loads((tmp_path / "ship.json").read_text())
    figures = record["models"]["mnist"]
    assert figures["fitted_prior_components"] in (1, 2) and set(figures["fitted_prior_choosing"]) == {"1", "2"}
    for key in ("learned_prior_judged", "fitted_prior_judged", "reconstructions_judged", "judge_on_real_test"):
        assert 0 <= figures[key] <= 1, key
    model = load_shipped("mnist_default", folder=tmp_path / "models")
    assert model.fitted_prior.components == figures["fitted_prior_components"]
    line = judged_line(model)  # what chapters 2 and 3 print of a shipped default, from its manifest entry
    assert "Judged on 20 samples each" in line and f"{figures['fitted_prior_judged']:.1%}" in line
    assert manifest(tmp_path / "models")["mnist_default"]["figures"]["samples_per_class"] == 2


def test_ship_vae_trains_and_ships_a_vae_that_loads(data_root, tmp_path):
    from cvaelib.shipped import load_shipped, manifest

    args = ["--epochs", "1", "--subset", "5", "--k", "2", "--iwae-images", "20", "--models", str(tmp_path)]
    figures = _load("ship_vae").main(args)
    entry = manifest(tmp_path)["mnist_vae"]
    assert entry["figures"]["train_images"] == 50 and entry["recipe"] == "chapter 1's full profile"
    assert figures["iwae"]["nats"] <= figures["test_negative_elbo_nats"] + 1  # a bound on other images, K = 2
    model = load_shipped("mnist_vae", folder=tmp_path)
    assert model.num_classes == 0 and model.fitted_prior is None
    assert entry["check_negative_elbo_500"] == pytest.approx(figures["check_negative_elbo_500"])


def test_ship_structured_trains_and_ships_chapter_5s_models_that_load(data_root, tmp_path):
    from cvaelib.shipped import load_shipped, manifest
    from cvaelib.structured import BaselineNet, StructuredCVAE

    args = ["--subset", "2", "--epochs-scale", "0.01", "--k", "2", "--test-images", "20", "--models", str(tmp_path)]
    results = _load("ship_structured").main(args)
    entries = manifest(tmp_path)
    assert set(entries) == {"quadrants_1_nn", "quadrants_1_cvae"}
    assert set(results["nn"]["test_nats"]) == {"nll"} and set(results["cvae"]["test_nats"]) == {"nelbo", "nll"}
    for kind, cls in (("nn", BaselineNet), ("cvae", StructuredCVAE)):
        entry = entries[f"quadrants_1_{kind}"]
        assert entry["num_given"] == 1 and entry["figures"]["train_images"] == 20 and entry["figures"]["epochs"] == 1
        assert type(load_shipped(f"quadrants_1_{kind}", folder=tmp_path)) is cls
        assert entry["check_500"] == pytest.approx(results[kind]["check_500"])


def test_batch_size_compares_seed_by_seed_once_every_run_is_done(data_root, tmp_path, capsys):
    module = _load("batch_size")
    args = ["--minutes", "0.02", "--eval-every", "0.02", "--seeds", "0", "1", "--test-images", "50", "--size", "tiny"]
    args += ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "batch.json")]
    assert module.main([*args, "--only", "32"]) is None  # batch 64 has not trained yet: no record
    assert "the record waits for batch64_seed0, batch64_seed1" in capsys.readouterr().out
    record = module.main([*args, "--only", "64"])
    assert json.loads((tmp_path / "batch.json").read_text()) == record
    assert {"commit", "date", "device", "wall_seconds", "settings", "data"} <= set(record)
    assert list(record["runs"]) == [f"batch{b}_seed{s}" for b in (32, 64) for s in (0, 1)]
    assert all(r["images_per_second"] > 0 and r["curve"] for r in record["runs"].values())
    bits = record["final_test_bits_per_dim"]
    assert [len(bits["32"]), len(bits["64"])] == [2, 2] and all(math.isfinite(b) for b in bits["32"] + bits["64"])
    mean = sum(b - a for a, b in zip(bits["32"], bits["64"])) / 2  # the paired differences' mean, batch 64 - 32
    assert record["difference"]["low"] <= round(mean, 4) == record["difference"]["mean"] <= record["difference"]["high"]
    assert record["verdict"].startswith("batch 64 against 32: ")
    again = module.main(args)  # every run finished: nothing trains, the same figures
    assert again["final_test_bits_per_dim"] == bits


@pytest.mark.parametrize(
    "extra, message", [(["--only", "48"], "--only 48 is not one of"), (["--seeds", "3"], "at least two different")]
)
def test_batch_size_refuses_bad_options(extra, message, capsys):
    with pytest.raises(SystemExit):
        _load("batch_size").parse_args(extra)
    assert message in capsys.readouterr().err
