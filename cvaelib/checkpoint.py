"""Checkpoints: written atomically, read safely (chapters 2-4, the command line); a training run's saved state
(``SavedRun``), random state included, that ``train.fit`` resumes from.

A checkpoint holds only tensors, numbers, strings, lists, tuples and dicts, and is always read
with ``torch.load(weights_only=True)``. Anything else in a file (a pickled object can run code
while it is read) is refused before it is unpacked: learners download checkpoints and
instructors open their students' files, so no file the course reads may execute code.
"""

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed
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


def rng_state() -> dict:
    """Every random state as tensors, numbers and lists, so that a checkpoint loads with weights_only=True."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()  # ('MT19937', (624,) uint32, int, int, float)
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()  # CPU byte tensors, one per GPU
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class SavedRun:
    """A training run's checkpoint as one object: read once, when made, and refused then if it holds another run
    than ``meta`` describes (``option`` names the path in the error), and refused on rank 0 if it cannot be written;
    ``train.fit`` resumes from it and saves to it (rank 0 writes, every process reads). ``path`` None: nothing is
    read or written."""

    def __init__(self, path: str | Path | None, meta: dict | None = None, option: str = "checkpoint"):
        self.path = None if path is None else Path(path)
        self.meta, self.option = meta, option
        self.contents = read_checkpoint(self.path) if self.path is not None and self.path.exists() else None
        if self.contents is not None and meta is not None:
            refuse_another_run(self.contents, meta, self.path, option)
        if self.path is not None and distributed.rank() == 0:  # the only writer; two would race on the probe file
            check_writable(self.path, option)

    def resume(self, model, optimizer, ema, num_epochs: int, steps_per_epoch: int) -> tuple[list, int, dict | None]:
        """Load the saved weights, optimizer, average and random state into this run, which trains ``num_epochs``
        of ``steps_per_epoch`` steps, and keep it to ``save`` later; (history, epochs done, the next epoch's partial
        state or None). Nothing saved yet: ([], 0, None)."""
        self.model, self.optimizer, self.ema = model, optimizer, ema
        self.num_epochs, self.steps_per_epoch = num_epochs, steps_per_epoch
        state = self.contents
        if state is None:
            return [], 0, None
        if (ema is None) != ("ema" not in state):
            raise ValueError(
                f"{self.path} was saved {'without' if ema is not None else 'with'} an average of the weights "
                f"(ema), and this run {'keeps' if ema is not None else 'keeps no'} one: choose another "
                f"{self.option}, or delete it to start over"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        return state["history"], state["epoch"], state.get("partial")

    def save(self, history: list, epoch: int, partial: dict | None = None) -> None:
        """The checkpoint after ``epoch`` whole epochs (and, stopped mid-epoch, the next one's ``partial`` state)."""
        if self.path is None or distributed.rank() != 0:
            return
        self.contents = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": history,
            "epoch": epoch,
            "partial": partial,
            "rng": rng_state(),
            **({} if self.ema is None else {"ema": self.ema.state_dict()}),
            "meta": self.meta or {},
            "num_epochs": self.num_epochs,  # the epochs asked for, and the steps in each: how far a run got
            "steps_per_epoch": self.steps_per_epoch,
        }
        save_checkpoint(self.path, **self.contents)

    def add(self, **extra) -> None:
        """Write the last saved state again with ``extra`` beside it (the prior fitted after training), without
        reading the file: the tensors of the state are the model's own, which do not change after training."""
        self.contents = {**self.contents, **extra}
        save_checkpoint(self.path, **self.contents)

    def epochs_done(self) -> tuple[float, int | None]:
        """How far the saved run got (``trained_epochs``); (0.0, None) with nothing saved."""
        return trained_epochs(self.contents) if self.contents is not None else (0.0, None)


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
