"""How a training run stops before its end, and safely: a first Ctrl-C after the step in progress
(``TrainingInterrupted``), ``max_minutes`` of training (decided by rank 0, so that every process stops at the same
step), and a loss or a weight that is no longer finite (an epoch's totals are checked at each copy to the host).
In each case ``fit`` (``train.py``) has a checkpoint to go on from: the step it stopped at, or the last good one.
"""

import math
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from . import distributed


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped ``fit`` cleanly after a whole step; ``checkpoint`` (if any) holds that step."""

    def __init__(self, epoch: int, step: int, steps_per_epoch: int, checkpoint=None):
        self.epoch, self.step, self.steps_per_epoch, self.checkpoint = epoch, step, steps_per_epoch, checkpoint
        where = f"interrupted at epoch {epoch}, step {step} of {steps_per_epoch}"
        kept = f"; checkpoint kept: {checkpoint}, the same call resumes from it" if checkpoint else ""
        super().__init__(where + kept)


@contextmanager
def first_ctrl_c_stops_after_the_step():
    """While ``fit`` trains, a first Ctrl-C (SIGINT) only sets the flag it yields: ``fit`` then ends the
    step it is in, saves its checkpoint and raises ``TrainingInterrupted``. A second Ctrl-C interrupts at once.

    Without this, Ctrl-C lands anywhere, also inside an optimizer update. Signals reach only the main
    thread, and under torchrun every process gets its own: there, Ctrl-C interrupts as usual.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread() or distributed.world_size() > 1:
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def all_finite(model):
    """One device flag: are all parameters finite? No host sync."""
    return torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all()


class EpochTotals:
    """An epoch's loss parts, kept on the device and copied to the host every few steps (a GPU waits at each copy).

    Each copy is checked: the first step whose loss parts, or whose parameters after the update, are not
    finite stops training with an error that names it, before anything is saved. Under DDP the processes
    agree on that step (an all_reduce at each copy), so that all of them stop together.
    """

    def __init__(self, epoch, checkpoint, device=None):
        self.epoch, self.checkpoint, self.device = epoch, checkpoint, device
        self.names, self.pending, self.totals, self.n, self.steps, self.skipped = None, [], 0.0, 0, 0, 0

    def add(self, parts, model, size, skipped=0):
        self.names = self.names or list(parts)
        self.skipped += skipped
        flags = [parts[k].detach().float() for k in self.names] + [all_finite(model).float()]
        self.pending.append((torch.stack(flags), size))  # (parts + 1,): no host sync here
        self.n += size

    def flush(self):
        """Copy the pending steps to the host, check them and add them to the totals."""
        if not self.pending:
            return
        rows = torch.stack([flags for flags, _ in self.pending]).cpu()  # (steps, parts + finite flag)
        bad_steps = (~torch.isfinite(rows[:, :-1])).any(dim=1) | (rows[:, -1] == 0)  # (steps,)
        i = self._first_bad(bad_steps)
        if i is not None:
            bad = {k: float(v) for k, v in zip(self.names, rows[i]) if not math.isfinite(v)}
            here = "the parameters are no longer finite" if rows[i, -1] == 0 else "on another process"
            what = ", ".join(f"{k}={v}" for k, v in bad.items()) or here
            path = self.checkpoint
            kept = f" The last good checkpoint, {path}, is kept." if path and Path(path).exists() else ""
            raise FloatingPointError(
                f"training diverged: non-finite loss at epoch {self.epoch + 1}, step {self.steps + i + 1}: {what}."
                f"{kept} Try a lower learning rate (lr) or gradient clipping (clip_grad)."
            )
        sizes = torch.tensor([size for _, size in self.pending], dtype=rows.dtype)
        self.totals = self.totals + (rows[:, :-1] * sizes[:, None]).sum(0)
        self.steps, self.pending = self.steps + len(rows), []

    def _first_bad(self, bad_steps):
        """The first flagged step of these pending ones on any process, or None."""
        first = int(bad_steps.nonzero()[0]) if bad_steps.any() else len(bad_steps)
        # every process flushes the same number of steps at the same time
        first = distributed.first_on_any(first, self.device)
        return None if first == len(bad_steps) else first

    def reduce(self):
        """Sum the totals and image counts of all processes, once per epoch: the means are then global."""
        if distributed.world_size() == 1:
            return
        sums = torch.as_tensor(self.totals, dtype=torch.float64).flatten()  # (parts,)
        t = distributed.summed(torch.cat([sums, sums.new_tensor([self.n])]), self.device)  # (parts + 1,)
        self.totals, self.n = t[:-1], int(t[-1])

    def means(self):
        return {k: float(v) / self.n for k, v in zip(self.names, self.totals)}

    def state(self) -> dict:
        """The flushed totals so far, as tensors and plain values (a checkpoint of a run stopped mid-epoch)."""
        totals = torch.as_tensor(self.totals)
        return {"names": self.names, "totals": totals, "n": self.n, "steps": self.steps, "skipped": self.skipped}

    def restore(self, state: dict, rank: int) -> None:
        self.names, self.steps, self.skipped = state["names"], state["steps"], state["skipped"]
        self.totals, self.n = state["totals"], state["n"]
        if rank:  # the saved sums are rank 0's alone: the other processes' shares of them are not in the file
            self.totals, self.n = torch.zeros_like(self.totals), 0


class StopRule:
    """When ``fit`` stops before ``num_epochs``: a first Ctrl-C (``interrupt``, after the step in progress), or
    ``max_minutes`` of training, decided by rank 0 so that every process stops at the same step."""

    def __init__(self, interrupt: threading.Event, max_minutes: float | None, device):
        self.interrupt, self.max_minutes, self.device = interrupt, max_minutes, device
        self.started = time.monotonic()

    def out_of_time(self) -> bool:
        if self.max_minutes is None:
            return False
        return distributed.rank0_decides(time.monotonic() - self.started > 60 * self.max_minutes, self.device)
