import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from cvaelib import load_checkpoint
from cvaelib.cli import main


def test_train_sample_evaluate_end_to_end(data_root, tmp_path, capsys):
    ckpt = tmp_path / "cvae.pt"
    main(
        [
            "train",
            "--dataset",
            "mnist",
            "--epochs",
            "1",
            "--subset",
            "30",
            "--latent-dim",
            "4",
            "--out",
            str(ckpt),
            "--device",
            "cpu",
            "--no-progress",
            "--data-root",
            data_root,
        ]
    )
    figures = json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1])
    assert 0 < figures["test_negative_elbo_nats"] < 600  # 784 pixels; an untrained model is ~540
    model = load_checkpoint(ckpt)
    assert model.meta["dataset"] == "mnist" and model.latent_dim == 4 and model.config.prior == "learned"

    out = tmp_path / "samples.npz"
    main(["sample", "--checkpoint", str(ckpt), "--n-per-class", "3", "--out", str(out), "--device", "cpu"])
    with np.load(out) as f:
        assert f["images"].dtype == np.float32 and f["images"].shape == (30, 1, 28, 28)
        assert 0 <= f["images"].min() and f["images"].max() <= 1
        assert f["labels"].dtype == np.int64 and f["labels"].tolist() == sorted(list(range(10)) * 3)

    capsys.readouterr()
    main(["evaluate", "--checkpoint", str(ckpt), "--k", "3", "--n", "100", "--device", "cpu", "--data-root", data_root])
    result = json.loads(capsys.readouterr().out)
    for key in ("negative_elbo_nats", "bits_per_dim", "iwae_nats", "active_units", "mutual_information_nats"):
        assert key in result
    assert result["iwae_nats"] < result["negative_elbo_nats"]


def test_train_refuses_to_resume_a_different_model(data_root, tmp_path):
    ckpt = tmp_path / "m.pt"
    args = [
        "train",
        "--dataset",
        "mnist",
        "--epochs",
        "1",
        "--subset",
        "10",
        "--out",
        str(ckpt),
        "--device",
        "cpu",
        "--no-progress",
        "--data-root",
        data_root,
    ]
    main(args + ["--latent-dim", "2"])
    with pytest.raises(SystemExit, match="holds a checkpoint of another model"):
        main(args + ["--latent-dim", "3"])
    assert load_checkpoint(ckpt).latent_dim == 2  # the user's checkpoint is untouched


