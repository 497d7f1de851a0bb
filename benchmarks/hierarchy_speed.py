"""How fast the hierarchy of chapter 4 trains on this machine: precision x memory layout x compile x batch.

    python benchmarks/hierarchy_speed.py             # float32/bfloat16 x contiguous/channels-last x batch 32, 64
    python benchmarks/hierarchy_speed.py --compile   # and torch.compile (slow to compile on a CPU)
    python benchmarks/hierarchy_speed.py --steps 3   # a quick look

Trains the ``small`` hierarchical CVAE (``--arch hierarchical``'s model and loss, KL warm-up included) on
CIFAR-10 training images with ``cvaelib.train.fit`` for ``--steps`` timed steps after ``--warmup`` untimed
ones, once per setting, all in this one process one after the other, and prints images per second and the
speed-up over float32, contiguous, batch 32 (the command line's setting before this study). bfloat16 is
measured only where it is native (``train.bf16_is_fast``); the likelihood and the KL stay in float32. The
last row is what ``--arch hierarchical`` trains with now: ``cli.default_speed``, at its batch size, with its
learning-rate warm-up and the average of the weights (EMA) kept after every update.
Run it alone: another job on the machine measures contention, not the model.
"""

import argparse
import itertools
import time
from dataclasses import replace

import torch

from cvaelib import data
from cvaelib.cli import default_speed
from cvaelib.hierarchical import HierarchicalCVAE
from cvaelib.provenance import device_description
from cvaelib.recipes import HIERARCHICAL
from cvaelib.remedies import RemedyConfig, RemedyLoss
from cvaelib.train import SpeedConfig, bf16_is_fast, ema_of, fit


def images_per_second(images, labels, size, batch_size, speed, steps, warmup, ema=None) -> float:
    torch.manual_seed(0)
    model = HierarchicalCVAE(size=size)
    batches = data.Batches(images[: batch_size * (steps + warmup)], labels[: batch_size * (steps + warmup)], batch_size)
    loss = RemedyLoss(RemedyConfig(schedule="linear", warmup=1.0), steps_per_epoch=len(batches))
    # the command line's optimisation (Adam 1e-3, clipping, skipping); its learning-rate warm-up only with its EMA
    config = HIERARCHICAL.train if ema is not None else replace(HIERARCHICAL.train, warmup_steps=0)
    times = []

    def timed(model, x, y):  # the loss, with a clock at every step (a host sync per step, as skip_grad_norm has)
        times.append(time.perf_counter())
        return loss(model, x, y)

    fit(
        model,
        timed,
        batches,
        1,
        config=config,
        speed=speed,
        device="cpu",
        progress=False,
        ema=None if ema is None else ema_of(model, ema),
    )
    # times[warmup] starts the first timed step and times[-1] the last one: steps - 1 whole steps between them
    return batch_size * (steps - 1) / (times[-1] - times[warmup])


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--steps", type=int, default=8, help="timed training steps per setting")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocations, compilation)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile")
    p.add_argument("--size", default="small", help="the hierarchy's size preset (tiny: a test)")
    a = p.parse_args(argv)
    if a.steps < 2 or a.warmup < 1:
        p.error("--steps must be at least 2 and --warmup at least 1")
    images, labels = data.load("cifar10", "train")
    precisions = [False, True] if bf16_is_fast("cpu") else [False]
    compiles = [False, True] if a.compile else [False]
    print(f"{device_description()}, torch {torch.__version__}; bfloat16 native: {bf16_is_fast('cpu')}")
    rows = []
    for bf16, channels_last, compiled, batch_size in itertools.product(
        precisions, [False, True], compiles, a.batch_sizes
    ):
        speed = SpeedConfig(bf16=bf16, channels_last=channels_last, compile=compiled)
        rate = images_per_second(images, labels, a.size, batch_size, speed, a.steps, a.warmup)
        rows.append(
            {
                "bf16": bf16,
                "channels_last": channels_last,
                "compile": compiled,
                "batch_size": batch_size,
                "ema": False,
                "images_per_s": round(rate, 1),
            }
        )
        print(rows[-1], flush=True)
    default, batch_size = default_speed("hierarchical", "cpu"), HIERARCHICAL.batch_size
    rate = images_per_second(images, labels, a.size, batch_size, default, a.steps, a.warmup, HIERARCHICAL.ema)
    rows.append(
        {
            "bf16": default.bf16,
            "channels_last": default.channels_last,
            "compile": default.compile,
            "batch_size": batch_size,
            "ema": True,
            "images_per_s": round(rate, 1),
        }
    )
    print(rows[-1], flush=True)
    base = next(r["images_per_s"] for r in rows if not (r["bf16"] or r["channels_last"] or r["compile"]))
    print("\n| precision | layout | compile | batch | EMA | images/s | speed-up |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {'bfloat16' if r['bf16'] else 'float32'} | {'channels-last' if r['channels_last'] else 'contiguous'}"
            f" | {'yes' if r['compile'] else 'no'} | {r['batch_size']} | {'yes' if r['ema'] else 'no'}"
            f" | {r['images_per_s']:.0f} | "
            f"{r['images_per_s'] / base:.2f}x |"
        )
    return rows


if __name__ == "__main__":
    main()
