"""A general training loop: progress bar, history, seeding, checkpoints and exact resume.

``fit`` knows nothing about VAEs: it calls ``loss_fn(model, x, y)``, which returns a
dict with a scalar ``"loss"`` to minimise and any other parts to report. How it optimises is
a ``TrainConfig``, how fast it runs a ``SpeedConfig``: small frozen dataclasses that the
command line, the chapters and the checkpoints share.

Under ``torchrun`` (an initialised process group of several processes), ``fit`` trains one model
with ``DistributedDataParallel``: each process its shard of the batches (``data.Batches`` with
``rank`` and ``world_size``), gradients averaged by DDP, loss parts averaged over the processes,
and only rank 0 shows progress and writes the checkpoint.
"""

import itertools
import math
import random
import signal
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .checkpoint import check_writable, read_checkpoint, save_checkpoint


@dataclass(frozen=True)
class TrainConfig:
    """How ``fit`` optimises (chapters 1-5, ``python -m cvaelib train``); stored in checkpoints."""

    lr: float = 1e-3  # Adam's learning rate
    seed: int = 0  # seeds the weights' random draws (the batches have their own seed)
    clip_grad: float | None = None  # clip the gradient norm to this value
    skip_grad_norm: float | None = None  # skip an update whose gradient norm is larger (VDVAE); None: never
    warmup_steps: int = 0  # raise the learning rate linearly from 0 over this many steps (VDVAE)
    cosine_decay: bool = False  # then lower it along a cosine to 0 at the last step of num_epochs

    def __post_init__(self):
        _check_positive("lr", self.lr)
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        _check_positive("clip_grad", self.clip_grad)
        _check_positive("skip_grad_norm", self.skip_grad_norm)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")


@dataclass(frozen=True)
class SpeedConfig:
    """Switches that change how fast ``fit`` runs, not what it computes (``benchmarks/throughput.py``)."""

    bf16: bool = False  # autocast to bfloat16 (the likelihood and KL stay in float32)
    channels_last: bool = False  # memory layout for convolutions
    compile: bool = False  # torch.compile the model
    sync_every: int = 10  # copy the loss parts to the host every this many steps (a GPU waits at each copy)

    def __post_init__(self):
        if not isinstance(self.sync_every, int) or self.sync_every < 1:
            raise ValueError(f"sync_every must be a positive integer, got {self.sync_every!r}")


def lr_factor(step: int, total_steps: int, config: TrainConfig) -> float:
    """The learning rate at ``step`` (0-based) as a fraction of ``config.lr``: warm-up, then cosine decay."""
    factor = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.cosine_decay:
        factor *= 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return factor


def _check_positive(name, value):
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def default_device() -> torch.device:
    """cuda if there is a GPU, then Apple's mps, then cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_is_fast(device: torch.device | str) -> bool:
    """Does this device compute in bfloat16 natively? A GPU that supports it, or a CPU with bfloat16 units
    (AVX-512 BF16 or AMX); elsewhere autocasting to bfloat16 only adds conversions."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
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


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _world_size() -> int:
    """Processes of the initialised process group (``torchrun``, ``python -m cvaelib train``), else 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    """This process's rank in the process group; 0 without one."""
    return dist.get_rank() if _world_size() > 1 else 0


def _comm_device(device: torch.device) -> torch.device:
    """Where the small tensors of ``fit``'s collectives live: the GPU for nccl, the CPU for gloo."""
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def _rank_seed(seed: int, epoch: int, rank: int) -> int:
    """A torch seed of its own for each (seed, epoch, process): distributed ranks draw different noise."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _rank0_decides(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every process (``max_minutes``: all processes stop at the same step)."""
    if _world_size() == 1:
        return flag
    t = torch.tensor([float(flag)], device=_comm_device(device))  # (1,)
    dist.broadcast(t, src=0)
    return bool(t.item())