def test_python_dash_m_runs(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cvaelib",
            "sample",
            "--checkpoint",
            str(tmp_path / "no.pt"),
            "--out",
            str(tmp_path / "s.npz"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode != 0
    assert "no checkpoint at" in result.stderr and "python -m cvaelib train" in result.stderr


def test_not_a_checkpoint_is_named(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt is not a cvaelib checkpoint"):
        load_checkpoint(bad)


def test_train_cifar_with_remedies_reports_bits_per_dim(data_root, tmp_path, capsys):
    ckpt = tmp_path / "cifar.pt"
    main(
        [
            "train",
            "--dataset",
            "cifar10",
            "--epochs",
            "1",
            "--subset",
            "4",
            "--latent-dim",
            "8",
            "--out",
            str(ckpt),
            "--schedule",
            "linear",
            "--kl-balance",
            "0.8",
            "--free-bits",
            "0.1",
            "--device",
            "cpu",
            "--no-progress",
            "--data-root",
            data_root,
        ]
    )
    figures = json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1])
    assert 3 < figures["test_bits_per_dim"] < 12
    assert load_checkpoint(ckpt).meta["remedies"]["kl_balance"] == 0.8


@pytest.mark.parametrize(
    "option,message",
    [
        (["--epochs", "0"], "argument --epochs: must be a positive integer, got 0"),
        (["--epochs", "-1"], "argument --epochs: must be a positive integer, got -1"),
        (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
        (["--latent-dim", "0"], "argument --latent-dim: must be a positive integer"),
        (["--subset", "0"], "argument --subset: must be a positive integer"),
        (["--batch-size", "0"], "argument --batch-size: must be a positive integer"),
        (["--lr", "0"], "argument --lr: must be a positive number"),
        (["--lr", "nan"], "argument --lr: must be a positive number"),
        (["--beta", "-1"], "argument --beta: must be a non-negative number"),
        (["--warmup", "0"], "argument --warmup: must be a positive number"),
        (["--free-bits", "-0.1"], "argument --free-bits: must be a non-negative number"),
        (["--kl-balance", "1.5"], r"argument --kl-balance: must be in \[0, 1\]"),
        (["--clip-grad", "0"], "argument --clip-grad: must be a positive number"),
        (["--max-minutes", "0"], "argument --max-minutes: must be a positive number"),
        (["--seed", "-3"], "argument --seed: must be a non-negative integer"),
        (["--ema", "1"], r"argument --ema: must be a number in \(0, 1\)"),
        (["--schedule", "steps"], "argument --schedule: invalid choice: 'steps'"),
        (["--sigma", "0.5"], "argument --sigma: .* it needs likelihood 'gaussian' or 'sigma', not 'bernoulli'"),
        (["--likelihood", "gaussian", "--sigma", "0"], "argument --sigma: must be positive"),
        (["--optimal-sigma"], "argument --optimal-sigma: needs the likelihood 'gaussian', not 'bernoulli'"),
        (["--group-balance"], "argument --group-balance: needs group_sizes, or a hierarchical model"),
        (["--group-sizes", "4", "4"], "argument --group-sizes: 4 4 must add up to the latent size 16"),
        (["--group-sizes", "0", "16"], "argument --group-sizes: must be positive integers"),
        (["--kl-balance", "0.8", "--prior", "standard"], "argument --kl-balance: needs the learned prior"),
        (["--model", "vae", "--prior", "learned"], "argument --prior: 'learned' is p\\(z\\|y\\): it needs labels"),
        (["--size", "tiny"], "argument --size: is not an option of --arch mlp; it is one of --arch hierarchical"),
        (
            ["--arch", "hierarchical", "--latent-dim", "8"],
            "argument --latent-dim: is not an option of --arch hierarchical",
        ),
        (
            ["--arch", "hierarchical", "--group-sizes", "8"],
            "argument --group-sizes: is not an option of a hierarchical",
        ),
        (
            ["--arch", "hierarchical", "--likelihood", "logistic", "--num-mixtures", "3"],
            "argument --num-mixtures: is the",
        ),
    ],
)
def test_bad_train_options_are_refused_before_any_work(option, message, tmp_path, capsys):
    out = tmp_path / "m.pt"
    with pytest.raises(SystemExit) as exit:
        main(["train", "--dataset", "mnist", "--out", str(out), "--data-root", str(tmp_path / "no_data")] + option)
    assert exit.value.code == 2
    import re

    assert re.search(message, capsys.readouterr().err)
    assert not out.exists() and not (tmp_path / "no_data").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["sample", "--n-per-class", "-1"], "argument --n-per-class: must be a positive integer"),
        (["sample", "--n-per-class", "0"], "argument --n-per-class: must be a positive integer"),
        (["evaluate", "--k", "0"], "argument --k: must be a positive integer"),
        (["evaluate", "--n", "0"], "argument --n: must be a positive integer"),
    ],
)
def test_bad_sample_and_evaluate_options_are_refused(argv, message, tmp_path, capsys):
    extra = ["--out", str(tmp_path / "s.npz")] if argv[0] == "sample" else []
    with pytest.raises(SystemExit) as exit:
        main(argv + ["--checkpoint", str(tmp_path / "m.pt")] + extra)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_an_unwritable_out_is_found_before_the_first_epoch(data_root, tmp_path):
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    with pytest.raises(SystemExit) as exit:
        main(
            [
                "train",
                "--dataset",
                "mnist",
                "--epochs",
                "1",
                "--subset",
                "2",
                "--out",
                str(blocked / "m.pt"),
                "--device",
                "cpu",
                "--no-progress",
                "--data-root",
                data_root,
            ]
        )
    assert "--out" in str(exit.value.code) and "cannot be written" in str(exit.value.code)


