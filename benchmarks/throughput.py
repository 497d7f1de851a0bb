"""Training speed: cvaelib's whole-tensor batches against the usual DataLoader loop.

    python benchmarks/throughput.py            # every chapter's default model, CPU
    python benchmarks/throughput.py --steps 5  # a quick look

For each default model (MLP CVAE on MNIST, conv CVAE on Fashion-MNIST, conv CVAE on
CIFAR-10) it trains the same model, same batch size, same device, for the same number of
steps, fed two ways:
- ``cvaelib``: the split kept as one uint8 tensor on the device, batches gathered and
  scaled in one go (``cvaelib.data.Batches``);
- ``DataLoader``: a torchvision-style ``Dataset`` that turns each image into a PIL image
  and applies ``ToTensor`` (what torchvision's MNIST and CIFAR10 classes do per sample),
  batched by ``torch.utils.data.DataLoader``.
Both loops train with ``cvaelib.train.fit``; only the batches differ. It prints images per
second for each, the speed-up over the usual loop (DataLoader, no switches), and each
run's peak memory (resident on a CPU, allocated on a GPU). ``--bf16``, ``--channels-last``
and ``--compile`` switch on ``fit``'s speed options: both loops are then measured with and
without them. Time to quality (MNIST default model, ``--quality NATS``): training seconds
until the test negative ELBO is below NATS, checked after every epoch. Each configuration
runs in a fresh process so that peak memory is its own.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import ToTensor

from cvaelib import data
from cvaelib.evaluate import negative_elbo
from cvaelib.losses import elbo
from cvaelib.models import build_model
from cvaelib.recipes import default_recipe
from cvaelib.train import SpeedConfig, TrainConfig, fit

DATASETS = ("mnist", "fashion_mnist", "cifar10")


class PILDataset(Dataset):
    """What torchvision's dataset classes do per sample: uint8 array -> PIL image -> ToTensor."""

    def __init__(self, images, labels):
        # torchvision keeps (N, H, W) for grey images and (N, H, W, C) for colour
        self.images = images[:, 0].numpy() if images.shape[1] == 1 else images.permute(0, 2, 3, 1).numpy()
        self.labels = labels.tolist()
        self.transform = ToTensor()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def _batches(loop, images, labels, batch_size, device, workers, seed=0):
    if loop == "cvaelib":
        return data.Batches(images, labels, batch_size, device=device, seed=seed)
    return DataLoader(PILDataset(images, labels), batch_size=batch_size, shuffle=True, num_workers=workers)


def _default_model(dataset):
    torch.manual_seed(0)
    return build_model(default_recipe(dataset).model)


def _peak_mb(device):
    return (
        torch.cuda.max_memory_allocated()
        if device != "cpu"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ) / 2**20


def measure(dataset, loop, steps, batch_size=128, device="cpu", workers=0, **switches):
    """Images per second of one epoch of ``fit`` over ``steps`` batches, after a warm-up epoch."""
    images, labels = data.load(dataset, "train")
    images, labels = images[: steps * batch_size], labels[: steps * batch_size]
    model = _default_model(dataset)
    warmup = _batches(loop, images[: 3 * batch_size], labels[: 3 * batch_size], batch_size, device, workers)
    fit(
        model, elbo, warmup, 1, device=device, progress=False, speed=SpeedConfig(**switches)
    )  # compiles, allocates, warms caches
    batches = _batches(loop, images, labels, batch_size, device, workers)
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fit(model, elbo, batches, 1, device=device, progress=False, speed=SpeedConfig(**switches))
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"dataset": dataset, "loop": loop, "images_per_s": len(images) / seconds, "peak_mb": _peak_mb(device)}


def time_to_quality(
    loop, threshold, max_epochs=20, batch_size=128, device="cpu", workers=0, train_size=None, **switches
):
    """Training seconds of the MNIST default model until its test negative ELBO < ``threshold``."""
    images, labels = data.load("mnist", "train")
    images, labels = images[:train_size], labels[:train_size]
    test = data.Batches(*data.load("mnist", "test"), 1000, shuffle=False, device=device)
    model = _default_model("mnist")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seconds, nelbo = 0.0, float("inf")
    for epoch in range(1, max_epochs + 1):
        # A new shuffle each epoch: Batches from its seed, the DataLoader from fit's seeding of torch.
        batches = _batches(loop, images, labels, batch_size, device, workers, seed=epoch)
        start = time.perf_counter()  # only training is timed; the test pass is the same for both loops
        fit(
            model,
            elbo,
            batches,
            1,
            optimizer=optimizer,
            device=device,
            config=TrainConfig(seed=epoch),
            progress=False,
            speed=SpeedConfig(**switches),
        )
        if device != "cpu":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        nelbo = negative_elbo(model, test)["nelbo"]
        if nelbo < threshold:
            break
    return {
        "dataset": "mnist",
        "loop": loop,
        "seconds": seconds,
        "epochs": epoch,
        "test_nelbo": nelbo,
        "reached": nelbo < threshold,
        "peak_mb": _peak_mb(device),
    }