class _DistributedForward:
    """The model as ``loss_fn`` sees it under DDP: a call runs DDP's forward, attributes are the model's.

    ``RemedyLoss`` and ``losses.elbo`` call ``model(x, y)`` (DDP's forward, whose backward averages the
    gradients over the processes) and read ``model.likelihood``, ``model.num_classes`` and
    ``model.training``, which DDP itself does not expose (it has ``.module``). A ``loss_fn`` under
    DDP must run the model through this call, once per step, not through its other methods.
    """

    def __init__(self, ddp: nn.Module, model: nn.Module):
        self._ddp, self._model = ddp, model

    def __call__(self, *args, **kwargs):
        return self._ddp(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped ``fit`` cleanly after a whole step; ``checkpoint`` (if any) holds that step."""

    def __init__(self, epoch: int, step: int, steps_per_epoch: int, checkpoint=None):
        self.epoch, self.step, self.steps_per_epoch, self.checkpoint = epoch, step, steps_per_epoch, checkpoint
        where = f"interrupted at epoch {epoch}, step {step} of {steps_per_epoch}"
        kept = f"; checkpoint kept: {checkpoint}, the same call resumes from it" if checkpoint else ""
        super().__init__(where + kept)


@contextmanager
def _first_ctrl_c_stops_after_the_step():
    """While ``fit`` trains, a first Ctrl-C (SIGINT) only sets the flag it yields: ``fit`` then ends the
    step it is in, saves its checkpoint and raises ``TrainingInterrupted``. A second Ctrl-C interrupts at once.

    Without this, Ctrl-C lands anywhere, also inside an optimizer update. Signals reach only the main
    thread, and under torchrun every process gets its own: there, Ctrl-C interrupts as usual.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread() or _world_size() > 1:
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


def _scalars(parts):
    return {k: v for k, v in parts.items() if torch.is_tensor(v) and v.dim() == 0}


def _all_finite(model):
    """One device flag: are all parameters finite? No host sync."""
    return torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all()


class _EpochTotals:
    """An epoch's loss parts, kept on the device and copied to the host every few steps (a GPU waits at each copy).

    Each copy is checked: the first step whose loss parts, or whose parameters after the update, are not
    finite stops training with an error that names it, before anything is saved. Under DDP the processes
    agree on that step (an all_reduce at each copy), so that all of them stop together.
    """

    def __init__(self, epoch, checkpoint, device=None):
        self.epoch, self.checkpoint, self.device = epoch, checkpoint, device
        self.names, self.pending, self.totals, self.n, self.steps = None, [], 0.0, 0, 0

    def add(self, parts, model, size):
        self.names = self.names or list(parts)
        flags = [parts[k].detach().float() for k in self.names] + [_all_finite(model).float()]
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
        if _world_size() > 1:  # every process flushes the same number of steps at the same time
            t = torch.tensor([first], device=_comm_device(self.device))  # (1,)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            first = int(t.item())
        return None if first == len(bad_steps) else first

    def reduce(self):
        """Sum the totals and image counts of all processes, once per epoch: the means are then global."""
        if _world_size() == 1:
            return
        sums = torch.as_tensor(self.totals, dtype=torch.float64).flatten()  # (parts,)
        t = torch.cat([sums, sums.new_tensor([self.n])]).to(_comm_device(self.device))  # (parts + 1,)
        dist.all_reduce(t)
        t = t.cpu()
        self.totals, self.n = t[:-1], int(t[-1])

    def means(self):
        return {k: float(v) / self.n for k, v in zip(self.names, self.totals)}

    def state(self) -> dict:
        """The flushed totals so far, as tensors and plain values (a checkpoint of a run stopped mid-epoch)."""
        return {"names": self.names, "totals": torch.as_tensor(self.totals), "n": self.n, "steps": self.steps}

    def restore(self, state: dict) -> None:
        self.names, self.totals, self.n, self.steps = state["names"], state["totals"], state["n"], state["steps"]


@torch.no_grad()
def evaluate_loss(model: nn.Module, loss_fn, batches, device) -> dict:
    """Average every scalar part of ``loss_fn`` over ``batches``, weighted by batch size."""
    was_training = model.training
    model.eval()
    totals, n = {}, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        for k, v in _scalars(loss_fn(model, x, y)).items():
            totals[k] = totals.get(k, 0.0) + float(v) * len(x)
        n += len(x)
    model.train(was_training)
    return {k: v / n for k, v in totals.items()}


def _resume(checkpoint, meta, model, optimizer):
    """Load a saved run into ``model`` and ``optimizer``; its history and the epoch to start from."""
    state = read_checkpoint(checkpoint)
    if meta is not None and state.get("meta") != meta:  # never resume (and overwrite) another run
        raise ValueError(
            f"{checkpoint} holds a checkpoint of another model or setting; "
            "choose another checkpoint path, or delete it to start over"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"])
    return state["history"], state["epoch"], state.get("partial")


def fit(
    model: nn.Module,
    loss_fn,
    train_batches,
    num_epochs: int,
    *,
    test_batches=None,
    config: TrainConfig = TrainConfig(),
    speed: SpeedConfig = SpeedConfig(),
    optimizer=None,
    device=None,
    checkpoint=None,
    meta: dict | None = None,
    progress: bool = True,
    max_minutes: float | None = None,
) -> list:
    """Train ``model`` for ``num_epochs`` and return the per-epoch history (chapters 1-5).

    Each history entry holds the epoch and the mean of every scalar loss part on train
    (``train_<part>``) and, with ``test_batches``, on test (``test_<part>``), and the number of
    updates skipped for a huge gradient (``skipped_updates``, with ``config.skip_grad_norm``).
    With ``checkpoint`` (a path), the model, optimizer, history and random state are saved
    after every epoch, with ``meta`` (e.g. how to rebuild the model); if that file already
    exists, training resumes from it and ends exactly where an uninterrupted run would.
    ``max_minutes`` stops cleanly within ``speed.sync_every`` steps of that much training time, mid-epoch
    if need be, and saves the checkpoint there (with the epoch's step and totals so far); a later call
    with the same checkpoint goes on from that step and ends as an uninterrupted run would (under
    ``torchrun``, with other noise for the rest of that epoch).
    A loss part or a parameter that is no longer finite stops training with an error before
    anything is saved, so the last good checkpoint stays. Ctrl-C ends the step in progress, saves the
    checkpoint there (as ``max_minutes`` does) and raises ``TrainingInterrupted``; a second Ctrl-C stops at once.

    In an initialised process group of several processes (``torchrun``), the model is trained with
    ``DistributedDataParallel``: ``train_batches`` must be this process's shard (``data.Batches`` with
    ``rank`` and ``world_size``), ``loss_fn`` gets a module whose call is DDP's forward, the reported
    train parts are averaged over the processes, each process draws its own noise (seeded by seed,
    epoch and rank), and only rank 0 shows progress and writes the checkpoint; every process resumes
    from it. ``max_minutes`` and a divergence stop all processes after the same epoch, or at the same step.
    """
    if not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive integer, got {num_epochs!r}")
    _check_positive("max_minutes", max_minutes)
    if len(train_batches) == 0:
        raise ValueError("the training set gives no batches: it is empty, or smaller than one batch with drop_last")
    world, rank = _world_size(), _rank()
    if world > 1 and getattr(train_batches, "world_size", world) != world:
        raise ValueError(
            f"train_batches are shared among {train_batches.world_size} processes, but {world} are training: "
            f"build them with data.Batches(..., rank={rank}, world_size={world})"
        )
    progress = progress and rank == 0  # the other processes are quiet
    if checkpoint is not None and rank == 0:  # only rank 0 writes it
        check_writable(checkpoint)
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    if speed.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=config.lr)
    history, start, partial = [], 0, None
    seed_everything(config.seed)
    if checkpoint is not None and Path(checkpoint).exists():
        history, start, partial = _resume(checkpoint, meta, model, optimizer)
    # The schedule is a function of the step alone: a resumed run picks it up at the step it stopped at.
    total_steps = num_epochs * len(train_batches)
    steps_done = start * len(train_batches) + (partial["steps"] if partial is not None else 0)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])  # saved with the optimizer, so a resumed run has it too
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, config), last_epoch=steps_done - 1
    )
    run = model
    if world > 1:  # broadcasts rank 0's parameters; its backward averages the gradients
        run = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" and device.index is not None else None
        )
    # A compiled module shares its parameters with ``model`` and passes attributes through.
    run = torch.compile(run) if speed.compile else run
    if world > 1:
        run = _DistributedForward(run, model)
    started = time.monotonic()

    def to_device(x, y):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return (x.contiguous(memory_format=torch.channels_last) if speed.channels_last and x.dim() == 4 else x), y

    def losses(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=speed.bf16):
            return _scalars(loss_fn(run, x, y))

    def step_update():
        """Clip, and skip an update whose gradient norm is non-finite or above skip_grad_norm; 1 if skipped."""
        if config.clip_grad is None and config.skip_grad_norm is None:
            optimizer.step()
            return 0
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad or math.inf)
        if config.skip_grad_norm is not None:  # one host sync per step, as VDVAE pays for it
            if not math.isfinite(float(norm)) or float(norm) > config.skip_grad_norm:
                return 1
        optimizer.step()
        return 0

    def update():
        skipped = step_update()
        schedule.step()
        return skipped

    def save(epoch, partial=None):
        """The checkpoint after ``epoch`` whole epochs (and, stopped mid-epoch, the next one's ``partial`` state)."""
        if checkpoint is not None and rank == 0:
            save_checkpoint(
                checkpoint,
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                history=history,
                epoch=epoch,
                partial=partial,
                rng=_rng_state(),
                meta=meta or {},
                num_epochs=num_epochs,  # the epochs asked for, and the steps in each: how far a run got
                steps_per_epoch=len(train_batches),
            )

    def out_of_time():
        return max_minutes is not None and _rank0_decides(time.monotonic() - started > 60 * max_minutes, device)

    def stopped_after(where):
        if progress:
            again = f"; run again with the same checkpoint to go on ({checkpoint})" if checkpoint else ""
            tqdm.write(f"stopped after {max_minutes:g} minutes, {where} of {num_epochs}{again}")

    # One bar for the whole training, kept when done: a notebook page shows how the run went, and a
    # saved page shows a finished bar instead of the empty space a closed per-epoch bar leaves.
    bar = tqdm(total=num_epochs * len(train_batches), initial=steps_done, disable=not progress, unit="step")
    with _first_ctrl_c_stops_after_the_step() as interrupt, closing(bar):
        for epoch in range(start, num_epochs):
            # A run stopped mid-epoch by max_minutes goes on at its next step, with the epoch's totals so far.
            done = partial["steps"] if partial is not None and epoch == start else 0
            if hasattr(train_batches, "set_epoch"):  # seeded shuffling
                train_batches.set_epoch(epoch)
            if hasattr(loss_fn, "set_epoch"):  # a loss with a KL schedule, which moves with every step
                if done:
                    loss_fn.set_epoch(epoch, done)
                else:
                    loss_fn.set_epoch(epoch)
            # each process its own eps, fixed by (seed, epoch, rank, and the step a resumed run starts at)
            if world > 1:
                torch.manual_seed(_rank_seed(config.seed, epoch, rank) + done)
            model.train()
            totals, skipped = _EpochTotals(epoch, checkpoint, device), 0
            if done:
                totals.restore(partial)
                skipped = partial["skipped"]
                # the saved sums are rank 0's alone: the other processes' shares of them are not in the file
                if rank:
                    totals.totals, totals.n = torch.zeros_like(totals.totals), 0
            bar.set_description(f"epoch {epoch + 1}/{num_epochs}")
            stopped = False
            for x, y in itertools.islice(train_batches, done, None):
                x, y = to_device(x, y)
                parts = losses(x, y)
                optimizer.zero_grad(set_to_none=True)
                parts["loss"].backward()
                skipped += update()
                totals.add(parts, model, len(x))
                bar.update()
                if interrupt.is_set() and totals.steps + len(totals.pending) < len(train_batches):
                    stopped = True
                    break
                if len(totals.pending) == speed.sync_every:
                    totals.flush()
                    bar.set_postfix({k: f"{v:.2f}" for k, v in totals.means().items()})
                    if out_of_time() and totals.steps < len(train_batches):
                        stopped = True
                        break
            totals.flush()
            if stopped:  # mid-epoch: save where we are; the same call again goes on from this step
                save(epoch, {**totals.state(), "skipped": skipped})
                if interrupt.is_set():
                    raise TrainingInterrupted(epoch + 1, totals.steps, len(train_batches), checkpoint)
                stopped_after(f"at step {totals.steps} of epoch {epoch + 1}")
                break
            totals.reduce()
            record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in totals.means().items()}}
            if config.skip_grad_norm is not None:
                record["skipped_updates"] = skipped
            if test_batches is not None:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=speed.bf16):
                    record.update(
                        {f"test_{k}": v for k, v in evaluate_loss(model, loss_fn, test_batches, device).items()}
                    )
            history.append(record)
            if progress:
                tqdm.write("  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
            save(epoch + 1)
            if interrupt.is_set():
                raise TrainingInterrupted(epoch + 1, len(train_batches), len(train_batches), checkpoint)
            if epoch + 1 < num_epochs and out_of_time():
                stopped_after(f"at the end of epoch {epoch + 1}")
                break
    return history
