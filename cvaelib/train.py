"""A general training loop: progress bar, history, seeding, checkpoints and exact resume.

``fit`` knows nothing about VAEs: it calls ``loss_fn(model, x, y)``, which returns a
dict with a scalar ``"loss"`` to minimise and any other parts to report. How it optimises is
a ``TrainConfig``, how fast it runs a ``SpeedConfig``: small frozen dataclasses that the
command line, the chapters and the checkpoints share.

Under ``torchrun``, ``fit`` trains one model with ``DistributedDataParallel`` (``distributed.py``);
``checkpoint.SavedRun`` holds the saved run that a later call resumes from, ``stopping.py`` how a run stops.
"""

import importlib.util
import itertools
import math
import os
import random
import shutil
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import SavedRun
from .data import batch_means
from .models import CONVOLUTIONAL
from .stopping import EpochTotals, StopRule, TrainingInterrupted, first_ctrl_c_stops_after_the_step


@dataclass(frozen=True)
class TrainConfig:
    """How ``fit`` optimises (chapters 1-5, ``python -m cvaelib train``); stored in checkpoints."""

    lr: float = field(default=1e-3, metadata={"help": "Adam's learning rate"})
    seed: int = field(default=0, metadata={"help": "seeds the weights' random draws (the batches have their own seed)"})
    clip_grad: float | None = field(default=None, metadata={"help": "clip the gradient norm to this value"})
    skip_grad_norm: float | None = field(
        default=None, metadata={"help": "skip an update whose gradient norm is larger (VDVAE); None: never"}
    )
    warmup_steps: int = field(
        default=0, metadata={"help": "raise the learning rate linearly from 0 over this many steps (VDVAE)"}
    )
    cosine_decay: bool = field(
        default=False, metadata={"help": "then lower it along a cosine to 0 at the last step of num_epochs"}
    )

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

    bf16: bool = field(default=False, metadata={"help": "autocast to bfloat16 (the likelihood and KL stay in float32)"})
    channels_last: bool = field(default=False, metadata={"help": "memory layout for convolutions"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    sync_every: int = field(
        default=10,
        metadata={"help": "copy the loss parts to the host every this many steps (a GPU waits at each copy)"},
    )

    def __post_init__(self):
        if not isinstance(self.sync_every, int) or self.sync_every < 1:
            raise ValueError(f"sync_every must be a positive integer, got {self.sync_every!r}")

    @classmethod
    def default(
        cls, arch: str, device: torch.device | str, num_steps: int | None = None, max_minutes: float | None = None
    ) -> "SpeedConfig":
        """The switches ``train`` uses when none is given, measured fastest (``benchmarks/training_speed.py``):
        bfloat16 where the device has native bfloat16, for every model; channels-last for convolutions
        (``models.CONVOLUTIONAL``); ``torch.compile`` for a run planned for ``num_steps`` steps, with no limit under
        an hour (``max_minutes``), long enough to win back the compilation (``COMPILE_PAYS_FROM_STEPS``), on a
        device it can compile for (``compiler_present``)."""
        long_enough = num_steps is not None and num_steps >= COMPILE_PAYS_FROM_STEPS.get(arch, math.inf)
        long_enough = long_enough and (max_minutes is None or max_minutes >= 60)
        return cls(
            bf16=bf16_is_fast(device),
            channels_last=arch in CONVOLUTIONAL,
            compile=long_enough and compiler_present(device),
        )


# torch.compile of chapter 4's hierarchy (benchmarks/training_speed.py --compile --default-only --batch-sizes 32,
# 2-core AMD EPYC, 2026-12-07): 67 -> 74 images/s on one thread, 92 -> 111 on two, after 96 and 124 s of compiling:
# it wins them back after about 2,100 steps (18 and 11 minutes). A run planned for this many steps compiles by
# default, when it saves about 5 times what the compilation costs. Not measured for the flat models: they never do.
COMPILE_PAYS_FROM_STEPS = {"hierarchical": 10_000}


def compiler_present(device: torch.device | str) -> bool:
    """Can ``torch.compile``'s default backend (Inductor) generate code for ``device``: Triton for a CUDA GPU, a C++
    compiler (``$CXX``, else g++, Inductor's default) for a CPU; other devices are not tried."""
    device = torch.device(device)
    if device.type == "cuda":
        return importlib.util.find_spec("triton") is not None
    return device.type == "cpu" and shutil.which(os.environ.get("CXX", "g++")) is not None


def ema_of(model: nn.Module, decay: float = 0.999) -> AveragedModel:
    """An exponential moving average of ``model``'s weights for ``fit(..., ema=)`` to keep up to date (VDVAE
    evaluates and samples with one). The first update is copied; after the n-th, w_ema <- d * w_ema + (1 - d) * w
    with d = min(decay, (1 + n) / (10 + n)), as TensorFlow's ExponentialMovingAverage with ``num_updates``: a
    fixed 0.999 would still give the first weights 37 % of the average after 1,000 updates, which made a
    conv CVAE's average 2.5 bits/dim worse than its weights after 800 steps; at the full decay it averages
    about the last 1 / (1 - decay) updates. ``ema_of(model).module`` is the averaged model."""
    if not 0 < decay < 1:
        raise ValueError(f"the EMA's decay must lie in (0, 1), got {decay!r}")

    def update(averaged: list, current: list, num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(averaged, current, num_averaged)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


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


def _scalars(parts):
    return {k: v for k, v in parts.items() if torch.is_tensor(v) and v.dim() == 0}


@torch.no_grad()
def evaluate_loss(model: nn.Module, loss_fn, batches, device) -> dict:
    """Average every scalar part of ``loss_fn`` over ``batches``, weighted by batch size."""
    was_training = model.training
    model.eval()
    rows = (
        (len(x), {k: float(v) for k, v in _scalars(loss_fn(model, x.to(device), y.to(device))).items()})
        for x, y in batches
    )
    means = batch_means(rows)
    model.train(was_training)
    return means


class _Updater:
    """``optimizer.step()`` with the options of a ``TrainConfig``: clipping, skipping an update whose gradient
    norm is not finite or above ``skip_grad_norm`` (VDVAE), the learning-rate schedule, which is a
    function of the step alone, so a resumed run picks it up at the step it stopped at, and the average of
    the weights (``ema``) after every update made."""

    def __init__(self, model, optimizer, config: TrainConfig, total_steps: int, steps_done: int, ema=None):
        self.model, self.optimizer, self.config, self.ema = model, optimizer, config, ema
        self.total_steps, self.step = total_steps, steps_done
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])  # saved with the optimizer, so a resumed run has it too
        self._set_lr()

    def _set_lr(self):
        # What torch's LambdaLR does, written out: LambdaLR warns whenever a skipped update leaves the first
        # step of a (resumed) run without an optimizer.step, and the schedule here is a function of the step alone.
        factor = lr_factor(self.step, self.total_steps, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def __call__(self) -> int:
        """Update the weights; 1 if the update was skipped, else 0."""
        skipped = 0
        c = self.config
        if c.clip_grad is None and c.skip_grad_norm is None:
            self.optimizer.step()
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.clip_grad or math.inf)
            # one host sync per step, as VDVAE pays for it
            if c.skip_grad_norm is not None and (not math.isfinite(float(norm)) or float(norm) > c.skip_grad_norm):
                skipped = 1
            else:
                self.optimizer.step()
        if self.ema is not None and not skipped:
            self.ema.update_parameters(self.model)
        self.step += 1
        self._set_lr()
        return skipped


def train_step(run, loss_fn, x, y, update, bf16: bool = False) -> tuple[dict, int]:
    """One training step of ``fit``, the usual PyTorch step (chapter 1): the loss and its parts, clear the old
    gradients, backpropagate, update the weights. Returns the scalar loss parts, and 1 if ``update``
    (``optimizer.step()`` with clipping and the learning-rate schedule) skipped the update, else 0."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        parts = _scalars(loss_fn(run, x, y))
    update.optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    return parts, update()


def _start_epoch(epoch: int, done: int, train_batches, loss_fn, seed: int) -> None:
    """Fix the shuffling and the KL schedule of ``epoch``, which starts at step ``done`` (a resumed run)."""
    if hasattr(train_batches, "set_epoch"):  # seeded shuffling
        train_batches.set_epoch(epoch)
    if hasattr(loss_fn, "set_epoch"):  # a loss with a KL schedule, which moves with every step
        loss_fn.set_epoch(epoch, done) if done else loss_fn.set_epoch(epoch)
    # each process its own eps, fixed by (seed, epoch, rank, and the step a resumed run starts at)
    if distributed.world_size() > 1:
        torch.manual_seed(distributed.rank_seed(seed, epoch, distributed.rank()) + done)


@dataclass
class _Run:
    """One ``fit`` call's state: the model and ``run``, the model as ``loss_fn`` calls it (DDP, compiled)."""

    model: nn.Module
    run: nn.Module
    tested: nn.Module  # the model the test figures are of: the average of the weights when fit keeps one
    loss_fn: object
    batches: object
    test_batches: object
    update: _Updater  # optimizer.step() with the schedule; it holds the optimizer
    speed: SpeedConfig
    device: torch.device
    saved: SavedRun
    history: list
    bar: tqdm
    stop: StopRule
    progress: bool

    def epoch(self, epoch: int, num_epochs: int, partial: dict | None = None) -> bool:
        """Train ``epoch`` (from the step ``partial`` stopped at, in a resumed run), record it and save the
        checkpoint; True if training stops here, before ``num_epochs`` (Ctrl-C, ``max_minutes``)."""
        totals = EpochTotals(epoch, self.saved.path, self.device)
        if partial is not None:  # a run stopped mid-epoch goes on at its next step
            totals.restore(partial, distributed.rank())
        _start_epoch(epoch, totals.steps, self.batches, self.loss_fn, self.update.config.seed)
        self.bar.set_description(f"epoch {epoch + 1}/{num_epochs}")
        if self.train_epoch(totals):
            self.saved.save(self.history, epoch, totals.state())  # the same call again goes on from this step
            self.stopped(epoch + 1, totals.steps, f"at step {totals.steps} of epoch {epoch + 1}", num_epochs)
            return True
        self.history.append(self.record(epoch, totals))
        if self.progress:
            line = (f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in self.history[-1].items())
            tqdm.write("  ".join(line))
        self.saved.save(self.history, epoch + 1)
        if self.stop.interrupt.is_set() or (epoch + 1 < num_epochs and self.stop.out_of_time()):
            self.stopped(epoch + 1, len(self.batches), f"at the end of epoch {epoch + 1}", num_epochs)
            return True
        return False

    def stopped(self, epoch: int, step: int, where: str, num_epochs: int) -> None:
        """Ctrl-C raises ``TrainingInterrupted`` (the checkpoint holds ``step`` of epoch ``epoch``, counted from 1);
        ``max_minutes`` says where it stopped."""
        if self.stop.interrupt.is_set():
            raise TrainingInterrupted(epoch, step, len(self.batches), self.saved.path)
        if self.progress:
            again = f"; run again with the same checkpoint to go on ({self.saved.path})" if self.saved.path else ""
            tqdm.write(f"stopped after {self.stop.max_minutes:g} minutes, {where} of {num_epochs}{again}")

    def train_epoch(self, totals: EpochTotals) -> bool:
        """Train one epoch from step ``totals.steps`` on; its loss parts go to ``totals``. True if it stopped
        before its end (Ctrl-C, or ``max_minutes`` within ``speed.sync_every`` steps), False at its end."""
        self.model.train()
        for x, y in itertools.islice(self.batches, totals.steps, None):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.speed.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            parts, skipped = train_step(self.run, self.loss_fn, x, y, self.update, self.speed.bf16)
            totals.add(parts, self.model, len(x), skipped)
            self.bar.update()
            if self.stop.interrupt.is_set() and totals.steps + len(totals.pending) < len(self.batches):
                totals.flush()
                return True
            if len(totals.pending) == self.speed.sync_every:
                totals.flush()
                self.bar.set_postfix({k: f"{v:.2f}" for k, v in totals.means().items()})
                if self.stop.out_of_time() and totals.steps < len(self.batches):
                    return True
        totals.flush()
        return False

    def record(self, epoch: int, totals: EpochTotals) -> dict:
        """The history entry of a finished epoch: train means over every process, skipped updates, test means
        (of ``tested``: the average of the weights when ``fit`` keeps one)."""
        totals.reduce()
        record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in totals.means().items()}}
        if self.update.config.skip_grad_norm is not None:
            record["skipped_updates"] = totals.skipped
        if self.test_batches is not None:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.speed.bf16):
                tests = evaluate_loss(self.tested, self.loss_fn, self.test_batches, self.device)
            record.update({f"test_{k}": v for k, v in tests.items()})
        return record