def _child(args):
    """Run one configuration in a fresh process (its own peak memory); returns its JSON result."""
    cmd = [sys.executable, __file__, *args]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options (``--help`` lists them; ``--one`` and ``--one-quality`` are a child's)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--steps", type=int, default=50, help="timed training steps per configuration")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory layout")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--quality", type=float, help="also time MNIST training until the test negative ELBO < this")
    p.add_argument("--max-epochs", type=int, default=20, help="give up the time to quality after this many epochs")
    p.add_argument("--train-size", type=int, help="time to quality on the first N training images (default all)")
    p.add_argument("--one", nargs=2, metavar=("DATASET", "LOOP"), help=argparse.SUPPRESS)  # a child run
    p.add_argument("--one-quality", metavar="LOOP", help=argparse.SUPPRESS)  # a child run
    return p.parse_args(argv)


def throughput_rows(a: argparse.Namespace, configs: list, options: list) -> list[dict]:
    """Images per second of each configuration on each dataset, each in a fresh process, printed as they come."""
    print(f"\nthroughput, {a.steps} timed steps; x usual = images/s over the DataLoader loop's without switches")
    print(f"{'dataset':<14} {'loop':<11} {'switches':<30} {'img/s':>8} {'x usual':>8} {'peak MB':>8}")
    rows = []
    for dataset in a.datasets:
        usual = None
        for loop, extra in configs:
            r = _child(["--one", dataset, loop, "--steps", str(a.steps), *options, *extra])
            r["switches"] = " ".join(extra) or "none"
            usual = usual or r["images_per_s"]
            r["speedup"] = r["images_per_s"] / usual
            rows.append(r)
            print(
                f"{dataset:<14} {loop:<11} {r['switches']:<30} {r['images_per_s']:>8.0f} {r['speedup']:>8.2f} "
                f"{r['peak_mb']:>8.0f}",
                flush=True,
            )
    return rows


def quality_rows(a: argparse.Namespace, configs: list, options: list) -> list[dict]:
    """Training seconds of each configuration until MNIST's test negative ELBO < ``--quality``, each in a fresh
    process, printed as they come."""
    print(f"\ntime to quality: MNIST default model, training seconds until test negative ELBO < {a.quality:g} nats")
    print(f"{'loop':<11} {'switches':<30} {'seconds':>8} {'epochs':>7} {'test nELBO':>11} {'x usual':>8}")
    rows, usual = [], None
    for loop, extra in configs:
        r = _child(
            [
                "--one-quality",
                loop,
                "--quality",
                str(a.quality),
                "--max-epochs",
                str(a.max_epochs),
                *(["--train-size", str(a.train_size)] if a.train_size else []),
                *options,
                *extra,
            ]
        )
        r["switches"] = " ".join(extra) or "none"
        usual = usual or r["seconds"]
        r["speedup"] = usual / r["seconds"]
        rows.append(r)
        reached = "" if r["reached"] else " (not reached)"
        print(
            f"{loop:<11} {r['switches']:<30} {r['seconds']:>8.1f} {r['epochs']:>7} {r['test_nelbo']:>11.1f} "
            f"{r['speedup']:>8.2f}{reached}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict] | None:
    a = parse_args(argv)
    switches = dict(bf16=a.bf16, channels_last=a.channels_last, compile=a.compile)
    if a.one:  # a child: one configuration's throughput, as JSON
        print(json.dumps(measure(*a.one, a.steps, a.batch_size, a.device, a.workers, **switches)))
        return None
    if a.one_quality:  # a child: one configuration's time to quality, as JSON
        result = time_to_quality(
            a.one_quality, a.quality, a.max_epochs, a.batch_size, a.device, a.workers, a.train_size, **switches
        )
        print(json.dumps(result))
        return None
    flags = [f"--{k.replace('_', '-')}" for k, on in switches.items() if on]
    # The usual loop (DataLoader, no switches) first; then cvaelib; then both with the switches, if any.
    configs = [("DataLoader", []), ("cvaelib", [])] + ([("DataLoader", flags), ("cvaelib", flags)] if flags else [])
    options = ["--batch-size", str(a.batch_size), "--device", a.device, "--workers", str(a.workers)]
    print(
        f"device {a.device}, batch {a.batch_size}, DataLoader workers {a.workers}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    rows = throughput_rows(a, configs, options)
    if a.quality is not None:
        rows += quality_rows(a, configs, options)
    return rows


if __name__ == "__main__":
    main()