def test_one_train_call_reads_its_checkpoint_once(data_root, tmp_path, monkeypatch):
    """--out is read once per train call (to refuse another run, to resume, to report and to store the fitted
    prior) and probed for writing once."""
    import cvaelib.checkpoint

    ckpt = tmp_path / "m.pt"
    reads, load = [], torch.load
    probes, probe = [], cvaelib.checkpoint.check_writable

    def counted(f, *args, **kwargs):
        reads.append(str(f))
        return load(f, *args, **kwargs)

    def counted_probe(path, option):
        probes.append((str(path), option))
        probe(path, option)

    monkeypatch.setattr(torch, "load", counted)
    monkeypatch.setattr(cvaelib.checkpoint, "check_writable", counted_probe)
    args = ["train", "--dataset", "mnist", "--subset", "5", "--latent-dim", "2", "--out", str(ckpt)]
    args += ["--device", "cpu", "--no-progress", "--data-root", data_root]
    main(args + ["--epochs", "1"])  # a new run: nothing to read
    assert reads.count(str(ckpt)) == 0 and probes == [(str(ckpt), "--out")]
    main(args + ["--epochs", "2"])  # resumes, trains one more epoch, stores the fitted prior
    assert reads.count(str(ckpt)) == 1 and probes == [(str(ckpt), "--out")] * 2
    model = load_checkpoint(ckpt)  # what it wrote: two epochs and the prior fitted at the end
    assert model.meta["epoch"] == 2 and model.meta["fitted_prior"] is not None


def test_max_minutes_stops_cleanly_and_a_later_run_resumes(data_root, tmp_path, capsys, monkeypatch):
    import cvaelib.stopping

    clock = iter(range(0, 10_000, 50))  # every call to the clock: 50 more seconds
    monkeypatch.setattr(cvaelib.stopping.time, "monotonic", lambda: next(clock))
    ckpt = tmp_path / "m.pt"
    args = [
        "train",
        "--dataset",
        "mnist",
        "--epochs",
        "4",
        "--subset",
        "5",
        "--latent-dim",
        "2",
        "--out",
        str(ckpt),
        "--device",
        "cpu",
        "--no-progress",
        "--data-root",
        data_root,
    ]
    main(args + ["--max-minutes", "0.5"])  # 30 s: stops after the first epoch
    assert load_checkpoint(ckpt).meta["epoch"] == 1
    assert "(1 of 4 epochs)" in capsys.readouterr().out
    main(args + ["--max-minutes", "0.5"])  # resumes, and stops after one more epoch
    assert load_checkpoint(ckpt).meta["epoch"] == 2
    main(args)
    assert load_checkpoint(ckpt).meta["epoch"] == 4


def test_ctrl_c_during_train_says_where_it_stopped_in_one_line_and_the_same_command_resumes(
    data_root, tmp_path, capsys
):
    import signal

    ckpt = tmp_path / "m.pt"
    args = ["train", "--dataset", "mnist", "--subset", "30", "--latent-dim", "2", "--batch-size", "30"]
    args += ["--out", str(ckpt), "--device", "cpu", "--no-progress", "--data-root", data_root]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "cvaelib", *args, "--epochs", "100000"]  # far more than the test waits for
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert run.stdout.readline().startswith("training a cvae on mnist")
    deadline = time.monotonic() + 60
    while not ckpt.exists() and time.monotonic() < deadline:  # the first epoch is saved: training is under way
        time.sleep(0.1)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted at epoch "), err
    assert lines[0].endswith(f"checkpoint kept in {ckpt}; the same command resumes"), err

    model = load_checkpoint(ckpt)
    done = model.meta["epochs_done"]
    assert model.meta["num_epochs"] == 100000 and 1 <= done < 100000
    main(["evaluate", "--checkpoint", str(ckpt), "--k", "2", "--n", "50", "--data-root", data_root])
    captured = capsys.readouterr()
    assert f"stopped at {done:.3g} of 100000 epochs" in captured.err
    assert json.loads(captured.out)["epochs"] == round(done, 3)

    finish = int(done) + 1  # the same command, asked for fewer epochs, resumes and finishes
    main(args + ["--epochs", str(finish)])
    assert "resuming from" in capsys.readouterr().out
    assert load_checkpoint(ckpt).meta["epochs_done"] == finish


def test_the_final_figures_are_the_last_epochs_test_figures(data_root, tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    args = ["train", "--dataset", "mnist", "--epochs", "2", "--subset", "20", "--latent-dim", "2"]
    main(args + ["--out", str(ckpt), "--device", "cpu", "--no-progress", "--data-root", data_root])
    figures = json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1])
    last = load_checkpoint(ckpt).meta["history"][-1]
    assert figures["epochs"] == 2 == last["epoch"]
    assert figures["test_negative_elbo_nats"] == last["test_nelbo"]  # one figure, not a second noisy estimate
    assert figures["test_kl_nats"] == last["test_kl"]