def _check_fit(num_epochs, max_minutes, train_batches) -> None:
    if not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive integer, got {num_epochs!r}")
    _check_positive("max_minutes", max_minutes)
    if len(train_batches) == 0:
        raise ValueError("the training set gives no batches: it is empty, or smaller than one batch with drop_last")
    world = distributed.world_size()
    if world > 1 and getattr(train_batches, "world_size", world) != world:
        raise ValueError(
            f"train_batches are shared among {train_batches.world_size} processes, but {world} are training: "
            f"build them with data.Batches(..., rank={distributed.rank()}, world_size={world})"
        )


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
    ema: AveragedModel | None = None,
) -> list:
    """Train ``model`` for ``num_epochs`` and return the per-epoch history (chapters 1-5).

    Each history entry holds the epoch, the mean of every scalar loss part on train (``train_<part>``) and, with
    ``test_batches``, on test (``test_<part>``), and the updates skipped for a huge gradient (``skipped_updates``,
    with ``config.skip_grad_norm``). With ``checkpoint`` (a path, or a ``checkpoint.SavedRun`` already read), the
    model, optimizer, history and random state are saved after every epoch with ``meta`` (how to rebuild the model);
    if the file exists, training resumes from it and ends exactly where an uninterrupted run would. With ``ema``
    (``ema_of(model)``), an average of the weights is kept after every update and saved, and the test figures
    are those of ``ema.module``.
    How a run stops early (``stopping.py``): ``max_minutes`` of training, within ``speed.sync_every`` steps,
    mid-epoch if need be, and a first Ctrl-C after the step in progress (``TrainingInterrupted``) both save the
    checkpoint there, and the same call goes on from that step; a loss part or a parameter that is no longer finite
    stops with an error before anything is saved, so the last good checkpoint stays.
    Under ``torchrun`` (``distributed.py``), the model trains with ``DistributedDataParallel``: ``train_batches``
    must be this process's shard (``data.Batches`` with ``rank`` and ``world_size``), train parts are averaged over
    the processes, each draws its own noise, and only rank 0 shows progress and writes the checkpoint.
    """
    _check_fit(num_epochs, max_minutes, train_batches)
    progress = progress and distributed.rank() == 0  # the other processes are quiet
    saved = checkpoint if isinstance(checkpoint, SavedRun) else SavedRun(checkpoint, meta)  # read and probed once
    device = torch.device(device) if device is not None else default_device()
    for m in (model, ema) if ema is not None else (model,):
        m.to(device, memory_format=torch.channels_last if speed.channels_last else torch.preserve_format)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=config.lr)
    seed_everything(config.seed)
    steps = len(train_batches)
    history, start, partial = saved.resume(model, optimizer, ema, num_epochs, steps)
    done = start * steps + (partial["steps"] if partial is not None else 0)
    update = _Updater(model, optimizer, config, num_epochs * steps, done, ema)
    run = distributed.runnable(model, device, speed.compile)
    # One bar for the whole training, kept when done: a notebook page shows how the run went, and a
    # saved page shows a finished bar instead of the empty space a closed per-epoch bar leaves.
    bar = tqdm(total=num_epochs * steps, initial=done, disable=not progress, unit="step")
    tested = model if ema is None else ema.module
    with first_ctrl_c_stops_after_the_step() as interrupt, closing(bar):
        stop = StopRule(interrupt, max_minutes, device)
        state = _Run(
            model,
            run,
            tested,
            loss_fn,
            train_batches,
            test_batches,
            update,
            speed,
            device,
            saved,
            history,
            bar,
            stop,
            progress,
        )
        for epoch in range(start, num_epochs):
            if state.epoch(epoch, num_epochs, partial if epoch == start else None):
                break
    return history
