"""Shipped models: written in 16 bits with a checksum, read back as float32 with weights_only, refused when changed."""

import json

import pytest
import torch

from cvaelib.checkpoint import CheckpointError
from cvaelib.fitted_prior import FittedPrior
from cvaelib.hierarchical import HierarchicalConfig
from cvaelib.models import ModelConfig, build_model
from cvaelib.shipped import MANIFEST, annotate, load_shipped, manifest, sha256, ship
from cvaelib.structured import StructuredConfig


@pytest.fixture
def shipped_folder(tmp_path):
    torch.manual_seed(0)
    cvae = build_model(ModelConfig(latent_dim=3, prior="learned"))
    prior = FittedPrior(torch.ones(10, 1), torch.randn(10, 1, 3), torch.eye(3).repeat(10, 1, 1, 1))
    ship(cvae, "mnist_cvae", {"dataset": "mnist"}, prior, tmp_path)
    hierarchy = build_model(HierarchicalConfig.from_size(size="tiny"))
    ship(hierarchy, "cifar10_tiny", {"dataset": "cifar10"}, folder=tmp_path)
    completer = build_model(StructuredConfig(latent_dim=4, hidden=8))  # chapter 5's CVAE
    ship(completer, "quadrants_cvae", {"dataset": "mnist", "num_given": 1}, folder=tmp_path)
    return tmp_path, cvae, hierarchy, prior, completer


def test_a_shipped_model_loads_into_its_configuration_as_float32(shipped_folder):
    folder, cvae, hierarchy, prior, completer = shipped_folder
    entries = manifest(folder)
    assert set(entries) == {"mnist_cvae", "cifar10_tiny", "quadrants_cvae"}
    for name, original in (("mnist_cvae", cvae), ("cifar10_tiny", hierarchy), ("quadrants_cvae", completer)):
        model = load_shipped(name, folder=folder)
        assert type(model) is type(original) and model.config == original.config
        assert entries[name]["sha256"] == sha256(folder / f"{name}.pt")
        for (key, value), kept in zip(original.state_dict().items(), model.state_dict().values()):
            assert kept.dtype == value.dtype, key  # float32 again
            assert torch.allclose(kept, value.half().float()), key  # the 16-bit weights, exactly
    loaded = load_shipped("mnist_cvae", folder=folder)
    assert torch.equal(loaded.fitted_prior.means, prior.means) and loaded.shipped["dataset"] == "mnist"
    assert load_shipped("cifar10_tiny", folder=folder).fitted_prior is None
    # 16 bits: the file holds about half of the float32 weights' bytes
    float32_bytes = sum(v.numel() * 4 for v in cvae.state_dict().values())
    assert entries["mnist_cvae"]["bytes"] < 0.6 * float32_bytes


def test_a_changed_byte_is_refused_by_name(shipped_folder):
    folder = shipped_folder[0]
    path = folder / "mnist_cvae.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"mnist_cvae\.pt does not match its sha256"):
        load_shipped("mnist_cvae", folder=folder)


def test_a_file_that_needs_pickle_is_refused_even_with_a_matching_checksum(shipped_folder):
    folder = shipped_folder[0]
    path = folder / "mnist_cvae.pt"
    torch.save({"model": {}, "object": torch.nn.ReLU()}, path)  # a module: only pickle could rebuild it
    annotate("mnist_cvae", folder, sha256=sha256(path))
    with pytest.raises(CheckpointError, match="refused"):
        load_shipped("mnist_cvae", folder=folder)


def test_unknown_and_missing_models_are_named(shipped_folder):
    folder = shipped_folder[0]
    with pytest.raises(KeyError, match="no shipped model 'nope'.*cifar10_tiny"):
        load_shipped("nope", folder=folder)
    (folder / "cifar10_tiny.pt").unlink()
    with pytest.raises(FileNotFoundError, match="cifar10_tiny.pt is missing"):
        load_shipped("cifar10_tiny", folder=folder)
    assert json.loads((folder / MANIFEST).read_text())["cifar10_tiny"]["file"] == "cifar10_tiny.pt"


def test_the_course_ships_its_trained_models_within_25_mb():
    from cvaelib.provenance import RESULTS

    entries = manifest()
    chapter_5 = {"quadrants_1_nn", "quadrants_1_cvae"}
    assert {"cifar10_hierarchy", "mnist_default", "fashion_mnist_default", "mnist_vae", *chapter_5} <= set(entries)
    weights = sum(e["bytes"] for e in entries.values()) + sum(p.stat().st_size for p in RESULTS.glob("judge_*.pt"))
    assert weights <= 25e6, weights
    for name, entry in entries.items():
        model = load_shipped(name)  # checksum, weights_only, and the configuration it rebuilds into
        if name in chapter_5:  # it completes digits: no label, no prior over images
            assert entry["num_given"] == 1 and model.fitted_prior is None, name
        elif model.num_classes:  # a conditional model ships with the prior fitted to its codes
            assert model.fitted_prior is not None and model.fitted_prior.num_classes == model.num_classes == 10, name
        else:  # chapter 1's VAE: the prior N(0, I) is its own
            assert model.fitted_prior is None, name
        assert {"commit", "date", "device"} <= set(entry["provenance"]), name


def test_the_shipped_cifar10_model_reproduces_its_recorded_bits_per_dim(real_data):
    from cvaelib import data
    from cvaelib.evaluate import negative_elbo
    from cvaelib.losses import bits_per_dim
    from cvaelib.train import seed_everything

    model = load_shipped("cifar10_hierarchy")
    images, labels = (t[:500] for t in data.load("cifar10", "test", real_data))
    seed_everything(0)
    nelbo = negative_elbo(model, data.Batches(images, labels, 250, shuffle=False))["nelbo"]
    assert bits_per_dim(nelbo, 3 * 32 * 32) == pytest.approx(model.shipped["check_bits_per_dim_500"], abs=0.01)


def test_the_shipped_vae_reproduces_its_recorded_negative_elbo(real_data):
    from cvaelib import data
    from cvaelib.evaluate import negative_elbo
    from cvaelib.train import seed_everything

    model = load_shipped("mnist_vae")
    assert model.num_classes == 0 and model.latent_dim == 16
    images, labels = (t[:500] for t in data.load("mnist", "test", real_data))
    seed_everything(0)
    nelbo = negative_elbo(model, data.Batches(images, labels, 500, shuffle=False))["nelbo"]
    assert nelbo == pytest.approx(model.shipped["check_negative_elbo_500"], abs=0.05)


@pytest.mark.parametrize("kind", ["nn", "cvae"])
def test_chapter_5s_shipped_models_reproduce_their_recorded_figures(real_data, kind):
    from cvaelib import data
    from cvaelib.structured import evaluate
    from cvaelib.train import seed_everything

    model = load_shipped(f"quadrants_1_{kind}")
    images, labels = (t[:500] for t in data.load("mnist", "test", real_data))
    seed_everything(0)
    figures = evaluate(model, data.Batches(images, labels, 500, shuffle=False), num_given=1, k=1)
    assert figures["nelbo" if kind == "cvae" else "nll"] == pytest.approx(model.shipped["check_500"], abs=0.05)
