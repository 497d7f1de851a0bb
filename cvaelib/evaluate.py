"""Test-set figures of a trained (C)VAE: negative ELBO, IWAE bound, active units, KL, MI.

All functions take a model and ``Batches`` (or any iterable of (x, y) float batches)
and return plain numbers in nats per image unless said otherwise.
"""
import math

import torch

from .losses import LOG_2PI, MIN_LOGVAR, bits_per_dim, elbo, gaussian_kl, gaussian_log_prob, sample_with_log_prob

def _labels(model, y):
    return y if model.num_classes else None


def _model_device(model):
    return next(model.parameters()).device


@torch.no_grad()
def negative_elbo(model, batches):
    """Mean negative ELBO, reconstruction and KL on a dataset, nats/image (chapter 1)."""
    model.eval()
    device, totals, n = _model_device(model), {"nelbo": 0.0, "recon": 0.0, "kl": 0.0}, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        parts = elbo(model, x, y)
        for k in totals:
            totals[k] += float(parts[k]) * len(x)
        n += len(x)
    return {k: v / n for k, v in totals.items()}


@torch.no_grad()
def iwae_bound(model, batches, k=100):
    """Negative IWAE bound -log (1/K) sum_k p(x,z_k)/q(z_k|x), nats/image (Burda et al. 2016).

    An upper bound on -log p(x) that tightens as K grows; K = 1 is the negative ELBO.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    model.eval()
    device, total, n = _model_device(model), 0.0, 0
    for x, y in batches:
        x, y = x.to(device), _labels(model, y.to(device))
        mu, logvar = model.encode(x, y)
        prior_mu, prior_logvar = model.prior(y)
        log_w = []
        for _ in range(k):  # one importance sample at a time keeps memory at one batch
            z, log_qz = sample_with_log_prob(mu, logvar)  # (B, D), (B,)
            log_px = model.likelihood.log_prob(model.decode_params(z, y), x)  # (B,)
            log_pz = gaussian_log_prob(z, torch.zeros_like(z) if prior_mu is None else prior_mu,
                                        torch.zeros_like(z) if prior_logvar is None else prior_logvar)
            log_w.append(log_px + log_pz - log_qz)
        log_w = torch.stack(log_w)  # (K, B)
        total += float(-(torch.logsumexp(log_w, 0) - math.log(k)).sum())
        n += len(x)
    return total / n


@torch.no_grad()
def posterior_stats(model, batches):
    """mu and logvar of q(z|x,y) for every example: two (N, D) tensors."""
    model.eval()
    device, mus, logvars = _model_device(model), [], []
    for x, y in batches:
        mu, logvar = model.encode(x.to(device), _labels(model, y.to(device)))
        mus.append(mu)
        logvars.append(logvar)
    return torch.cat(mus), torch.cat(logvars)


@torch.no_grad()
def posterior_and_prior(model, batches):
    """mu, logvar of q(z|x,y), the prior's (mu, logvar), (N, D) each, and the labels (N,).

    The prior's are None for the standard normal N(0, I), the labels None for a VAE.
    """
    mu, logvar = posterior_stats(model, batches)
    labels = _labels(model, torch.cat([y for _, y in batches]).to(mu.device))
    return mu, logvar, *model.prior(labels), labels


def active_units(mu, threshold=0.01, labels=None):
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


def kl_per_dim(mu, logvar, prior_mu=None, prior_logvar=None):
    """Mean KL of each latent dimension to the prior over a dataset, (D,) nats (chapter 4)."""
    return gaussian_kl(mu, logvar, prior_mu, prior_logvar).mean(dim=0)


@torch.no_grad()
def mutual_information(mu, logvar, labels=None, chunk=256):
    """I(x; z) under q, estimated as in He et al. (2019), in nats (chapter 4).

    I = E_x E_q(z|x)[log q(z|x)] - E_q(z)[log q(z)], with the aggregate posterior q(z)
    approximated by the mixture of the N given posteriors. With ``labels`` (N,), a CVAE's
    case, it is I(x; z | y): the same estimate within each class, averaged with the class
    frequencies, so a z that only encodes the label (which the decoder is given anyway) scores 0.
    """
    if labels is not None:
        share = {c: float((labels == c).float().mean()) for c in labels.unique()}  # p(y)
        return sum(p * mutual_information(mu[labels == c], logvar[labels == c], chunk=chunk) for c, p in share.items())
    n, d = mu.shape
    # float64, so that z - mu keeps its digits when the posterior is narrow (an autoencoder's std can be < 1e-6),
    # and the same variance floor as gaussian_log_prob below, or a tiny variance would count in one term only.
    mu, logvar = mu.double(), logvar.double().clamp(min=MIN_LOGVAR)
    # E_q(z|x) log q(z|x) = -0.5 * D * log(2 pi) - 0.5 * sum(1 + logvar): the negative entropy
    neg_entropy = (-0.5 * d * LOG_2PI - 0.5 * (1 + logvar).sum(-1)).mean()
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # one z per x, (N, D)
    log_qz = []
    for zc in z.split(chunk):
        # log q(z_i | x_j) for every i in the chunk and every j: (chunk, N)
        log_q = gaussian_log_prob(zc[:, None, :], mu[None], logvar[None])
        log_qz.append(torch.logsumexp(log_q, dim=1) - math.log(n))
    return float(neg_entropy - torch.cat(log_qz).mean())


def report(model, batches, k=100):
    """All test figures of a model in one dict (the command line's ``evaluate``)."""
    figures = negative_elbo(model, batches)
    num_dims = math.prod(model.image_shape)
    mu, logvar, prior_mu, prior_logvar, labels = posterior_and_prior(model, batches)
    units, _ = active_units(mu, labels=labels)
    return {
        "negative_elbo_nats": figures["nelbo"],
        "reconstruction_nats": figures["recon"],
        "kl_nats": figures["kl"],
        # Only a likelihood of 8-bit pixel values gives a true bits/dim.
        "bits_per_dim": bits_per_dim(figures["nelbo"], num_dims) if model.likelihood.discrete else None,
        "iwae_nats": iwae_bound(model, batches, k),
        "iwae_k": k,
        "active_units": units,
        "latent_dim": model.latent_dim,
        "kl_per_dim": kl_per_dim(mu, logvar, prior_mu, prior_logvar).tolist(),
        "mutual_information_nats": mutual_information(mu, logvar, labels),
    }
