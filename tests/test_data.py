import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from cvaelib import data


def write_split(root, name, split, n=30, shape=(1, 28, 28), seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % 10
    (root / name).mkdir(parents=True, exist_ok=True)
    np.savez(root / name / f"{split}.npz", images=images, labels=labels)
    return images, labels


def test_load_reads_the_npz(tmp_path):
    images, labels = write_split(tmp_path, "mnist", "train")
    x, y = data.load("mnist", "train", root=tmp_path)
    assert x.dtype == torch.uint8 and x.shape == (30, 1, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (30,)
    assert np.array_equal(x.numpy(), images) and np.array_equal(y.numpy(), labels)


def test_root_comes_from_the_environment_variable(tmp_path, monkeypatch):
    write_split(tmp_path, "cifar10", "test", shape=(3, 32, 32))
    monkeypatch.setenv("CVAELIB_DATA", str(tmp_path))
    assert data.load("cifar10", "test")[0].shape == (30, 3, 32, 32)


def test_root_defaults_to_the_repository_data_folder_wherever_python_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("CVAELIB_DATA", raising=False)
    monkeypatch.chdir(tmp_path / "..")  # like a kernel started in chapters/
    repository = Path(__file__).resolve().parent.parent
    assert data.data_root() == repository / "data"
    monkeypatch.setenv("CVAELIB_DATA", "some/where")  # a relative variable: from the repository root too
    assert data.data_root() == repository / "some" / "where"
    assert data.data_root("mine") == Path("mine")  # an argument is a path like any other


def _write_idx(path, array):
    # The IDX format of the MNIST files: magic (0, 0, dtype 0x08, ndim), sizes, bytes.
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_path_converts_raw_files_offline(tmp_path, monkeypatch, name, folder):
    """No .npz yet: torchvision reads the raw files (already downloaded), we write the .npz."""
    raw = tmp_path / "raw" / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 28, 28))
    labels = np.arange(12) % 10
    # torchvision looks for all four files before it skips the download
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    # Fail loudly if torchvision tried the network instead of the files we wrote.
    monkeypatch.setattr(
        torchvision.datasets.mnist, "download_and_extract_archive", lambda *a, **k: pytest.fail("network used")
    )
    x, y = data.load(name, "test", root=tmp_path)
    assert x.shape == (12, 1, 28, 28) and np.array_equal(x[:, 0].numpy(), images)
    assert np.array_equal(y.numpy(), labels)
    assert (tmp_path / name / "test.npz").exists()  # the second load is instant
    x2, _ = data.load(name, "test", root=tmp_path, download=False)
    assert torch.equal(x, x2)


def test_offline_without_a_copy_names_file_variable_and_fix(tmp_path, monkeypatch):
    def no_network(self, *args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    with pytest.raises(FileNotFoundError) as err:
        data.load("mnist", "train", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "mnist" / "train.npz") in message
    assert "CVAELIB_DATA" in message and "downloading it failed" in message


def test_missing_file_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="No copy of mnist/test at .*CVAELIB_DATA"):
        data.load("mnist", "test", root=tmp_path, download=False)


def test_corrupt_file_is_named(tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"mnist/train.npz is not a valid dataset file"):
        data.load("mnist", "train", root=tmp_path)


def test_misshaped_file_is_named(tmp_path):
    write_split(tmp_path, "mnist", "train", shape=(3, 32, 32))
    with pytest.raises(ValueError, match=r"mnist/train.npz: 'images' must be uint8 of shape \(N, 1, 28, 28\)"):
        data.load("mnist", "train", root=tmp_path)


def test_missing_array_is_named(tmp_path):
    (tmp_path / "mnist").mkdir()
    np.savez(tmp_path / "mnist" / "test.npz", pictures=np.zeros(3))
    with pytest.raises(ValueError, match="test.npz is not a valid dataset file"):
        data.load("mnist", "test", root=tmp_path)


def test_unknown_dataset_and_split_are_rejected():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; choose one of"):
        data.load("svhn")
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        data.load("mnist", "valid")
    with pytest.raises(ValueError, match="unknown dataset"):
        data.class_names("imagenet")


def test_class_names():
    assert data.class_names("mnist")[7] == "7"
    assert data.class_names("fashion_mnist")[9] == "Ankle boot"
    assert data.class_names("cifar10")[3] == "cat"
    assert all(len(data.class_names(n)) == 10 for n in data.DATASETS)


