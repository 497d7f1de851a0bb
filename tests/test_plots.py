import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from cvaelib import CVAE, VAE, plots
from cvaelib.data import class_names

NAMES = class_names("fashion_mnist")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def shown(fig):
    """The pixels a figure's (first) image shows."""
    return fig.axes[0].images[0].get_array()


def test_image_grids_show_the_images_in_rows_of_nrow():
    images = torch.rand(20, 1, 28, 28)
    grid = shown(plots.image_grid(images, nrow=5, title="t"))
    assert grid.shape == (4 * 30 + 2, 5 * 30 + 2)  # 4 rows of 5, each image padded by 2 pixels
    assert np.allclose(grid[2:30, 2:30], images[0, 0]) and np.allclose(grid[32:60, 2:30], images[5, 0])
    colour = torch.rand(4, 3, 32, 32)
    grid = shown(plots.image_grid(colour))
    assert grid.shape == (36, 4 * 34 + 2, 3) and np.allclose(grid[2:34, 36:68], colour[1].permute(1, 2, 0))
    fig = plots.reconstructions(images, images.flip(0), n=6)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["original", "reconstruction"]


def test_class_samples_labels_every_row():
    fig = plots.class_samples(torch.rand(30, 1, 28, 28), NAMES, n_per_class=3)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == NAMES


def test_latent_scatter_names_classes():
    fig = plots.latent_scatter(torch.randn(100, 2), torch.arange(100) % 10, NAMES)
    colorbar = fig.axes[1]
    assert [t.get_text() for t in colorbar.get_yticklabels()] == NAMES
    assert fig.axes[0].get_xlabel() == "$z_1$"


def test_manifolds():
    assert shown(plots.manifold(VAE(latent_dim=2), n=5)).shape == (5 * 30 + 2, 5 * 30 + 2)  # 5 x 5 decoded images
    fig = plots.manifold_per_class(CVAE(latent_dim=2), NAMES, n=3)
    assert [ax.get_title() for ax in fig.axes] == NAMES
    with pytest.raises(ValueError, match="needs a 2-D latent"):
        plots.manifold(VAE(latent_dim=3))


def test_a_manifold_under_a_learned_prior_lies_over_that_prior(monkeypatch):
    model = CVAE(latent_dim=2, prior="learned")
    with torch.no_grad():
        model.prior_params.weight[3] = torch.tensor([3.0, -3.0, math.log(0.25), math.log(0.25)])
    decoded = []
    decode = model.decode
    monkeypatch.setattr(model, "decode", lambda z, y: decoded.append(z) or decode(z, y))
    plots.manifold(model, n=3, span=2.0, label=3)
    plots.manifold(model, n=3, span=2.0, label=0)  # this class's prior is still N(0, I)
    grid = torch.tensor([-2.0, 0.0, 2.0])
    assert torch.allclose(decoded[0][:, 0].unique(), 3.0 + 0.5 * grid)
    assert torch.allclose(decoded[0][:, 1].unique(), -3.0 + 0.5 * grid)
    assert torch.allclose(decoded[1][:, 0].unique(), grid)


def test_interpolation_and_traversal():
    model = CVAE(latent_dim=4)
    assert shown(plots.interpolation(model, torch.zeros(4), torch.ones(4), y=3, steps=5)).shape[1] == 5 * 30 + 2
    fig = plots.traversal(model, torch.zeros(4), dims=[0, 2], steps=5, y=1)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["$z_{1}$", "$z_{3}$"]


def test_confusion_and_history():
    matrix = torch.eye(10, dtype=torch.int64) * 5
    fig = plots.confusion(matrix, NAMES)
    assert fig.axes[0].get_ylabel() == "requested"
    records = [{"epoch": 1, "train_nelbo": 3.0, "test_nelbo": 3.5}, {"epoch": 2, "train_nelbo": 2.0, "test_nelbo": 2.5}]
    assert len(plots.history(records).axes[0].lines) == 2


def test_markdown_table_has_a_header_a_rule_and_one_line_per_row():
    table = plots.markdown_table(["model", "nats"], [["NN", 100.4], ["CVAE", "66.9"]])
    assert table.data.splitlines() == ["| model | nats |", "|---|---|", "| NN | 100.4 |", "| CVAE | 66.9 |"]
