import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from cvaelib import data

matplotlib.use("Agg")  # no display in CI
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine: these tests run with `pytest -m cuda` where one is")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _has_real_data(root):
    return bool(root) and all(
        (Path(root) / name / f"{split}.npz").exists() for name in data.DATASETS for split in data.SPLITS
    )


def write_synthetic(root, train_per_class=120, test_per_class=600, seed=0):
    """Small stand-ins for the three datasets: each class a bright pattern of its own, plus noise.

    Learnable (a classifier tells the classes apart, a VAE's loss falls), so that every test that
    trains runs on a fresh clone without the real files. Test splits are shuffled, like CIFAR-10's.
    """
    rng = np.random.default_rng(seed)
    for name in data.DATASETS:
        c, h, w = data.image_shape(name)
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            labels = np.repeat(np.arange(10), per_class)
            rng.shuffle(labels)
            # a dark background like MNIST's; CIFAR-10's stand-in gets noise, so that its bits/dim are not tiny
            images = rng.integers(0, 256 if c == 3 else 1, (len(labels), c, h, w))
            for i, label in enumerate(labels):
                # a bar whose place says the class, and a wide one in one of four places: something for z to encode
                row, col = 2 + 2 * label, 3 + 6 * rng.integers(0, 4)
                images[i, label % c, row : row + 2, 2:-2] = 200
                images[i, :, :, col : col + 6] = 255
            (root / name).mkdir(parents=True, exist_ok=True)
            np.savez(root / name / f"{split}.npz", images=images.clip(0, 255).astype(np.uint8), labels=labels)
    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """The dataset folder: $CVAELIB_DATA if it holds the real files, else small synthetic ones.

    With synthetic files, $CVAELIB_DATA points at them for the whole session, so code that reads
    the default root (benchmarks, the command line) finds them too.
    """
    root = os.environ.get(data.ENV_VAR)
    if _has_real_data(root):
        return root
    root = str(write_synthetic(tmp_path_factory.mktemp("synthetic_data")))
    os.environ[data.ENV_VAR] = root
    return root


@pytest.fixture
def real_data(data_root):
    """The real datasets' folder; tests that score the shipped judges on real test images need it."""
    if not _has_real_data(data_root):
        pytest.skip("needs the real datasets ($CVAELIB_DATA): the shipped judges are checked on real test images")
    return data_root


@pytest.fixture
def mnist_subset(data_root):
    """20 MNIST training images per class, and 500 test images."""
    x, y = data.load("mnist", "train", data_root)
    x, y = data.stratified_subset(x, y, 20)
    xt, yt = data.load("mnist", "test", data_root)
    return x, y, xt[:500], yt[:500]
