"""Test-set figures of a trained (C)VAE: negative ELBO, IWAE bound, active units, KL, MI.

All functions take a model and ``Batches`` (or any iterable of (x, y) float batches)
and return plain numbers in nats per image unless said otherwise.
"""

import math
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import batch_means
from .interface import labels_for
from .losses import (
    LOG_2PI,
    MIN_LOGVAR,
    GroupStats,
    bits_per_dim,
    elbo,
    elbo_terms,
    gaussian_kl,
    gaussian_log_prob,
    log_mean_exp,
    log_weight,
    reparameterize,
)


def _model_device(model):
    return next(model.parameters()).device


@torch.no_grad()
def negative_elbo(model: nn.Module, batches) -> dict:
    """Mean negative ELBO, reconstruction and KL on a dataset, nats/image (chapter 1)."""
    model.eval()
    device = _model_device(model)

    def rows():
        for x, y in batches:
            parts = elbo(model, x.to(device), y.to(device))
            yield len(x), {k: float(parts[k]) for k in ("nelbo", "recon", "kl")}

    return batch_means(rows())


def samples_per_pass(x: torch.Tensor, max_images: int | None = None) -> int:
    """Importance samples of the batch ``x`` that one forward pass draws: as many as fit in ``max_images``
    images, at least one. By default 8192 images on an accelerator (fewer, larger calls) and one sample per
    pass on a CPU, which keeps the random stream of the recorded runs (``report`` takes larger passes)."""
    return max(1, (max_images or (len(x) if x.device.type == "cpu" else 8192)) // len(x))


def log_importance_weights(model: nn.Module, x, y, k: int, max_images: int | None = None) -> torch.Tensor:
    """log p(x, z_k | y) - log q(z_k | x, y) for K importance samples of any model: (K, B) (Burda et al. 2016).

    The samples come from the model's forward pass with ``samples`` (``losses.log_weight``): it encodes each
    image once and draws that many z from its posterior, so a hierarchical model draws every group given
    the groups above, as its ELBO does. Each pass draws ``samples_per_pass(x, max_images)`` of them: larger
    passes share the encoder among more samples, and give the same figures from another random stream.
    """
    _check_k(k)
    per_pass = samples_per_pass(x, max_images)
    log_w = []
    for start in range(0, k, per_pass):
        kc = min(per_pass, k - start)
        log_w.append(log_weight(model(x, y, samples=kc)).view(kc, len(x)))
    return torch.cat(log_w)


def _check_k(k):
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


@torch.no_grad()
def iwae_bound(model: nn.Module, batches, k: int = 100) -> float:
    """Negative IWAE bound -log (1/K) sum_k p(x,z_k)/q(z_k|x), nats/image (Burda et al. 2016).

    An upper bound on -log p(x) that tightens as K grows; K = 1 is the negative ELBO.
    """
    _check_k(k)
    model.eval()
    device = _model_device(model)

    def rows():
        for x, y in batches:
            x, y = x.to(device), labels_for(model, y.to(device))
            log_w = log_importance_weights(model, x, y, k)  # (K, B)
            yield len(x), {"iwae": float(-log_mean_exp(log_w, 0).mean())}

    return batch_means(rows())["iwae"]


@torch.no_grad()
def gather_groups(model: nn.Module, batches, max_images: int | None = None) -> tuple[list[GroupStats], torch.Tensor]:
    """Every latent group's posterior and prior on a dataset: one ``GroupStats`` of (N, D_g) per group, and
    the labels (N,) (None for a VAE). One forward pass per batch, so labels stay with their images when
    the batches are shuffled, and a hierarchical group's q and p are those given the sampled groups above.
    """
    model.eval()
    device, passes, labels, n = _model_device(model), [], [], 0
    for x, y in batches:
        if max_images is not None and n >= max_images:
            break
        x, y = x.to(device), labels_for(model, y.to(device))
        passes.append(model(x, y)["groups"])
        labels.append(y)
        n += len(x)
    return _concatenated(passes, labels, max_images)


def _concatenated(passes, labels, max_images=None):
    """Per-batch groups and labels of one pass -> one ``GroupStats`` of (N, D_g) float32 per group, labels (N,)."""

    def cat(tensors):
        return None if tensors[0] is None else torch.cat(tensors)[:max_images].float()

    groups = [GroupStats(*(cat(field) for field in zip(*group))) for group in zip(*passes)]
    return groups, None if labels[0] is None else torch.cat(labels)[:max_images]


@torch.no_grad()
def posterior_stats(model: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """mu and logvar of q(z|x,y) for every example: two (N, D) tensors (all groups side by side)."""
    mu, logvar, *_ = posterior_and_prior(model, batches)
    return mu, logvar


@torch.no_grad()
def posterior_and_prior(model: nn.Module, batches) -> tuple:
    """mu, logvar of q(z|x,y), the prior's (mu, logvar), (N, D) each, and the labels (N,).

    All groups side by side. The prior's are None for the standard normal N(0, I), the labels None for a VAE.
    """
    groups, labels = gather_groups(model, batches)
    return (*(None if t[0] is None else torch.cat(t, dim=1) for t in list(zip(*groups))[:4]), labels)


def active_units(
    mu: torch.Tensor, threshold: float = 0.01, labels: torch.Tensor | None = None
) -> tuple[int, torch.Tensor]:
    """Active units (Burda et al. 2016): dimensions d with Cov_x(E_q[z_d]) > threshold (chapters 1, 4).

    Takes posterior means (N, D); returns the count and the per-dimension variances. With
    ``labels`` (N,), a CVAE's case, the variance is taken within each class (pooled): a mean
    that moves only with the label says nothing about x beyond y, so it does not count.
    """
    if labels is None:
        variance = mu.var(dim=0)
    else:
        classes, index = labels.unique(return_inverse=True)
        class_means = torch.zeros(len(classes), mu.shape[1], device=mu.device).index_add_(0, index, mu)
        class_means /= torch.bincount(index, minlength=len(classes))[:, None]
        variance = ((mu - class_means[index]) ** 2).sum(0) / max(len(mu) - len(classes), 1)  # (D,)
    return int((variance > threshold).sum()), variance


def kl_per_dim(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    prior_mu: torch.Tensor | None = None,
    prior_logvar: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean KL of each latent dimension to the prior over a dataset, (D,) nats (chapter 4)."""
    return gaussian_kl(mu, logvar, prior_mu, prior_logvar).mean(dim=0)


@torch.no_grad()
def mutual_information(
    mu: torch.Tensor, logvar: torch.Tensor, labels: torch.Tensor | None = None, chunk: int | None = None
) -> float:
    """I(x; z) under q, estimated as in He et al. (2019), in nats (chapter 4).

    I = E_x E_q(z|x)[log q(z|x)] - E_q(z)[log q(z)], with the aggregate posterior q(z)
    approximated by the mixture of the N given posteriors. With ``labels`` (N,), a CVAE's
    case, it is I(x; z | y): the same estimate within each class, averaged with the class
    frequencies, so a z that only encodes the label (which the decoder is given anyway) scores 0.
    ``chunk`` samples at a time (default: as many as keep each (chunk, N, D) block near 2^24 numbers).
    """
    if labels is not None:
        share = {c: float((labels == c).float().mean()) for c in labels.unique()}  # p(y)
        return sum(p * mutual_information(mu[labels == c], logvar[labels == c], chunk=chunk) for c, p in share.items())
    return float(mutual_information_terms(mu, logvar, chunk).mean())


@torch.no_grad()
def mutual_information_terms(mu: torch.Tensor, logvar: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """log q(z_n | x_n) - log q(z_n) for one z_n ~ q(z | x_n) per image: (N,) float64, whose mean is
    ``mutual_information``'s estimate and whose spread gives its standard error."""
    n, d = mu.shape
    chunk = chunk or max(1, 2**24 // (n * d))
    # float64, so that z - mu keeps its digits when the posterior is narrow (an autoencoder's std can be < 1e-6),
    # and the same variance floor as gaussian_log_prob below, or a tiny variance would count in one term only.
    mu, logvar = mu.double(), logvar.double().clamp(min=MIN_LOGVAR)
    eps = torch.randn_like(mu)
    z = reparameterize(mu, logvar, eps)  # one z per x, (N, D)
    # log q(z_i | x_i) at the same samples as the mixture below, from the noise: its expectation is the negative
    # entropy, and its noise (of order sqrt(D / 2) nats per sample) cancels against the mixture's own term i,
    # so that identical posteriors give exactly 0 even for a group of thousands of dimensions.
    log_q_own = -0.5 * (LOG_2PI + logvar + eps.pow(2)).sum(-1)  # (N,)
    log_qz = []
    for zc in z.split(chunk):
        # log q(z_i | x_j) for every i in the chunk and every j: (chunk, N)
        log_q = gaussian_log_prob(zc[:, None, :], mu[None], logvar[None])
        log_qz.append(log_mean_exp(log_q, dim=1))  # log q(z_i), q the mixture of the N posteriors
    return log_q_own - torch.cat(log_qz)


@torch.no_grad()
def kl_split(group: GroupStats, labels: torch.Tensor | None = None) -> list[dict]:
    """ "ELBO surgery" (Hoffman and Johnson 2016): the average KL of one latent group, split per class (chapter 3).

    Over a class's N_y images, E_x KL(q(z|x,y) || p(z|y)) = I(x; z | y) + KL(q(z|y) || p(z|y)): what the code
    says about the image, plus how far the aggregate posterior q(z|y), the mixture of the class's posteriors,
    lies from the prior: the prior's "hole". The mutual information is ``mutual_information_terms``' estimate
    (at most log N_y, its ``cap``: an estimate within 1 % of it says "at least", and the KL to the aggregate
    posterior then "at most"); the KL to the aggregate posterior is the difference, image by image, so that
    each figure has the standard error of its per-image terms. Without labels, one entry for all images (class
    None). For a model of one group; a hierarchy's groups have priors given the groups above, which this
    split does not cover.
    """
    kl = gaussian_kl(group.mu, group.logvar, group.prior_mu, group.prior_logvar).double().sum(1)  # (N,)
    split = []
    for c in [None] if labels is None else labels.unique().tolist():
        index = slice(None) if c is None else labels == c
        mi = mutual_information_terms(group.mu[index], group.logvar[index])  # (N_y,)
        cap = math.log(len(mi))
        split.append(
            {
                "class": c,
                "images": len(mi),
                "kl_nats": float(kl[index].mean()),
                **_mean_and_se("mutual_information", mi),
                **_mean_and_se("marginal_kl", kl[index] - mi),
                "cap_nats": cap,
                "at_cap": float(mi.mean()) > 0.99 * cap,
            }
        )
    return split


def _mean_and_se(name: str, terms: torch.Tensor) -> dict:
    """``<name>_nats``: the mean of per-image ``terms``; ``<name>_se``: its standard error (NaN for one image)."""
    se = float(terms.std() / math.sqrt(len(terms))) if len(terms) > 1 else math.nan
    return {f"{name}_nats": float(terms.mean()), f"{name}_se": se}


def posterior_offset(group: GroupStats) -> torch.Tensor:
    """How far q's mean sits from p's, (N, D_g): what a unit must move with x to count as active.

    For a fixed prior or a prior per class, its variance within a class is that of the posterior mean;
    for a hierarchical group, whose prior moves with the groups above, it is 0 when q = p (collapse).
    """
    return group.mu if group.prior_mu is None else group.mu - group.prior_mu


def mutual_information_cap(num_images: int, labels: torch.Tensor | None = None) -> float:
    """The most ``mutual_information`` can report on these images: log N, or within each class sum_c p(c) log N_c.

    A code that tells every one of the N images apart already reaches it; an estimate at the cap says
    "at least this much", not how much (chapter 4).
    """
    if labels is None:
        return math.log(num_images)
    counts = torch.bincount(labels).double()
    counts = counts[counts > 0]
    return float((counts / counts.sum() * counts.log()).sum())


@torch.no_grad()
def group_figures(groups: list[GroupStats], labels: torch.Tensor | None = None, threshold: float = 0.01) -> list:
    """Per latent group: its KL (nats/image), active units (within each class), size and mutual information.

    For one group, ``mutual_information_nats`` estimates I(x; z | y). For a group of a hierarchy, whose q and
    p are those given the groups above as sampled for each image, the mixture runs over (image, path) pairs,
    so it estimates I(z_g; x, z_<g | y): what z_g says about the image and the path above it together.
    Each figure carries the estimate's cap (``mutual_information_cap_nats``) and whether the estimate sits
    within 1 % of it (``mutual_information_at_cap``): there it only says "at least" (chapter 4).
    """
    figures = []
    for g in groups:
        units, _ = active_units(posterior_offset(g), threshold, labels)
        mi, cap = mutual_information(g.mu, g.logvar, labels), mutual_information_cap(len(g.mu), labels)
        figures.append(
            {
                "kl_nats": float(gaussian_kl(g.mu, g.logvar, g.prior_mu, g.prior_logvar).sum(1).mean()),
                "active_units": units,
                "dims": g.mu.shape[1],
                "mutual_information_nats": mi,
                "mutual_information_cap_nats": cap,
                "mutual_information_at_cap": mi > 0.99 * cap,
            }
        )
    return figures


def total_mutual_information(figures: list) -> float | None:
    """I(x; z | y) of a model with one latent group (its group's figure); None for a hierarchy.

    A hierarchy's q(z_g | x, z_<g, y) are conditionals, each given its own image's sampled path. Put side
    by side, they do not give q(z | x', y) of one image at another image's z, which the mixture in
    ``mutual_information`` needs; that would take a top-down pass per pair of images. So no total is
    estimated: the per-group figures say what each group carries.
    """
    return figures[0]["mutual_information_nats"] if len(figures) == 1 else None


@torch.no_grad()
def expected_seconds(
    model: nn.Module, batches, k: int, channels_last: bool = False, images_per_pass: int | None = None
) -> float:
    """How long ``report`` will take here: the passes it makes of the first batch (the bound, and one pass of
    importance samples), timed, times the passes of K samples and the number of batches. Costs those passes."""
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    device = _model_device(model)
    x, y = next(iter(batches))
    x, y = _layout(x.to(device), channels_last), labels_for(model, y.to(device))
    per_pass = min(k, samples_per_pass(x, images_per_pass))
    start = time.perf_counter()
    model(x, y)
    bound = time.perf_counter() - start
    model(x, y, samples=per_pass)
    samples = time.perf_counter() - start - bound
    return (bound + samples * math.ceil(k / per_pass)) * len(batches)


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@torch.no_grad()
def report(
    model: nn.Module,
    batches,
    k: int = 100,
    progress: bool = True,
    stats_images: int = 2000,
    channels_last: bool = False,
    images_per_pass: int | None = None,
) -> dict:
    """All test figures of a model in one dict, from one pass over the data (the command line's ``evaluate``).

    The bound, the IWAE bound and the KL (in total, per dimension, per group) use every image; active
    units, the mutual information and the KL split (``kl_split``), whose cost grows with N^2, the first
    ``stats_images``.
    ``channels_last`` puts the model's and the images' convolutions in that layout: the same figures, faster
    on a CPU for the conv models. ``images_per_pass``: see ``log_importance_weights``
    (``benchmarks/evaluate_speed.py`` measures both).
    """
    _check_k(k)
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    device, passes, labels = _model_device(model), [], []

    def rows():  # the bounds over every image; the posteriors of the first stats_images kept for the statistics
        seen = 0
        for x, y in tqdm(batches, desc="evaluate", disable=not progress, leave=False):
            x, y = _layout(x.to(device), channels_last), labels_for(model, y.to(device))
            out = model(x, y)
            parts = elbo_terms(out)
            log_w = log_importance_weights(model, x, y, k, images_per_pass)  # (K, B)
            if seen < stats_images:
                passes.append(out["groups"])
                labels.append(y)
            seen += len(x)
            keys = ("nelbo", "recon", "kl", "kl_per_dim", "kl_groups")
            yield len(x), {"iwae": float(-log_mean_exp(log_w, 0).mean()), **{key: parts[key] for key in keys}}

    totals = batch_means(rows())
    groups, labels = _concatenated(passes, labels, stats_images)
    figures = group_figures(groups, labels)
    for figure, kl in zip(figures, totals["kl_groups"].tolist()):
        figure["kl_nats"] = kl  # over every image
    nelbo = float(totals["nelbo"])
    return {
        "negative_elbo_nats": nelbo,
        "reconstruction_nats": float(totals["recon"]),
        "kl_nats": float(totals["kl"]),
        # Only a likelihood of 8-bit pixel values gives a true bits/dim.
        "bits_per_dim": bits_per_dim(nelbo, math.prod(model.image_shape)) if model.likelihood.discrete else None,
        "iwae_nats": totals["iwae"],
        "iwae_k": k,
        "active_units": sum(f["active_units"] for f in figures),
        "latent_dim": model.latent_dim,
        "kl_per_dim": totals["kl_per_dim"].tolist(),
        "mutual_information_nats": total_mutual_information(figures),
        # a model of one group: its average KL = I(x; z | y) + KL(q(z|y) || p(z|y)), per class (None: a hierarchy)
        "kl_split": kl_split(groups[0], labels) if len(groups) == 1 else None,
        "stats_images": len(groups[0].mu),
        "groups": figures,
    }
