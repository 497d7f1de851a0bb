"""Figures of the course: matplotlib Figures (chapters 1-5), and the small Markdown tables of chapters 2 and 5."""

import matplotlib.pyplot as plt
import numpy as np
import torch
from torchvision.utils import make_grid

from .losses import reparameterize
from .structured import show_input, split_quadrants


def _to_numpy_grid(images, nrow, padding=2):
    """(N,C,H,W) floats in [0, 1] -> one (H', W', C) array laid out with torchvision."""
    grid = make_grid(images.detach().cpu().float().clamp(0, 1), nrow=nrow, padding=padding, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()


def _show(ax, images, nrow):
    grid = _to_numpy_grid(images, nrow)
    ax.imshow(grid[..., 0] if images.shape[1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def show(fig) -> None:
    """Display a figure once in a notebook, then close it: the notebook does not draw it a second time,
    and a page that makes many figures does not keep them all in memory."""
    from IPython.display import display

    display(fig)
    plt.close(fig)


def image_grid(images, nrow=8, title=None):
    """A grid of float images (N,C,H,W) in [0, 1]."""
    rows = -(-len(images) // nrow)
    fig, ax = plt.subplots(figsize=(nrow * 0.6, rows * 0.6 + 0.4))
    _show(ax, images, nrow)
    if title:
        ax.set_title(title)
    ax.axis("off")
    return fig


def reconstructions(x, x_hat, n=10):
    """Originals (top row) above their reconstructions (bottom row)."""
    n = min(n, len(x))
    fig, ax = plt.subplots(figsize=(n * 0.7, 1.8))
    _show(ax, torch.cat([x[:n], x_hat[:n]]), nrow=n)
    side = x.shape[-2] + 2  # image height plus the grid's padding
    ax.set_yticks([side / 2, side * 1.5], ["original", "reconstruction"])
    ax.set_title("Reconstructions")
    return fig


def class_samples(images, class_names, n_per_class, title="Samples per class", xlabel="samples z ~ p(z|y)"):
    """Images laid out as classes x images; ``images`` ordered class by class (``xlabel=""`` for real ones)."""
    fig, ax = plt.subplots(figsize=(n_per_class * 0.6 + 1.5, len(class_names) * 0.6 + 0.5))
    _show(ax, images, nrow=n_per_class)
    side = images.shape[-2] + 2
    ax.set_yticks(side * (np.arange(len(class_names)) + 0.5), class_names)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return fig


def latent_scatter(z, labels, class_names, title="Latent means of test images", ax=None):
    """A 2-D latent scatter coloured by class (first two dimensions of ``z``)."""
    z, labels = z.detach().cpu().numpy(), labels.cpu().numpy()
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 5))
    points = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=3, alpha=0.6, vmin=-0.5, vmax=9.5)
    cbar = fig.colorbar(points, ax=ax, ticks=range(len(class_names)))
    cbar.ax.set_yticklabels(class_names)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(title)
    return fig


def _latent_grid(n, span):
    # Rows go from +span (top) to -span (bottom) so the picture matches the scatter's axes.
    values = torch.linspace(-span, span, n)
    z1, z2 = torch.meshgrid(values, values.flip(0), indexing="xy")
    return torch.stack([z1.flatten(), z2.flatten()], dim=1), values


@torch.no_grad()
def manifold(model, n=15, span=2.0, label=None, ax=None):
    """Decode an n x n grid of z over [-span, span]^2 (2-D latent); for one label of a CVAE.

    Under a learned prior p(z|y) = N(mu_y, sigma_y^2) the grid is laid over that prior, in its
    standard deviations from its mean (z = mu_y + sigma_y * grid), where the label's images are.
    """
    if model.latent_dim != 2:
        raise ValueError(f"a manifold grid needs a 2-D latent, this model has latent_dim={model.latent_dim}")
    device = next(model.parameters()).device
    z, values = _latent_grid(n, span)  # (n*n, 2)
    z = z.to(device)
    y = None if label is None else torch.full((len(z),), label, device=device)
    prior_mu, prior_logvar = model.prior(y) if y is not None else (None, None)
    if prior_mu is not None:  # the grid is in the prior's standard units
        z = reparameterize(prior_mu, prior_logvar, z)
    images = model.decode(z, y)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 6))
    _show(ax, images, nrow=n)
    side = images.shape[-1] + 2
    ticks = [0, n // 2, n - 1]
    ax.set_xticks([side * (i + 0.5) for i in ticks], [f"{values[i]:.1f}" for i in ticks])
    ax.set_yticks([side * (i + 0.5) for i in ticks], [f"{values.flip(0)[i]:.1f}" for i in ticks])
    unit = "" if prior_mu is None else r" ($\sigma_y$ from $\mu_y$)"
    ax.set_xlabel("$z_1$" + unit)
    ax.set_ylabel("$z_2$" + unit)
    ax.set_title("Decoded latent grid" if label is None else f"Decoded latent grid, label {label}")
    return fig


def manifold_per_class(model, class_names, n=9, span=2.0):
    """One decoded 2-D latent grid per class of a CVAE, in a row of panels."""
    cols = 5
    rows = -(-len(class_names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.8))
    for label, ax in enumerate(axes.flat):
        if label < len(class_names):
            manifold(model, n, span, label, ax=ax)
            ax.set_title(class_names[label])
            ax.set_xlabel("")
            ax.set_ylabel("")
        else:
            ax.axis("off")
    where = " in each class's prior standard deviations from its mean" if model.config.prior == "learned" else ""
    fig.suptitle(f"Decoded grids over $[-{span:g}, {span:g}]^2${where}, one per class")
    fig.tight_layout()
    return fig


@torch.no_grad()
def interpolation(model, z_start, z_end, y=None, steps=10):
    """Decode the straight line from ``z_start`` to ``z_end`` (each (D,)); ``y`` a label or None."""
    t = torch.linspace(0, 1, steps, device=z_start.device)[:, None]
    z = (1 - t) * z_start + t * z_end  # (steps, D)
    labels = None if y is None else torch.full((steps,), int(y), device=z.device)
    fig, ax = plt.subplots(figsize=(steps * 0.7, 1.2))
    _show(ax, model.decode(z, labels), nrow=steps)
    ax.set_title("Interpolation in z")
    return fig


@torch.no_grad()
def traversal(model, z, dims=None, span=3.0, steps=9, y=None):
    """Vary one latent dimension at a time around ``z`` (D,): one row per dimension."""
    dims = list(range(min(model.latent_dim, 8))) if dims is None else list(dims)
    values = torch.linspace(-span, span, steps, device=z.device)
    rows = z.repeat(len(dims), steps, 1)  # (len(dims), steps, D)
    for i, d in enumerate(dims):
        rows[i, :, d] = values
    labels = None if y is None else torch.full((len(dims) * steps,), int(y), device=z.device)
    images = model.decode(rows.flatten(0, 1), labels)
    fig, ax = plt.subplots(figsize=(steps * 0.7 + 1, len(dims) * 0.7 + 0.6))
    _show(ax, images, nrow=steps)
    side = images.shape[-1] + 2
    ax.set_yticks(side * (np.arange(len(dims)) + 0.5), [f"$z_{{{d + 1}}}$" for d in dims])
    ax.set_xticks([side * 0.5, side * (steps - 0.5)], [f"{-span:g}", f"{span:g}"])
    ax.set_title("Latent traversal")
    return fig


@torch.no_grad()
def group_resampling(model, x, y, title=None, ax=None, seed=0):
    """Reconstructions of x (N,C,H,W) in [0, 1] with one latent group at a time drawn from its prior (chapter 4).

    Rows: the inputs, their reconstructions with every group from q, then one row per group g with z_g from
    its prior p(z_g | z_<g, y) and the others from q. Every row decodes the same noise (``seed``), so a row
    that does not change is a group the decoder ignores. The global random state is untouched.
    """
    model.eval()
    rows = [x.cpu()]
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        for g in [None, *range(len(model.group_shapes))]:
            torch.manual_seed(seed)
            rows.append(model.resample(x, y, groups=() if g is None else [g])["x_hat"].cpu())
    if ax is None:
        _, ax = plt.subplots(figsize=(len(x) * 0.7 + 1.5, len(rows) * 0.7 + 0.4))
    _show(ax, torch.cat(rows), nrow=len(x))
    side = x.shape[-2] + 2  # image height plus the grid's padding
    names = ["input", "all from q"] + [f"group {g} from p" for g in range(len(rows) - 2)]
    ax.set_yticks([side * (i + 0.5) for i in range(len(rows))], names)
    if title:
        ax.set_title(title)
    return ax.figure


def confusion(matrix, class_names, title="Requested vs judged class"):
    """A confusion matrix (rows: requested class, columns: judged class) with counts."""
    matrix = matrix.cpu().numpy()
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(matrix, cmap="Blues")
    for i in range(len(matrix)):
        for j in range(len(matrix)):
            ax.text(
                j,
                i,
                int(matrix[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if matrix[i, j] > matrix.max() / 2 else "black",
            )
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("judged by the classifier")
    ax.set_ylabel("requested")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def history(records, keys=("train_nelbo", "test_nelbo"), title="Negative ELBO (nats/image)"):
    """Per-epoch curves from ``fit``'s history."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = [r["epoch"] for r in records]
    for key in keys:
        ax.plot(epochs, [r[key] for r in records], marker="o", label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.legend()
    return fig


def markdown_table(header, rows):
    """A small table rendered as Markdown in a notebook: ``header`` the column titles, ``rows`` lists of cells."""
    from IPython.display import Markdown  # the notebook's display type; plots need no IPython otherwise

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return Markdown("\n".join(lines))


def completion_figure(images, num_given, baseline, cvae, num_samples=3, title=None):
    """Rows Inputs / Truth / NN / CVAE samples for the same digits (chapter 5); returns a Figure.

    Predictions fill the missing quadrants only; the given ones are copied from the input.
    """
    device = next(baseline.parameters()).device
    x, y, mask = split_quadrants(images.to(device), num_given)  # (N,1,28,28) each

    def keep(y_hat):  # given pixels from x, predicted ones from y_hat
        return x * (1 - mask) + y_hat * mask

    rows = [("Inputs", show_input(x)), ("Truth", images.to(device)), ("NN", keep(baseline.predict(x)))]
    samples = cvae.predict(x, num_samples)  # (S, N, 1, 28, 28)
    rows += [(f"CVAE sample {s + 1}", keep(samples[s])) for s in range(num_samples)]
    n = len(images)
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.8 + 1.2, len(rows) * 0.85 + 0.4), squeeze=False)
    for r, (name, batch) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(batch[i, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