def test_json_is_strict():
    from cvaelib.cli import _json

    assert json.loads(_json({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}})) == {
        "a": None,
        "b": [1.0, None],
        "c": {"d": None},
    }


def test_a_huge_learning_rate_stops_with_a_divergence_error(data_root, tmp_path):
    ckpt = tmp_path / "m.pt"
    with pytest.raises(SystemExit) as exit:
        main(
            [
                "train",
                "--dataset",
                "mnist",
                "--subset",
                "10",
                "--latent-dim",
                "2",
                "--out",
                str(ckpt),
                "--epochs",
                "3",
                "--lr",
                "1e9",
                "--device",
                "cpu",
                "--no-progress",
                "--data-root",
                data_root,
                "--batch-size",
                "10",
            ]
        )
    message = str(exit.value.code)
    assert message.startswith("error: training diverged") and "lower learning rate" in message
    epoch = int(message.split("at epoch ")[1].split(",")[0])
    if epoch == 1:  # nothing good was saved, and the message claims no checkpoint
        assert not ckpt.exists() and "is kept" not in message
    else:  # the last good epoch's checkpoint is kept, finite, and named
        assert f"{ckpt} is kept" in message and load_checkpoint(ckpt).meta["epoch"] == epoch - 1
        assert all(torch.isfinite(v).all() for v in load_checkpoint(ckpt).state_dict().values())


def test_the_hierarchy_trains_fast_and_averaged_by_default_and_each_switch_can_be_turned_off(
    data_root, tmp_path, monkeypatch
):
    import cvaelib.cli
    from cvaelib.train import bf16_is_fast

    used = []
    real_fit = cvaelib.cli.fit

    def recording_fit(*args, **kwargs):
        used.append((kwargs["speed"], kwargs["ema"], kwargs["config"]))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(cvaelib.cli, "fit", recording_fit)
    common = ["train", "--dataset", "cifar10", "--epochs", "1", "--subset", "1", "--arch", "hierarchical"]
    common += ["--size", "tiny", "--device", "cpu", "--no-progress", "--data-root", data_root]
    main([*common, "--out", str(tmp_path / "a.pt")])
    speed, ema, config = used[-1]
    assert speed.channels_last and speed.bf16 == bf16_is_fast("cpu") and config.warmup_steps == 200
    assert ema is not None and load_checkpoint(tmp_path / "a.pt").meta["train"]["ema"] == 0.999
    main([*common, "--out", str(tmp_path / "b.pt"), "--no-bf16", "--no-channels-last", "--ema", "0.9"])
    speed, ema, _ = used[-1]
    assert not speed.bf16 and not speed.channels_last
    assert load_checkpoint(tmp_path / "b.pt").meta["train"]["ema"] == 0.9
    # CIFAR-10's default, a conv CVAE: the same speed switches, without the average or the warm-up
    main([*common[:7], "--latent-dim", "4", *common[11:], "--out", str(tmp_path / "c.pt")])
    speed, ema, config = used[-1]
    assert speed.channels_last and speed.bf16 == bf16_is_fast("cpu") and ema is None and config.warmup_steps == 0
    # an MLP: bfloat16 where native, no memory layout
    main([*common[:7], "--latent-dim", "4", "--arch", "mlp", *common[11:], "--out", str(tmp_path / "d.pt")])
    speed, ema, config = used[-1]
    assert speed.bf16 == bf16_is_fast("cpu") and not speed.channels_last and ema is None


