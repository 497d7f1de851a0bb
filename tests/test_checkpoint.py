"""No file the course opens may run code: every path that reads a checkpoint refuses a crafted one."""

import os

import pytest
import torch

from cvaelib import CVAE, data, load_checkpoint
from cvaelib.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from cvaelib.cli import main
from cvaelib.losses import elbo
from cvaelib.train import fit

META = {"dataset": "mnist", "model": dict(image_shape=(1, 28, 28), num_classes=10, latent_dim=2)}


class RunsACommand:
    """A pickled object whose reduction runs a shell command when the file is unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def malicious(tmp_path):
    marker = tmp_path / "the_command_ran"
    path = tmp_path / "evil.pt"
    model = CVAE(latent_dim=2)
    torch.save(
        {"model": model.state_dict(), "meta": META, "epoch": 1, "history": [], "payload": RunsACommand(marker)}, path
    )
    return path, marker


def test_every_path_refuses_a_checkpoint_that_would_run_code(malicious, tmp_path, data_root, capsys):
    path, marker = malicious
    with pytest.raises(CheckpointError, match="refuses to read because reading them could run code"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="evil.pt is not a cvaelib checkpoint"):
        read_checkpoint(path)
    x, y = data.load("mnist", "train", data_root)
    batches = data.Batches(*data.stratified_subset(x, y, 2), 10)
    with pytest.raises(CheckpointError):  # resuming a run from it
        fit(CVAE(latent_dim=2), elbo, batches, 1, device="cpu", checkpoint=path, progress=False)
    for argv in (
        ["sample", "--checkpoint", str(path), "--out", str(tmp_path / "s.npz")],
        ["evaluate", "--checkpoint", str(path), "--data-root", data_root],
        ["train", "--dataset", "mnist", "--out", str(path), "--data-root", data_root, "--no-progress"],
    ):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert "could run code" in str(exit.value.code) and str(exit.value.code).count("\n") == 0
    assert not marker.exists()  # the command never ran


def test_a_real_checkpoint_loads_with_weights_only(mnist_subset, tmp_path):
    x, y, _, _ = mnist_subset
    path = tmp_path / "m.pt"
    fit(
        CVAE(**META["model"]), elbo, data.Batches(x, y, 50), 1, device="cpu", checkpoint=path, meta=META, progress=False
    )
    state = torch.load(path, weights_only=True)  # random states included: tensors, numbers and lists
    assert set(state) >= {"model", "optimizer", "history", "epoch", "rng", "meta"}
    assert set(state["rng"]) >= {"torch", "numpy", "python"}


def test_a_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    def full_disk(obj, f, *args, **kwargs):
        open(f, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "m.pt", model={})
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as exit:
        main(["evaluate", "--checkpoint", str(tmp_path / "nope.pt")])
    assert (
        str(exit.value.code) == f"error: no checkpoint at {tmp_path / 'nope.pt'}; train one with "
        f"`python -m cvaelib train --out {tmp_path / 'nope.pt'}`"
    )
