"""The course's datasets as whole tensors: loading (offline or by download) and batching.

A split is stored as ``<root>/<name>/<split>.npz`` with arrays ``images`` (uint8,
N x C x H x W) and ``labels`` (int64, N). The root is the ``root`` argument, else the
environment variable ``CVAELIB_DATA``, else ``./data``.
"""

import os
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import torch

ENV_VAR = "CVAELIB_DATA"
DOWNLOAD_TIMEOUT = 60  # seconds without an answer before a download gives up
# A relative data folder (from $CVAELIB_DATA or the default) is taken from the repository root, so a
# notebook kernel started in chapters/ finds the same folder as a shell in the root. Installed outside
# a checkout, it is taken from the working directory.
_REPOSITORY = Path(__file__).resolve().parent.parent
BASE = _REPOSITORY if (_REPOSITORY / "pyproject.toml").exists() else Path.cwd()

DATASETS = {
    "mnist": {
        "shape": (1, 28, 28),
        "classes": [str(d) for d in range(10)],
        "torchvision": "MNIST",
    },
    "fashion_mnist": {
        "shape": (1, 28, 28),
        "classes": [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
        "torchvision": "FashionMNIST",
    },
    "cifar10": {
        "shape": (3, 32, 32),
        "classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        "torchvision": "CIFAR10",
    },
}
SPLITS = ("train", "test")


def _check_name(name):
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")


def class_names(name: str) -> list[str]:
    """The ten class names of a dataset, in label order (chapters 2-4)."""
    _check_name(name)
    return list(DATASETS[name]["classes"])


def image_shape(name: str) -> tuple[int, int, int]:
    """(C, H, W) of a dataset's images."""
    _check_name(name)
    return DATASETS[name]["shape"]


def data_root(root: str | Path | None = None) -> Path:
    """The data folder: the argument, else $CVAELIB_DATA, else ``data`` in the repository root.

    A relative argument is taken from the working directory, like any path given to a program;
    a relative $CVAELIB_DATA (or the default) from the repository root (``BASE``).
    """
    if root:
        return Path(root)
    return BASE / Path(os.environ.get(ENV_VAR) or "data")


def _read_npz(path, name):
    try:
        with np.load(path) as f:
            images, labels = f["images"], f["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(
            f"{path} is not a valid dataset file ({type(e).__name__}: {e}); it must be an .npz with arrays "
            f"'images' and 'labels'. Delete it to download it again, or replace it with a good copy."
        ) from e
    shape = DATASETS[name]["shape"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
        raise ValueError(
            f"{path}: 'images' must be uint8 of shape (N, {', '.join(map(str, shape))}), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: 'labels' must be integers of shape ({len(images)},), got {labels.dtype} {labels.shape}"
        )
    labels = labels.astype(np.int64)  # before any comparison: uint8 labels would wrap around
    num_classes = len(DATASETS[name]["classes"])
    if len(labels) == 0:
        raise ValueError(f"{path} holds no images; replace it with a good copy")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"{path}: labels must be in 0..{num_classes - 1}, got values from {labels.min()} to "
            f"{labels.max()}; replace it with a good copy"
        )
    missing = sorted(set(range(num_classes)) - set(np.unique(labels).tolist()))
    if missing:
        raise ValueError(
            f"{path} has no image of class {', '.join(map(str, missing))}: every class must be present; "
            "replace it with a good copy"
        )
    return torch.from_numpy(images), torch.from_numpy(labels)


def _download(name, split, root, path):
    """Fetch a split through torchvision into ``root`` and write its .npz; a failure leaves nothing behind."""
    import torchvision

    cls = getattr(torchvision.datasets, DATASETS[name]["torchvision"])
    raw = root / "raw"
    made = [p for p in (root, raw) if not p.exists()]  # the folders this download creates, removed if it fails
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)  # torchvision's urllib calls wait forever otherwise
    try:
        ds = cls(root=str(raw), train=(split == "train"), download=True)
    except Exception as e:  # no network, a blocked host, a broken archive ...
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(
            f"No copy of {name}/{split} at {path}, and downloading it failed ({type(e).__name__}: {reason}).\n"
            f"Offline? Point the course at a folder holding <name>/<split>.npz files: "
            f"set {ENV_VAR}=/path/to/data (or pass root=...), or put the file at {path}."
        ) from None  # one message, not the chain of download tracebacks
    finally:
        socket.setdefaulttimeout(previous_timeout)
    images = np.asarray(ds.data)
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)  # to (N, C, H, W)
    labels = np.asarray(ds.targets, dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    try:
        np.savez(tmp, images=np.ascontiguousarray(images, dtype=np.uint8), labels=labels)
        os.replace(tmp, path)  # atomic: an interrupted download never leaves half a file
    finally:
        tmp.unlink(missing_ok=True)


def load(
    name: str, split: str = "train", root: str | Path | None = None, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split: images uint8 (N,C,H,W) and labels int64 (N,) (every chapter).

    Reads ``<root>/<name>/<split>.npz``; if it is missing, downloads through
    torchvision (unless ``download=False``) and writes that file, so the next load is instant.
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    root = data_root(root)
    path = root / name / f"{split}.npz"
    if not path.exists():
        if not download:
            raise FileNotFoundError(
                f"No copy of {name}/{split} at {path}. Set {ENV_VAR}=/path/to/data "
                f"(a folder with <name>/<split>.npz) or allow download=True."
            )
        _download(name, split, root, path)
    return _read_npz(path, name)


def stratified_subset(
    images: torch.Tensor, labels: torch.Tensor, n_per_class: int | None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Take ``n_per_class`` random examples of every class, classes in label order (smoke runs);
    all of them, as they are, with ``n_per_class=None`` (the full profile)."""
    if n_per_class is None:
        return images, labels
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < n_per_class:
            raise ValueError(f"class {int(c)} has only {len(idx)} examples, fewer than n_per_class={n_per_class}")
        picks.append(idx[torch.randperm(len(idx), generator=g)[:n_per_class]])
    picks = torch.cat(picks)
    return images[picks], labels[picks]


class Batches:
    """Shuffled float batches in [0, 1] from a whole split kept as one tensor on ``device``.

    No per-sample PIL or DataLoader work: one index, one gather, one division per batch.
    Shuffling is seeded by (seed, epoch); ``fit`` calls ``set_epoch`` so a resumed run
    sees exactly the batches it would have seen.

    With ``world_size`` > 1 (``torchrun``, ``python -m cvaelib train``), process ``rank`` takes its
    shard ``order[rank::world_size]`` of every epoch's permutation, the same on every process. The
    tail is dropped: the last ``len(images) % world_size`` images of each permutation (a different
    few each epoch when shuffling) are left out, so that every process has the same number of
    batches and none waits for another. With a per-process ``batch_size`` of the global one divided
    by ``world_size``, the processes' i-th batches together are one process's i-th global batch.
    """

    def __init__(
        self,
        images,
        labels,
        batch_size=128,
        shuffle=True,
        device="cpu",
        seed=0,
        drop_last=False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if images.dtype != torch.uint8:
            raise TypeError(f"Batches expects uint8 images as returned by load(), got {images.dtype}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise ValueError("Batches got no images: the dataset (or the subset taken from it) is empty")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an integer in 0..{world_size - 1}, got {rank!r}")
        if len(images) < world_size:
            raise ValueError(f"{len(images)} images cannot be shared among {world_size} processes")
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Fix the shuffling of the coming pass (the PyTorch sampler convention)."""
        self.epoch = epoch

    def _shard_size(self) -> int:
        """Images this process sees per epoch: all of them, or its equal share (the tail dropped)."""
        return len(self.images) // self.world_size

    def __len__(self):
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.images)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g).to(self.images.device)
        else:
            order = torch.arange(n, device=self.images.device)
        if self.world_size > 1:  # (n,) -> (n // world_size,): this process's shard
            order = order[: self._shard_size() * self.world_size][self.rank :: self.world_size]
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.images[idx].float().div_(255), self.labels[idx]


def batch_means(rows) -> dict:
    """Dataset means from per-batch means: ``rows`` yields ``(batch size, {name: the batch's mean})``, and each
    batch counts by its size, so that a smaller last batch does not weigh as much as a full one. The means may be
    numbers or tensors (a mean per dimension)."""
    totals, n = {}, 0
    for size, means in rows:
        for name, value in means.items():
            totals[name] = totals.get(name, 0.0) + value * size
        n += size
    if n == 0:
        raise ValueError("no images to average over: the batches are empty")
    return {name: total / n for name, total in totals.items()}