def test_train_compiles_a_run_planned_long_enough_and_says_so(data_root, tmp_path, monkeypatch, capsys):
    import cvaelib.cli
    import cvaelib.train

    class Recorded(Exception):
        pass

    speeds = []

    def recording_fit(*args, **kwargs):  # what train would train with, without training
        speeds.append(kwargs["speed"])
        raise Recorded

    monkeypatch.setattr(cvaelib.cli, "fit", recording_fit)
    monkeypatch.setattr(cvaelib.train, "compiler_present", lambda device: True)
    monkeypatch.setitem(cvaelib.train.COMPILE_PAYS_FROM_STEPS, "hierarchical", 3)  # one step an epoch below
    common = ["train", "--dataset", "cifar10", "--subset", "1", "--arch", "hierarchical", "--size", "tiny"]
    common += ["--device", "cpu", "--no-progress", "--data-root", data_root, "--out", str(tmp_path / "a.pt")]
    for extra, compiled in [
        (["--epochs", "3"], True),
        (["--epochs", "2"], False),
        (["--epochs", "3", "--max-minutes", "30"], False),
        (["--epochs", "3", "--no-compile"], False),
    ]:
        with pytest.raises(Recorded):
            main([*common, *extra])
        assert speeds[-1].compile is compiled, extra
        assert ("compiling the model first" in capsys.readouterr().out) is compiled, extra


def test_every_configuration_field_is_an_option_with_its_help(capsys):
    from dataclasses import fields

    import cvaelib.options as options

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help over lines
    for config in options.CONFIGS:
        for f in fields(config):
            if f.name not in options.NOT_OPTIONS:
                option = options.config_options()[config].get(f.name) or options.flag_of(f.name)
                assert option is not None and options.flag_of(f.name) in text, f.name
                assert f.metadata["help"], f"{config.__name__}.{f.name} has no help"
    assert "--lr LR Adam's learning rate" in text and "--no-ema turn it off" in text


def test_a_field_added_to_a_configuration_is_an_option_at_once(monkeypatch):
    from dataclasses import dataclass, field

    import cvaelib.cli as cli
    import cvaelib.options as options

    @dataclass(frozen=True)
    class Extra:
        label_smoothing: float = field(default=0.0, metadata={"help": "how much of each label to spread"})

    monkeypatch.setattr(options, "CONFIGS", (*options.CONFIGS, Extra))
    options.config_options.cache_clear()
    try:
        args = cli._parser().parse_args(["train", "--dataset", "mnist", "--out", "-", "--label-smoothing", "0.1"])
        assert args.label_smoothing == 0.1
        assert options.config_options()[Extra]["label_smoothing"].help == "how much of each label to spread"
    finally:
        monkeypatch.undo()
        options.config_options.cache_clear()


@pytest.mark.parametrize(
    "dataset,argv",
    [
        ("mnist", []),
        ("mnist", ["--model", "vae", "--beta", "2", "--group-sizes", "8", "8", "--group-balance", "--lr", "0.002"]),
        ("fashion_mnist", ["--arch", "mlp", "--likelihood", "gaussian", "--optimal-sigma", "--epochs", "3"]),
        (
            "cifar10",
            ["--arch", "hierarchical", "--size", "full", "--no-ema", "--lr-warmup-steps", "0", "--warmup", "2"],
        ),
        ("cifar10", ["--arch", "hierarchical", "--size", "tiny", "--groups-per-resolution", "1", "1", "2"]),
        ("cifar10", ["--arch", "hierarchical", "--kl-balance", "0.8", "--no-clip-grad", "--batch-size", "64"]),
    ],
)
def test_the_command_of_a_recipe_trains_that_recipe(dataset, argv):
    import cvaelib.cli as cli
    from cvaelib.options import command, recipe_of

    parser = cli._parser()
    recipe = recipe_of(parser.parse_args(["train", "--dataset", dataset, "--out", "-", *argv]))
    line = command(dataset, recipe, "run.pt")
    assert line.startswith(f"python -m cvaelib train --dataset {dataset} --out run.pt")
    assert {a for a in argv if a.startswith("--")} <= set(line.split())  # every typed option changed the recipe
    assert recipe_of(parser.parse_args(line.split()[3:])) == recipe


def test_size_picks_its_own_preset_and_explicit_fields_override_it():
    import cvaelib.cli as cli
    from cvaelib.hierarchical import HierarchicalConfig
    from cvaelib.options import recipe_of

    parser = cli._parser()

    def model(*argv):
        return recipe_of(parser.parse_args(["train", "--dataset", "cifar10", "--out", "-", *argv])).model

    assert model("--arch", "hierarchical", "--size", "full") == HierarchicalConfig.from_size(size="full")
    tiny = model("--arch", "hierarchical", "--size", "tiny", "--latent-channels", "3")
    assert tiny == HierarchicalConfig.from_size(size="tiny", latent_channels=3)
