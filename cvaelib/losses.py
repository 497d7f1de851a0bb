"""Likelihoods p(x|z), the Gaussian KL and the ELBO, all summed per image (nats/image).

Every likelihood is an ``nn.Module`` (so a learned sigma trains with the model) that
turns the decoder's raw output ``params`` into a ``torch.distributions`` object. The
ELBO never averages over pixels: a pixel mean silently rescales the reconstruction
term by 1/(C*H*W) and with it the weight of the KL (chapter 1).
"""

import math
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal

from .interface import labels_for

LOG_2PI = math.log(2 * math.pi)
MIN_LOGVAR = -30.0  # below it exp(logvar) underflows and (z - mu)^2 / var becomes 0/0


class Likelihood(nn.Module):
    """Base class: ``num_params`` decoder channels per image channel."""

    num_params = 1
    discrete = False  # True when log p(x|z) is a probability of 8-bit pixels (bits/dim)

    def out_channels(self, image_channels: int) -> int:
        """How many channels the decoder must output for images of ``image_channels`` channels."""
        return image_channels * self.num_params

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


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of 8-bit values under a logistic integrated over each value's bin, elementwise (chapter 4).

    Everything on the [-1, 1] scale of the references: the 256 values are -1 + 2 i / 255, each bin
    has half-width 1/255, and the two end bins reach out to -inf and +inf so the 256 masses sum to 1.
    """
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
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_mid))


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
        return discretized_logistic_log_prob(2 * x - 1, 2 * mean - 1, log_scale).sum(dim=(1, 2, 3))

    def mean(self, params):
        return self._split(params)[0]


class DiscretizedLogisticMixture(Likelihood):
    """PixelCNN++'s output layer: a mixture of K discretized logistics per pixel (Salimans et al. 2017).

    The hierarchical VAE's likelihood (chapter 4). Every pixel gets K mixture logits, and per
    component and channel a mean logit (sigmoid -> [0, 1], like ``DiscretizedLogistic``) and a
    log-scale; the channels of a pixel depend on each other through C(C-1)/2 coefficients per
    component in (-1, 1): on the [-1, 1] scale, channel c's mean is shifted by
    ``sum_j<c coeff[c, j] * x_j``, the *observed* values of the earlier channels (green depends
    on red, blue on red and green). Pixels do not depend on each other (no autoregression).

    Decoder output, (B, K * (C + 1)(C + 2) / 2, H, W) = (B, 10K, H, W) for RGB, (B, 3K, H, W) for
    grey, in this order along dim 1: K logits, then C*K mean logits, C*K log-scales and
    C(C-1)/2*K coefficients, each block channel-major (channel c, component k at c * K + k).
    """

    discrete = True

    def __init__(self, num_mixtures: int = 10):
        super().__init__()
        if num_mixtures < 1:
            raise ValueError(f"num_mixtures must be at least 1, got {num_mixtures}")
        self.num_mixtures = num_mixtures

    def out_channels(self, image_channels: int) -> int:
        """K logits + per channel K means and K log-scales + K coefficients per channel pair."""
        return self.num_mixtures * (image_channels + 1) * (image_channels + 2) // 2

    def _split(self, params):
        """params (B,P,H,W) -> logits (B,K,H,W); mean (on [-1, 1]), log_scale, coeffs (B,C',K,H,W)."""
        B, P, H, W = params.shape
        K = self.num_mixtures
        C = round((math.sqrt(8 * P / K + 1) - 3) / 2)  # solves P = K (C + 1)(C + 2) / 2
        if P != self.out_channels(C):
            raise ValueError(f"a {K}-component logistic mixture needs K(C+1)(C+2)/2 channels, got {P}")
        pairs = C * (C - 1) // 2
        logits, mean_logit, log_scale, coeffs = params.split([K, C * K, C * K, pairs * K], dim=1)
        mean = 2 * torch.sigmoid(mean_logit.view(B, C, K, H, W)) - 1
        log_scale = log_scale.view(B, C, K, H, W).clamp(min=-7.0)  # bounded: no infinitely sharp bins
        return logits, mean, log_scale, torch.tanh(coeffs.view(B, pairs, K, H, W))

    @staticmethod
    def _shifted_mean(mean, coeffs, c, earlier):
        """Channel c's means (B,K,H,W): its own plus sum_{j<c} coeff[c, j] * earlier[j].

        The coefficient of the pair (c, j) is stored at index c(c-1)/2 + j: (1,0), (2,0), (2,1) for RGB.
        """
        return mean[:, c] + sum(coeffs[:, c * (c - 1) // 2 + j] * earlier[j] for j in range(c))

    def channel_log_probs(self, params: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log mixture weights (B,K,H,W) and log P(x_c | x_<c, component k) (B,C,K,H,W)."""
        logits, mean, log_scale, coeffs = self._split(params)
        x = (2 * x - 1).unsqueeze(2)  # (B,C,H,W) -> (B,C,1,H,W) on [-1, 1]
        observed = x.unbind(1)  # the mean of channel c is shifted by the observed earlier channels
        mean = torch.stack([self._shifted_mean(mean, coeffs, c, observed) for c in range(x.shape[1])], dim=1)
        return F.log_softmax(logits, dim=1), discretized_logistic_log_prob(x, mean, log_scale)

    def log_prob(self, params, x):
        log_weights, log_p = self.channel_log_probs(params, x)
        # log sum_k pi_k prod_c P(x_c | x_<c, k): (B,K,H,W) -> (B,H,W) -> (B,)
        return torch.logsumexp(log_weights + log_p.sum(dim=1), dim=1).sum(dim=(1, 2))

    def mean(self, params):
        """The mixture mean in [0, 1], (B,C,H,W): each component's channel means, the later ones
        shifted by the component's own (clamped) means of the earlier channels."""
        logits, mean, _, coeffs = self._split(params)
        means = []
        for c in range(mean.shape[1]):
            means.append(self._shifted_mean(mean, coeffs, c, means).clamp(-1, 1))  # (B,K,H,W)
        weights = torch.softmax(logits, dim=1)  # (B,K,H,W)
        return ((weights.unsqueeze(1) * torch.stack(means, dim=1)).sum(dim=2) + 1) / 2  # (B,C,K,H,W) -> (B,C,H,W)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        """An image drawn from the mixture, (B,C,H,W), of 8-bit values k/255 (chapter 4).

        Per pixel: a component from Categorical(pi), then channel after channel a logistic
        sample rounded to the nearest of the 256 values, which feeds the later channels' means.
        """
        logits, mean, log_scale, coeffs = self._split(params)
        B, C, _, H, W = mean.shape
        k = Categorical(logits=logits.movedim(1, -1)).sample()  # (B,H,W): one component per pixel
        mean, log_scale, coeffs = (
            t.gather(2, k[:, None, None].expand(B, t.shape[1], 1, H, W)) for t in (mean, log_scale, coeffs)
        )  # (B,C',K,H,W) -> (B,C',1,H,W)
        u = torch.rand_like(mean).clamp(1e-5, 1 - 1e-5)
        noise = log_scale.exp() * (u.log() - torch.log1p(-u))  # Logistic(0, s) by its inverse CDF
        earlier, levels = [], []
        for c in range(C):
            value = (self._shifted_mean(mean, coeffs, c, earlier) + noise[:, c]).clamp(-1, 1)
            # the nearest of the values 0..255: each is drawn with exactly the mass of its bin
            level = torch.round((value + 1) * 127.5)
            earlier.append(level / 127.5 - 1)
            levels.append(level)
        return torch.stack(levels, dim=1).squeeze(2) / 255  # (B,C,1,H,W) -> (B,C,H,W)


LIKELIHOODS = {
    "bernoulli": BernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "sigma": partial(GaussianLikelihood, learned=True),
    "logistic": DiscretizedLogistic,
    "logistic_mixture": DiscretizedLogisticMixture,
}


def make_likelihood(name, **kwargs):
    """Build a likelihood by name: bernoulli, gaussian, sigma, logistic or logistic_mixture (chapter 1).

    ``kwargs`` go to its constructor, e.g. ``make_likelihood("logistic_mixture", num_mixtures=5)``.
    """
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
    return 0.5 * (prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1)


def gaussian_log_prob(z, mu, logvar):
    """log N(z; mu, exp(logvar)) summed over the last dimension (IWAE, MI, chapter 5)."""
    logvar = logvar.clamp(min=MIN_LOGVAR)
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def log_mean_exp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log (1/K) sum_k exp(x_k) over ``dim`` of size K, without overflow (the IWAE bound, the aggregate posterior)."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def bits_per_dim(nats_per_image, num_dims):
    """Convert nats per image to bits per dimension (chapter 4)."""
    return nats_per_image / (num_dims * math.log(2))


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """z = mu + temperature * sigma * eps with eps ~ N(0, I), drawn here unless given (the reparameterisation
    trick, chapter 1): differentiable in mu and logvar. ``temperature`` < 1 samples nearer the mean (chapter 4)."""
    eps = torch.randn_like(mu) if eps is None else eps
    return mu + temperature * torch.exp(0.5 * logvar) * eps


class GroupStats(NamedTuple):
    """One latent group of a model's forward pass, each (B, D_g): what the ELBO, IWAE and diagnostics need.

    q(z_g | ...) = N(mu, exp(logvar)), p(z_g | ...) = N(prior_mu, exp(prior_logvar)) (None: N(0, I)),
    and the noise ``eps`` of the reparameterised sample z_g = mu + exp(logvar / 2) * eps.
    """

    mu: torch.Tensor
    logvar: torch.Tensor
    prior_mu: torch.Tensor | None
    prior_logvar: torch.Tensor | None
    eps: torch.Tensor

    @property
    def z(self) -> torch.Tensor:
        return reparameterize(self.mu, self.logvar, self.eps)


def log_weight(out: dict) -> torch.Tensor:
    """log p(x, z | y) - log q(z | x, y) at the sampled z of a forward pass: (B,) (IWAE, chapters 1, 4, 5).

    Every model's forward returns ``log_px`` (B,) and its ``groups`` (``GroupStats``); log q comes from
    the noise, -0.5 * sum(log 2 pi + logvar + eps^2): exact at any variance, where ``gaussian_log_prob(z, mu,
    logvar)`` would rebuild z - mu, whose float32 digits are lost when sigma is below mu's rounding (an
    autoencoder's posterior), and would floor logvar.
    """
    total = out["log_px"]
    for g in out["groups"]:
        prior_mu = torch.zeros_like(g.mu) if g.prior_mu is None else g.prior_mu
        prior_logvar = torch.zeros_like(g.mu) if g.prior_logvar is None else g.prior_logvar
        log_q = -0.5 * (LOG_2PI + g.logvar + g.eps.pow(2)).sum(-1)
        total = total + gaussian_log_prob(g.z, prior_mu, prior_logvar) - log_q
    return total


def elbo_terms(out: dict, beta: float = 1.0, kl_fn=gaussian_kl, recon=None, penalty=None) -> dict:
    """The beta-weighted negative ELBO of one forward pass ``out`` of any model, nats per image (chapters 1, 4).

    Returns batch means of ``loss`` = recon + beta * kl, ``recon`` = -log p(x|z), ``kl`` (all groups),
    ``nelbo`` = recon + kl (the true negative ELBO whatever beta is), ``kl_per_dim`` (D,) over all groups
    in order, ``kl_groups`` (G,), and ``nelbo_per_image`` (B,).
    ``kl_fn(mu, logvar, prior_mu, prior_logvar)`` -> (B, D_g) lets a chapter try another KL.
    A remedy (chapter 4) changes only what the loss charges: ``recon`` (B,) replaces -log p(x|z) (the
    sigma-VAE's best sigma), and ``penalty(kl_dims)``, from the list of (B, D_g) KLs to (B,), replaces
    the KL in ``loss`` (free bits, group balancing); ``kl`` and ``nelbo`` stay the true ones.
    """
    recon = -out["log_px"] if recon is None else recon  # (B,)
    kl_dims = [kl_fn(g.mu, g.logvar, g.prior_mu, g.prior_logvar) for g in out["groups"]]  # (B, D_g) each
    kl_per_dim = torch.cat(kl_dims, dim=1)  # (B, D)
    kl = kl_per_dim.sum(1)  # (B,)
    charged = kl if penalty is None else penalty(kl_dims)  # (B,)
    return {
        "loss": (recon + beta * charged).mean(),
        "recon": recon.mean(),
        "kl": kl.mean(),
        "nelbo": (recon + kl).mean(),
        "kl_per_dim": kl_per_dim.mean(dim=0),
        "kl_groups": torch.stack([k.sum(1) for k in kl_dims], dim=1).mean(dim=0),
        "nelbo_per_image": recon + kl,
    }


def elbo(model, x, y=None, beta=1.0, kl_fn=gaussian_kl):
    """The beta-weighted negative ELBO and its parts, in nats per image (chapter 1): ``elbo_terms`` of
    ``model(x, y)``. A VAE (``model.num_classes == 0``) ignores ``y``, so one loop trains both.
    """
    return elbo_terms(model(x, labels_for(model, y)), beta, kl_fn)
