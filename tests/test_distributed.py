"""`torchrun --nproc_per_node N -m cvaelib train`: one model on N processes (DistributedDataParallel)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvaelib import data, load_checkpoint
from cvaelib.cli import main

REPOSITORY = Path(__file__).resolve().parent.parent


def _indices(batches):
    """The image indices a pass yields, batch by batch (the labels are the indices here)."""
    return [y.tolist() for _, y in batches]


def _indexed(n):
    return torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n)


@pytest.mark.parametrize("n,world_size", [(100, 2), (101, 3), (7, 7)])
def test_shards_are_disjoint_equal_and_cover_the_permutation(n, world_size):
    images, labels = _indexed(n)
    one = data.Batches(images, labels, 4, seed=3)
    one.set_epoch(2)
    order = sum(_indices(one), [])  # the epoch's permutation, as one process sees it
    shards = []
    for rank in range(world_size):
        batches = data.Batches(images, labels, 4, seed=3, rank=rank, world_size=world_size)
        batches.set_epoch(2)
        shards.append(sum(_indices(batches), []))
        assert len(batches) == len(_indices(batches))
    kept = n - n % world_size  # the tail is dropped: every process the same count
    assert {len(s) for s in shards} == {kept // world_size}
    assert len(set().union(*shards)) == kept  # disjoint
    assert sorted(sum(shards, [])) == sorted(order[:kept])  # the permutation, less its tail
    assert {len(data.Batches(images, labels, 4, rank=r, world_size=world_size)) for r in range(world_size)} == {
        -(-(kept // world_size) // 4)
    }


def test_the_shards_batches_together_are_one_process_global_batches():
    images, labels = _indexed(110)
    one = _indices(data.Batches(images, labels, 20, seed=1))
    ranks = [_indices(data.Batches(images, labels, 10, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 6
    for whole, *parts in zip(one, *ranks):
        assert sorted(whole) == sorted(sum(parts, []))


def test_bad_shards_are_refused():
    images, labels = _indexed(4)
    with pytest.raises(ValueError, match="rank must be an integer in 0..1"):
        data.Batches(images, labels, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size must be a positive integer"):
        data.Batches(images, labels, world_size=0)
    with pytest.raises(ValueError, match="4 images cannot be shared among 5 processes"):
        data.Batches(images, labels, rank=0, world_size=5)


def test_a_batch_size_the_processes_cannot_share_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "m.pt"
    with pytest.raises(SystemExit) as exit:
        main(["train", "--dataset", "mnist", "--out", str(out), "--batch-size", "21", "--data-root", str(tmp_path)])
    assert exit.value.code == 2
    assert "--batch-size 21 must be divisible by the 2 torchrun processes" in capsys.readouterr().err
    assert not out.exists()


def _train(launcher, out, data_root, epochs):
    """Run ``train`` as a subprocess; its figures (the JSON line) and its whole output."""
    command = [
        *launcher,
        "-m",
        "cvaelib",
        "train",
        "--dataset",
        "mnist",
        "--subset",
        "10",
        "--epochs",
        str(epochs),
        "--latent-dim",
        "2",
        "--batch-size",
        "20",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
        "--data-root",
        data_root,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPOSITORY, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
    return figures, result.stdout


def test_torchrun_trains_one_model_on_two_processes_and_resumes(data_root, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ckpt = tmp_path / "m.pt"
    figures, output = _train(torchrun, ckpt, data_root, 2)
    assert "training on 2 processes" in output
    assert output.count("training a cvae") == 1  # rank 0 speaks, rank 1 is quiet
    assert load_checkpoint(ckpt).meta["epoch"] == 2 and figures["epochs"] == 2

    single, _ = _train([sys.executable], tmp_path / "single.pt", data_root, 2)
    # The same global batches of 20: one process and two agree within noise.
    assert figures["test_negative_elbo_nats"] == pytest.approx(single["test_negative_elbo_nats"], rel=0.15)

    resumed, output = _train(torchrun, ckpt, data_root, 3)
    assert f"resuming from {ckpt}" in output
    assert load_checkpoint(ckpt).meta["epoch"] == 3 and resumed["epochs"] == 3
