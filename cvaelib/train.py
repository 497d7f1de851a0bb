"""A general training loop: progress bar, history, seeding, checkpoints and exact resume.

``fit`` knows nothing about VAEs: it calls ``loss_fn(model, x, y)``, which returns a
dict with a scalar ``"loss"`` to minimise and any other parts to report.
"""
import math
import os
import random
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


def default_device():
    """cuda if there is a GPU, then Apple's mps, then cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state():
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, **contents):
    """Write a checkpoint atomically: an interruption never leaves a broken file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(contents, tmp)
    os.replace(tmp, path)


def _scalars(parts):
    return {k: v for k, v in parts.items() if torch.is_tensor(v) and v.dim() == 0}


def _check_finite(rows, names, epoch, first_step):
    """Raise on the first step whose loss parts are not all finite. ``rows``: (steps, parts)."""
    bad_steps = (~torch.isfinite(rows)).any(dim=1).nonzero()
    if len(bad_steps):
        i = int(bad_steps[0])
        bad = {k: float(v) for k, v in zip(names, rows[i]) if not math.isfinite(v)}
        raise FloatingPointError(
            f"non-finite loss at epoch {epoch + 1}, step {first_step + i + 1}: "
            + ", ".join(f"{k}={v}" for k, v in bad.items())
            + ". Try a lower learning rate or gradient clipping (clip_grad=...)."
        )


@torch.no_grad()
def evaluate_loss(model, loss_fn, batches, device):
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


def fit(model, loss_fn, train_batches, num_epochs, *, test_batches=None, optimizer=None, lr=1e-3,
        device=None, seed=0, clip_grad=None, checkpoint=None, meta=None, progress=True,
        bf16=False, channels_last=False, compile=False, sync_every=10):
    """Train ``model`` for ``num_epochs`` and return the per-epoch history (chapters 1-4).

    Each history entry holds the epoch and the mean of every scalar loss part on train
    (``train_<part>``) and, with ``test_batches``, on test (``test_<part>``).
    With ``checkpoint`` (a path), the model, optimizer, history and random state are saved
    after every epoch, with ``meta`` (e.g. how to rebuild the model); if that file already
    exists, training resumes from it and ends exactly where an uninterrupted run would.
    Speed switches: ``bf16`` (autocast to bfloat16), ``channels_last`` (memory layout for
    convolutions), ``compile`` (``torch.compile``). Loss parts are copied to the host every
    ``sync_every`` steps (a GPU waits at each copy); a non-finite part is still named with its step.
    """
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    history, start = [], 0
    seed_everything(seed)
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if meta is not None and state.get("meta") != meta:  # never resume (and overwrite) another run
            raise ValueError(f"{checkpoint} holds a checkpoint of another model or setting; "
                             "choose another checkpoint path, or delete it to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start = state["history"], state["epoch"]
        _set_rng_state(state["rng"])
    # A compiled module shares its parameters with ``model`` and passes attributes through.
    run = torch.compile(model) if compile else model

    def to_device(x, y):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return (x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x), y

    def losses(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return _scalars(loss_fn(run, x, y))

    for epoch in range(start, num_epochs):
        for thing in (train_batches, loss_fn):  # seeded shuffling; a loss with a KL schedule
            if hasattr(thing, "set_epoch"):
                thing.set_epoch(epoch)
        model.train()
        names, totals, pending, n = None, 0.0, [], 0

        def flush(last_step):
            """Copy pending loss parts to the host, check them, add them to the totals."""
            nonlocal totals, pending
            rows = torch.stack([parts for parts, _ in pending]).cpu()  # (steps, parts)
            _check_finite(rows, names, epoch, last_step - len(pending) + 1)
            sizes = torch.tensor([size for _, size in pending], dtype=rows.dtype)
            totals, pending = totals + (rows * sizes[:, None]).sum(0), []
            bar.set_postfix({k: f"{float(v) / n:.2f}" for k, v in zip(names, totals)})

        bar = tqdm(train_batches, desc=f"epoch {epoch + 1}/{num_epochs}", disable=not progress, leave=False)
        for step, (x, y) in enumerate(bar):
            x, y = to_device(x, y)
            parts = losses(x, y)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
            names = names or list(parts)
            pending.append((torch.stack([parts[k].detach().float() for k in names]), len(x)))
            n += len(x)
            if len(pending) == sync_every:
                flush(step)
        if pending:
            flush(step)
        record = {"epoch": epoch + 1, **{f"train_{k}": float(v) / n for k, v in zip(names, totals)}}
        if test_batches is not None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                record.update({f"test_{k}": v for k, v in evaluate_loss(model, loss_fn, test_batches, device).items()})
        history.append(record)
        if progress:
            tqdm.write("  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        if checkpoint is not None:
            save_checkpoint(checkpoint, model=model.state_dict(), optimizer=optimizer.state_dict(),
                            history=history, epoch=epoch + 1, rng=_rng_state(), meta=meta or {})
    return history