def test_stratified_subset_takes_n_of_every_class():
    labels = torch.arange(100) % 10
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    x, y = data.stratified_subset(images, labels, 3)
    assert torch.equal(y, torch.arange(10).repeat_interleave(3))
    assert torch.equal(x.flatten().long() % 10, y)  # each image kept its own label
    with pytest.raises(ValueError, match="class 0 has only 10 examples"):
        data.stratified_subset(images, labels, 11)


def test_batches_cover_the_split_once_as_floats():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1) * 25
    labels = torch.arange(10)
    batches = data.Batches(images, labels, batch_size=4)
    assert len(batches) == 3
    seen = []
    for x, y in batches:
        assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        assert torch.equal((x.flatten() * 255).round().long(), y * 25)  # images stay with labels
        seen.append(y)
    assert sorted(torch.cat(seen).tolist()) == list(range(10))


def test_batches_shuffle_is_fixed_by_seed_and_epoch():
    images, labels = torch.zeros(50, 1, 1, 1, dtype=torch.uint8), torch.arange(50)
    a, b = data.Batches(images, labels, 50, seed=3), data.Batches(images, labels, 50, seed=3)
    first = next(iter(a))[1]
    assert torch.equal(first, next(iter(b))[1])
    a.set_epoch(1)
    assert not torch.equal(first, next(iter(a))[1])
    unshuffled = data.Batches(images, labels, 50, shuffle=False)
    assert torch.equal(next(iter(unshuffled))[1], labels)


def test_batches_reject_float_images():
    with pytest.raises(TypeError, match="uint8"):
        data.Batches(torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.int64))


def test_data_shapes(data_root):
    real = "synthetic_data" not in str(data_root)  # conftest writes small stand-ins without the real files
    for name in data.DATASETS:
        x, y = data.load(name, "test", data_root)
        assert tuple(x.shape[1:]) == data.image_shape(name) and len(x) == len(y)
        assert set(y.unique().tolist()) == set(range(10))
        assert len(x) == (
            10_000 if real else 10 * 600
        )  # every test image: the real split, or the stand-ins' 600 a class


def test_labels_out_of_range_or_a_missing_class_are_named(tmp_path):
    images = np.zeros((30, 1, 28, 28), dtype=np.uint8)
    (tmp_path / "mnist").mkdir()
    for labels, message in [
        (np.full(30, 255, dtype=np.uint8), r"labels must be in 0..9, got values from 255 to 255"),
        (np.arange(30) % 10 - 1, "labels must be in 0..9, got values from -1"),
        (np.arange(30) % 9, "has no image of class 9: every class must be present"),
    ]:
        np.savez(tmp_path / "mnist" / "train.npz", images=images, labels=labels)
        with pytest.raises(ValueError, match=message):
            data.load("mnist", "train", root=tmp_path)


def test_a_failed_download_has_a_timeout_and_leaves_no_folder_behind(tmp_path, monkeypatch):
    import socket

    seen = {}

    def no_network(self, *args, **kwargs):
        seen["timeout"] = socket.getdefaulttimeout()
        (tmp_path / "data" / "raw" / "MNIST").mkdir(parents=True)  # torchvision made its folders, then failed
        raise urllib.error.URLError("timed out")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    with pytest.raises(FileNotFoundError, match="CVAELIB_DATA") as err:
        data.load("mnist", "train", root=tmp_path / "data")
    assert err.value.__cause__ is None and err.value.__suppress_context__  # one message, no chain of tracebacks
    assert seen["timeout"] == data.DOWNLOAD_TIMEOUT and socket.getdefaulttimeout() is None
    assert not (tmp_path / "data").exists()


def test_batch_means_weigh_each_batch_by_its_size():
    rows = [(4, {"loss": 1.0, "per_dim": torch.tensor([1.0, 2.0])}), (1, {"loss": 6.0, "per_dim": torch.zeros(2)})]
    means = data.batch_means(iter(rows))
    assert means["loss"] == pytest.approx((4 * 1.0 + 6.0) / 5)  # not (1 + 6) / 2
    torch.testing.assert_close(means["per_dim"], torch.tensor([0.8, 1.6]))
    with pytest.raises(ValueError, match="no images"):
        data.batch_means(iter([]))
