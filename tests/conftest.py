import os
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")  # no display in CI
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def real_data_root():
    """The offline dataset folder named by $CVAELIB_DATA; tests that train on real data need it."""
    root = os.environ.get("CVAELIB_DATA")
    if not root or not (Path(root) / "mnist" / "train.npz").exists():
        pytest.skip("needs real MNIST: set CVAELIB_DATA to a folder holding mnist/train.npz")
    return root


@pytest.fixture
def mnist_subset(real_data_root):
    """20 real MNIST training images per class, and 500 test images."""
    from cvaelib import data

    x, y = data.load("mnist", "train", real_data_root)
    x, y = data.stratified_subset(x, y, 20)
    xt, yt = data.load("mnist", "test", real_data_root)
    return x, y, xt[:500], yt[:500]
