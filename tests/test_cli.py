import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cvaelib import load_checkpoint
from cvaelib.cli import main


def test_train_sample_evaluate_end_to_end(real_data_root, tmp_path, capsys):
    ckpt = tmp_path / "cvae.pt"
    main(["train", "--dataset", "mnist", "--epochs", "1", "--subset", "30", "--latent-dim", "4",
          "--out", str(ckpt), "--device", "cpu", "--no-progress", "--data-root", real_data_root])
    figures = json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1])
    assert 0 < figures["test_negative_elbo_nats"] < 600  # 784 pixels; an untrained model is ~540
    model = load_checkpoint(ckpt)
    assert model.meta["dataset"] == "mnist" and model.latent_dim == 4 and model.config["prior"] == "learned"

    out = tmp_path / "samples.npz"
    main(["sample", "--checkpoint", str(ckpt), "--n-per-class", "3", "--out", str(out), "--device", "cpu"])
    with np.load(out) as f:
        assert f["images"].dtype == np.float32 and f["images"].shape == (30, 1, 28, 28)
        assert 0 <= f["images"].min() and f["images"].max() <= 1
        assert f["labels"].dtype == np.int64 and f["labels"].tolist() == sorted(list(range(10)) * 3)

    capsys.readouterr()
    main(["evaluate", "--checkpoint", str(ckpt), "--k", "3", "--n", "100", "--device", "cpu",
          "--data-root", real_data_root])
    result = json.loads(capsys.readouterr().out)
    for key in ("negative_elbo_nats", "bits_per_dim", "iwae_nats", "active_units", "mutual_information_nats"):
        assert key in result
    assert result["iwae_nats"] < result["negative_elbo_nats"]


def test_train_refuses_to_resume_a_different_model(real_data_root, tmp_path):
    ckpt = tmp_path / "m.pt"
    args = ["train", "--dataset", "mnist", "--epochs", "1", "--subset", "10", "--out", str(ckpt),
            "--device", "cpu", "--no-progress", "--data-root", real_data_root]
    main(args + ["--latent-dim", "2"])
    with pytest.raises(SystemExit, match="holds a checkpoint of a different model"):
        main(args + ["--latent-dim", "3"])
    assert load_checkpoint(ckpt).latent_dim == 2  # the user's checkpoint is untouched


def test_python_dash_m_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cvaelib", "sample", "--checkpoint", str(tmp_path / "no.pt"),
                             "--out", str(tmp_path / "s.npz")], capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode != 0
    assert "no checkpoint at" in result.stderr and "python -m cvaelib train" in result.stderr


def test_not_a_checkpoint_is_named(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt is not a cvaelib checkpoint"):
        load_checkpoint(bad)


def test_train_cifar_with_remedies_reports_bits_per_dim(real_data_root, tmp_path, capsys):
    ckpt = tmp_path / "cifar.pt"
    main(["train", "--dataset", "cifar10", "--epochs", "1", "--subset", "4", "--latent-dim", "8", "--out", str(ckpt),
          "--schedule", "linear", "--kl-balance", "0.8", "--free-bits", "0.1", "--device", "cpu", "--no-progress",
          "--data-root", real_data_root])
    figures = json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1])
    assert 3 < figures["test_bits_per_dim"] < 12
    assert load_checkpoint(ckpt).meta["train"]["kl_balance"] == 0.8
