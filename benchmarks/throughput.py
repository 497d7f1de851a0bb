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
second for each, their ratio, and each run's peak memory. Each configuration runs in a
fresh process so that peak memory is its own. ``--bf16``, ``--channels-last`` and
``--compile`` switch on ``fit``'s speed options for both loops.
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

from cvaelib import CVAE, data
from cvaelib.cli import DEFAULTS
from cvaelib.losses import elbo
from cvaelib.train import fit

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


def _batches(loop, images, labels, batch_size, device, workers):
    if loop == "cvaelib":
        return data.Batches(images, labels, batch_size, device=device)
    return DataLoader(PILDataset(images, labels), batch_size=batch_size, shuffle=True, num_workers=workers)


def measure(dataset, loop, steps, batch_size=128, device="cpu", workers=0, **switches):
    """Images per second of one epoch of ``fit`` over ``steps`` batches, after a warm-up epoch."""
    torch.manual_seed(0)
    d = DEFAULTS[dataset]
    images, labels = data.load(dataset, "train")
    images, labels = images[:steps * batch_size], labels[:steps * batch_size]
    model = CVAE(data.image_shape(dataset), 10, d["latent_dim"], d["arch"], d["likelihood"], prior=d["prior"])
    warmup = _batches(loop, images[:3 * batch_size], labels[:3 * batch_size], batch_size, device, workers)
    fit(model, elbo, warmup, 1, device=device, progress=False, **switches)  # compiles, allocates, warms caches
    batches = _batches(loop, images, labels, batch_size, device, workers)
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fit(model, elbo, batches, 1, device=device, progress=False, **switches)
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_mb = (torch.cuda.max_memory_allocated() if device != "cpu"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    return {"dataset": dataset, "loop": loop, "images_per_s": len(images) / seconds, "peak_mb": peak_mb}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--steps", type=int, default=50, help="timed training steps per configuration")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory layout")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--one", nargs=2, metavar=("DATASET", "LOOP"), help=argparse.SUPPRESS)  # a child run
    a = p.parse_args(argv)
    switches = dict(bf16=a.bf16, channels_last=a.channels_last, compile=a.compile)
    if a.one:
        print(json.dumps(measure(*a.one, a.steps, a.batch_size, a.device, a.workers, **switches)))
        return None
    flags = [f"--{k.replace('_', '-')}" for k, on in switches.items() if on]
    rows = []
    for dataset in a.datasets:
        for loop in ("cvaelib", "DataLoader"):
            cmd = [sys.executable, __file__, "--one", dataset, loop, "--steps", str(a.steps),
                   "--batch-size", str(a.batch_size), "--device", a.device, "--workers", str(a.workers), *flags]
            rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    print(f"device {a.device}, batch {a.batch_size}, {a.steps} timed steps, DataLoader workers {a.workers}, "
          f"switches {' '.join(flags) or 'none'}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'dataset':<14} {'cvaelib img/s':>14} {'DataLoader img/s':>17} {'ratio':>6} {'peak MB (c / D)':>16}")
    for fast, slow in zip(rows[::2], rows[1::2]):
        print(f"{fast['dataset']:<14} {fast['images_per_s']:>14.0f} {slow['images_per_s']:>17.0f} "
              f"{fast['images_per_s'] / slow['images_per_s']:>6.2f} {fast['peak_mb']:>7.0f} / {slow['peak_mb']:<7.0f}")
    return rows


if __name__ == "__main__":
    main()
