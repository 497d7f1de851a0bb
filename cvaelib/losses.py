"""Likelihoods p(x|z), the Gaussian KL and the ELBO, all summed per image (nats/image).

Every likelihood is an ``nn.Module`` (so a learned sigma trains with the model) that
turns the decoder's raw output ``params`` into a ``torch.distributions`` object. The
ELBO never averages over pixels: a pixel mean silently rescales the reconstruction
term by 1/(C*H*W) and with it the weight of the KL (chapter 1).
"""
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

LOG_2PI = math.log(2 * math.pi)
MIN_LOGVAR = -30.0  # below it exp(logvar) underflows and (z - mu)^2 / var becomes 0/0


class Likelihood(nn.Module):
    """Base class: ``num_params`` decoder channels per image channel."""

    num_params = 1
    discrete = False  # True when log p(x|z) is a probability of 8-bit pixels (bits/dim)

    def distribution(self, params):
        raise NotImplementedError

    def log_prob(self, params, x):
        """log p(x|z) summed over pixels, one number per image: (B,C,H,W) -> (B,)."""
        return self.distribution(params).log_prob(x)

    def mean(self, params):
        """The decoded image in [0, 1]: what the chapters show as x_hat."""
        return self.distribution(params).mean.clamp(0, 1)


class BernoulliLikelihood(Likelihood):
    """p(x|z) = Bernoulli(sigmoid(logits)) per pixel (chapters 1-3)."""

    def distribution(self, params):
        # validate_args=False: MNIST grey levels in [0, 1] are used as soft targets,
        # the usual binary cross-entropy of the references.
        return Independent(Bernoulli(logits=params, validate_args=False), 3)


class GaussianLikelihood(Likelihood):
    """p(x|z) = N(mean, sigma^2) per pixel; sigma fixed, or learned and shared (chapter 3).

    A learned shared sigma is the sigma-VAE (Rybkin et al. 2021): it balances the
    reconstruction against the KL by itself, instead of a hand-tuned beta.
    """

    def __init__(self, sigma=1.0, learned=False):
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        log_sigma = torch.tensor(math.log(sigma))
        if learned:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def distribution(self, params):
        # Clamp keeps sigma >= 1e-3: a learned sigma cannot shrink to a singular density.
        return Independent(Normal(params, self.log_sigma.clamp(min=math.log(1e-3)).exp()), 3)


class DiscretizedLogistic(Likelihood):
    """8-bit pixels: a logistic per pixel integrated over its bin (Salimans et al. 2017).

    Gives log-probabilities of the 256 pixel values, so -ELBO / (C*H*W*ln 2) is bits/dim
    (chapter 4). Decoder output: (B, 2C, H, W) = mean logits and log-scales.
    """

    num_params = 2
    discrete = True

    def _split(self, params):
        mean_logit, log_scale = params.chunk(2, dim=1)
        return torch.sigmoid(mean_logit), log_scale.clamp(min=-7.0)

    def log_prob(self, params, x):
        mean, log_scale = self._split(params)
        # Work on the [-1, 1] scale of the references: bin half-width 1/255.
        x, mean = 2 * x - 1, 2 * mean - 1
        inv_scale = torch.exp(-log_scale)
        plus = inv_scale * (x - mean + 1 / 255)
        minus = inv_scale * (x - mean - 1 / 255)
        log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus), for x = 0
        log_one_minus_cdf_minus = -F.softplus(minus)  # log(1 - sigmoid(minus)), for x = 255
        cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        mid = inv_scale * (x - mean)
        # When the bin mass underflows, use the density at the centre times the bin width.
        log_pdf_mid = mid - log_scale - 2 * F.softplus(mid) + math.log(2 / 255)
        log_mid = torch.where(cdf_delta > 1e-5, cdf_delta.clamp(min=1e-12).log(), log_pdf_mid)
        log_p = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_mid))
        return log_p.sum(dim=(1, 2, 3))

    def mean(self, params):
        return self._split(params)[0]


LIKELIHOODS = {
    "bernoulli": BernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "sigma": partial(GaussianLikelihood, learned=True),
    "logistic": DiscretizedLogistic,
}


def make_likelihood(name, **kwargs):
    """Build a likelihood by name: bernoulli, gaussian, sigma or logistic (chapter 1)."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name](**kwargs)


def gaussian_kl(mu, logvar, prior_mu=None, prior_logvar=None):
    """KL(N(mu, exp(logvar)) || N(prior_mu, exp(prior_logvar))) per dimension (chapter 1).

    Shapes (B, D) -> (B, D). Without a prior the prior is N(0, I):
    KL = 0.5 * (mu^2 + sigma^2 - log sigma^2 - 1).
    """
    if prior_mu is None:
        return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)
    return 0.5 * (
        prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1
    )


def gaussian_log_prob(z, mu, logvar):
    """log N(z; mu, exp(logvar)) summed over the last dimension (IWAE, MI, chapter 5)."""
    logvar = logvar.clamp(min=MIN_LOGVAR)
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def sample_with_log_prob(mu, logvar, num_samples=None):
    """z ~ N(mu, exp(logvar)) by reparameterization, and log q(z) at it (IWAE, chapter 5).

    (B, D) -> z (B, D), log q (B,); with ``num_samples`` S, (S, B, D) and (S, B). log q comes
    from the noise, -0.5 * sum(log 2 pi + logvar + eps^2): exact at any variance, where
    ``gaussian_log_prob(z, mu, logvar)`` would rebuild z - mu, whose float32 digits are lost
    when sigma is below mu's rounding (an autoencoder's posterior), and would floor logvar.
    """
    eps = torch.randn(mu.shape if num_samples is None else (num_samples, *mu.shape), device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps, -0.5 * (LOG_2PI + logvar + eps.pow(2)).sum(-1)


def bits_per_dim(nats_per_image, num_dims):
    """Convert nats per image to bits per dimension (chapter 4)."""
    return nats_per_image / (num_dims * math.log(2))


def elbo(model, x, y=None, beta=1.0, kl_fn=gaussian_kl):
    """The beta-weighted negative ELBO and its parts, in nats per image (chapter 1).

    Returns batch means of ``loss`` = recon + beta * kl, ``recon`` = -log p(x|z),
    ``kl``, ``nelbo`` = recon + kl (the true negative ELBO whatever beta is), and
    ``kl_per_dim`` of shape (D,), plus ``nelbo_per_image`` of shape (B,).
    A VAE (``model.num_classes == 0``) ignores ``y``, so one loop trains both.
    ``kl_fn(mu, logvar, prior_mu, prior_logvar)`` -> (B, D) lets a chapter try another KL.
    """
    y = y if model.num_classes else None
    out = model(x, y)
    recon = -model.likelihood.log_prob(out["params"], x)  # (B,)
    kl_per_dim = kl_fn(out["mu"], out["logvar"], *out["prior"])  # (B, D)
    kl = kl_per_dim.sum(dim=1)  # (B,)
    return {
        "loss": (recon + beta * kl).mean(),
        "recon": recon.mean(),
        "kl": kl.mean(),
        "nelbo": (recon + kl).mean(),
        "kl_per_dim": kl_per_dim.mean(dim=0),
        "nelbo_per_image": recon + kl,
    }
