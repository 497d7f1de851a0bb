"""Checkpoints: written atomically, read safely (chapters 2-4, the command line).

A checkpoint holds only tensors, numbers, strings, lists, tuples and dicts, and is always read
with ``torch.load(weights_only=True)``. Anything else in a file (a pickled object can run code
while it is read) is refused before it is unpacked: learners download checkpoints and
instructors open their students' files, so no file the course reads may execute code.
"""

import os
from pathlib import Path

import torch
from torch import nn

from .models import build_model


class CheckpointError(ValueError):
    """A file that is not a checkpoint the course can read safely."""


def save_checkpoint(path: str | Path, **contents) -> None:
    """Write a checkpoint atomically: an interruption (or a failed write) never leaves a broken file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(contents, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failed save: no .tmp left behind


def check_writable(path: str | Path, option: str = "checkpoint") -> None:
    """Fail now, not after the first epoch, if ``path`` cannot be written (``option`` names it)."""
    path = Path(path)
    probe = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
    except OSError as e:
        raise OSError(
            f"{option} {path} cannot be written ({e.strerror or e}); choose a folder you can write to"
        ) from None
    probe.unlink()


def read_checkpoint(path: str | Path) -> dict:
    """The contents of a checkpoint file, read with ``weights_only=True`` onto the CPU.

    Raises ``FileNotFoundError`` for a missing file and ``CheckpointError`` for a file that is
    not a checkpoint or holds anything but tensors and plain values (refused, never executed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one with `python -m cvaelib train --out {path}`")
    try:
        # map_location="cpu": the saved random states must stay CPU tensors; parameters move with the model.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = next((line for line in str(e).splitlines() if "unsupported" in line.lower()), type(e).__name__)
        raise CheckpointError(
            f"{path} is not a cvaelib checkpoint, or it holds objects other than tensors and plain values, "
            f"which the course refuses to read because reading them could run code ({reason.strip()})"
        ) from None
    if not isinstance(state, dict) or not {"model", "meta", "epoch", "history"} <= set(state):
        raise CheckpointError(f"{path} is not a cvaelib checkpoint (it lacks the model, meta, epoch or history)")
    return state


def refuse_another_run(state: dict, meta: dict, path: str | Path, option: str = "checkpoint") -> None:
    """Raise a ValueError unless the checkpoint ``state`` (read from ``path``) holds the run that ``meta`` describes:
    a run never resumes into, and overwrites, another's checkpoint (``option`` names the path)."""
    if state.get("meta") != meta:
        raise ValueError(
            f"{path} holds a checkpoint of another model or setting; choose another {option}, "
            "or delete it to start over"
        )


def trained_epochs(state: dict) -> tuple[float, int | None]:
    """How far the run in a checkpoint got: the epochs done (with a fraction when it stopped mid-epoch)
    and the epochs it was asked for (None in files written before checkpoints recorded it)."""
    done = float(state["epoch"])
    if state.get("partial") and state.get("steps_per_epoch"):
        done += state["partial"]["steps"] / state["steps_per_epoch"]
    return done, state.get("num_epochs")


def _weights(state: dict) -> dict:
    """The weights to evaluate and sample with: the average kept by training (``train.ema_of``), if any."""
    if "ema" not in state:
        return state["model"]
    # an AveragedModel's state: the model's under "module.", and its count of averaged updates
    return {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved in ``path`` (its architecture is in the file), ready to ``sample``: with the
    average of the weights when training kept one (``fit(..., ema=)``), else with the weights as trained.

    The returned model has ``model.meta``: the dataset, training settings and history, the whole epochs
    done (``epoch``), the epochs done with a fraction for a run stopped mid-epoch (``epochs_done``), and
    the epochs the run was asked for (``num_epochs``, None if the file does not say), and the tensors of a
    prior fitted after training (``fitted_prior``, None if there is none).
    """
    state = read_checkpoint(path)
    try:
        model = build_model(state["meta"]["model"])
        model.load_state_dict(_weights(state))
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path} does not hold a model cvaelib can rebuild ({type(e).__name__}: {e})") from None
    done, planned = trained_epochs(state)
    model.meta = {
        **state["meta"],
        "history": state["history"],
        "epoch": state["epoch"],
        "epochs_done": done,
        "num_epochs": planned,
        "fitted_prior": state.get("fitted_prior"),  # tensors of a prior fitted after training (fitted_prior), or None
    }
    return model.to(device).eval()
