"""How fast a model of the course trains on this machine: precision x memory layout x compile x batch.

    python benchmarks/training_speed.py             # chapter 4's hierarchy: float32/bfloat16 x contiguous/
                                                    # channels-last x batch 32, 64
    python benchmarks/training_speed.py --compile   # and torch.compile (slow to compile on a CPU)
    python benchmarks/training_speed.py --dataset fashion_mnist --arch conv --batch-sizes 128 512
    python benchmarks/training_speed.py --steps 3   # a quick look

Trains what ``train --dataset D --arch A`` trains (``cvaelib.recipes.default_recipe``: by default the ``small``
hierarchical CVAE on CIFAR-10, KL warm-up included; ``--arch conv`` or ``mlp``: that CVAE with the dataset's
default recipe) with ``cvaelib.train.fit`` for ``--steps`` timed steps after ``--warmup`` untimed
ones, once per setting, all in this one process one after the other, and prints images per second and the
speed-up over float32, contiguous, at the first batch size. bfloat16 is measured only where it is native
(``train.bf16_is_fast``); the likelihood and the KL stay in float32. Channels-last is measured for
convolutions only. The last row is what ``train`` runs with now: ``SpeedConfig.default``, at the recipe's batch
size, with its learning-rate warm-up and its average of the weights (EMA) where it has them; without the
``torch.compile`` that the default adds to a long hierarchical run (``--compile`` measures it). The last column is
the seconds to the first timed step, the compilation included.
Run it alone: another job on the machine measures contention, not the model.
"""

import argparse
import itertools
import time
from dataclasses import replace

import torch

from cvaelib import data
from cvaelib.models import build_model
from cvaelib.provenance import device_description
from cvaelib.recipes import Recipe, default_recipe
from cvaelib.remedies import RemedyLoss
from cvaelib.train import SpeedConfig, bf16_is_fast, ema_of, fit


def images_per_second(
    recipe: Recipe, images, labels, batch_size, speed, steps, warmup, as_trained=False
) -> tuple[float, float]:
    """Training images per second of ``recipe``'s model and loss at ``batch_size`` with ``speed``, and the seconds
    from ``fit``'s call to the first timed step (the warm-up steps: with ``speed.compile``, the compilation too);
    ``as_trained``: with the recipe's learning-rate warm-up and its average of the weights, as ``train`` runs it."""
    torch.manual_seed(0)
    model = build_model(recipe.model)
    batches = data.Batches(images[: batch_size * (steps + warmup)], labels[: batch_size * (steps + warmup)], batch_size)
    loss = RemedyLoss(recipe.remedies, steps_per_epoch=len(batches))
    # the command line's optimisation (Adam, clipping, skipping); its learning-rate warm-up only in the last row
    config = recipe.train if as_trained else replace(recipe.train, warmup_steps=0)
    times = []

    def timed(model, x, y):  # the loss, with a clock at every step (a host sync per step, as skip_grad_norm has)
        times.append(time.perf_counter())
        return loss(model, x, y)

    began = time.perf_counter()
    fit(
        model,
        timed,
        batches,
        1,
        config=config,
        speed=speed,
        device="cpu",
        progress=False,
        ema=ema_of(model, recipe.ema) if as_trained and recipe.ema else None,
    )
    # times[warmup] starts the first timed step and times[-1] the last one: steps - 1 whole steps between them
    return batch_size * (steps - 1) / (times[-1] - times[warmup]), times[warmup] - began


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="cifar10", choices=["mnist", "fashion_mnist", "cifar10"])
    p.add_argument("--arch", default="hierarchical", choices=["hierarchical", "conv", "mlp"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--steps", type=int, default=8, help="timed training steps per setting")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocations, compilation)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile")
    p.add_argument("--default-only", action="store_true", help="only the default's precision and layout")
    p.add_argument("--size", default="small", help="the hierarchy's size preset (tiny: a test)")
    p.add_argument("--train-size", type=int, help="images to read (default: all; a test reads fewer)")
    a = p.parse_args(argv)
    if a.steps < 2 or a.warmup < 1:
        p.error("--steps must be at least 2 and --warmup at least 1")
    recipe = default_recipe(a.dataset, a.arch)
    if a.arch == "hierarchical":
        recipe = replace(recipe, model=recipe.model.resized(a.size))
    images, labels = (t[: a.train_size] for t in data.load(a.dataset, "train"))
    default = SpeedConfig.default(a.arch, "cpu")
    precisions = [False, True] if bf16_is_fast("cpu") else [False]
    layouts = [False] if a.arch == "mlp" else [False, True]
    if a.default_only:
        precisions, layouts = [default.bf16], [default.channels_last]
    compiles = [False, True] if a.compile else [False]
    print(f"{device_description()}, torch {torch.__version__}; bfloat16 native: {bf16_is_fast('cpu')}")
    print(f"{a.dataset}, --arch {a.arch}: {type(recipe.model).__name__}", flush=True)

    def measured(speed: SpeedConfig, batch_size: int, as_trained: bool = False) -> dict:
        """A row of the table, printed as it comes; its seconds unrounded (a tiny model warms up in under 0.05 s)."""
        rate, first = images_per_second(recipe, images, labels, batch_size, speed, a.steps, a.warmup, as_trained)
        row = {
            "bf16": speed.bf16,
            "channels_last": speed.channels_last,
            "compile": speed.compile,
            "batch_size": batch_size,
            "ema": as_trained and recipe.ema is not None,
            "images_per_s": rate,
            "warmup_s": first,
        }
        print(row, flush=True)
        return row

    rows = [
        measured(SpeedConfig(bf16=bf16, channels_last=channels_last, compile=compiled), batch_size)
        for bf16, channels_last, compiled, batch_size in itertools.product(precisions, layouts, compiles, a.batch_sizes)
    ]
    rows.append(measured(default, recipe.batch_size, as_trained=True))
    base = rows[0]["images_per_s"]  # float32, contiguous, the first batch size
    print(
        f"\n| precision | layout | compile | batch | EMA | images/s | speed-up | first {a.warmup} steps (s) |"
        "\n|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {'bfloat16' if r['bf16'] else 'float32'} | {'channels-last' if r['channels_last'] else 'contiguous'}"
            f" | {'yes' if r['compile'] else 'no'} | {r['batch_size']} | {'yes' if r['ema'] else 'no'}"
            f" | {r['images_per_s']:.0f} | "
            f"{r['images_per_s'] / base:.2f}x | {r['warmup_s']:.1f} |"
        )
    return rows


if __name__ == "__main__":
    main()
