"""Structured output prediction (chapter 5): complete a digit from 1, 2 or 3 of its quadrants.

The task of Sohn et al. (2015), Section 5.1, with the conventions of Pyro's CVAE tutorial:
x is the image with the missing quadrants hidden, y is the pixels of the missing quadrants.
Every loss is a Bernoulli log-probability summed over the *missing* pixels only, in nats
per image, so the numbers compare with the published table. Two models:

- ``BaselineNet``: a deterministic MLP x -> y, the "NN" of the paper;
- ``StructuredCVAE``: a prior network p(z|x), a recognition network q(z|x,y) and a
  generation network p(y|x,z).

The CVAE is trained with one of the paper's three objectives (``OBJECTIVES``): the ELBO ("elbo"),
the GSNN's ("gsnn": z from the prior network, as at test time) or a mix of the two ("hybrid").
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import batch_means
from .evaluate import log_importance_weights
from .interface import check_samples, repeat_batch
from .losses import GroupStats, elbo_terms, log_mean_exp, reparameterize

OBJECTIVES = ("elbo", "gsnn", "hybrid")  # how a StructuredCVAE is trained (Sohn et al. 2015)
HIDDEN = -1.0  # the value of a hidden pixel in x (see split_quadrants)
NUM_PIXELS = 28 * 28


def quadrant_mask(num_given, size=28, device=None):
    """Mask (1,1,size,size) of chapter 5: 1 where pixels are to be predicted, 0 where given."""
    if num_given not in (1, 2, 3):
        raise ValueError(f"num_given (the number of quadrants given as input) must be 1, 2 or 3, got {num_given!r}")
    h = size // 2
    given = torch.zeros(size, size, device=device)
    given[h:, :h] = 1  # bottom-left: given for every num_given
    if num_given >= 2:
        given[:h, :h] = 1  # top-left: with it, the left half
    if num_given == 3:
        given[:h, h:] = 1  # top-right: only the bottom-right stays hidden
    return (1 - given)[None, None]


def split_quadrants(images, num_given):
    """Split images into input x, target y and mask (chapter 5), Pyro's quadrant convention.

    ``images`` (B,1,28,28) float in [0, 1]. Given quadrants: 1 -> bottom-left;
    2 -> the left half (bottom-left, top-left); 3 -> all but the bottom-right.
    Returns, each (B,1,28,28):
    - ``x``: the given quadrants, and -1 on hidden pixels. Not 0: black is the most common
      MNIST pixel, so -1 keeps "unknown" distinct from "known to be black" (and is Pyro's choice);
    - ``y``: the pixels of the missing quadrants, 0 elsewhere;
    - ``mask``: 1 on the pixels to predict (the missing quadrants), 0 on the given ones.
    So ``x * (1 - mask) + y * mask`` is the image again.
    """
    if images.dim() != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must have shape (B, 1, H, H), got {tuple(images.shape)}")
    mask = quadrant_mask(num_given, images.shape[-1], images.device).expand_as(images)  # (B,1,28,28)
    x = torch.where(mask.bool(), torch.full_like(images, HIDDEN), images)  # given pixels, -1 where hidden
    y = images * mask  # missing pixels, 0 where given
    return x, y, mask


def masked_log_prob(logits, y, mask):
    """log p(y|...) of one Bernoulli per pixel, summed over masked pixels (chapter 5): (B,1,H,W) -> (B,)."""
    # Soft targets: MNIST grey levels in [0, 1], the usual binary cross-entropy, as in chapters 1-3.
    return -(F.binary_cross_entropy_with_logits(logits, y, reduction="none") * mask).sum(dim=(1, 2, 3))


def _mlp(in_features, hidden, out_features):
    """in -> hidden -> hidden -> out with ReLUs: the 500-500 networks of the paper."""
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_features)
    )


@dataclass(frozen=True)
class BaselineConfig:
    """What rebuilds a ``BaselineNet`` (``models.build_model``, a shipped model's manifest)."""

    arch: str = "structured_nn"
    hidden: int = 500


@dataclass(frozen=True)
class StructuredConfig:
    """What rebuilds a ``StructuredCVAE`` (``models.build_model``, a shipped model's manifest)."""

    arch: str = "structured_cvae"
    latent_dim: int = 200
    hidden: int = 500


def _own_arch(config):
    """Check that a configuration names the model it is given to (``build_model`` passes ``arch`` on)."""
    expected = type(config)().arch
    if config.arch != expected:
        raise ValueError(f"arch must be {expected!r} for this model, got {config.arch!r}")
    return config


class BaselineNet(nn.Module):
    """The deterministic baseline of chapter 5: x (B,1,28,28) -> logits of y, 784-500-500-784."""

    def __init__(self, hidden=500, arch="structured_nn"):
        super().__init__()
        self.config = _own_arch(BaselineConfig(arch, hidden))
        self.net = _mlp(NUM_PIXELS, hidden, NUM_PIXELS)

    def forward(self, x):
        return self.net(x.flatten(1)).view_as(x)  # logits (B,1,28,28)

    @torch.no_grad()
    def predict(self, x):
        """The prediction in [0, 1] for every pixel, (B,1,28,28): one answer per input."""
        return torch.sigmoid(self(x))

    # The two models of chapter 5 share these two functions, so that training and evaluation never ask which
    # model they hold. Static methods: ``model`` is the network as ``fit`` calls it (compiled, or under DDP).
    @staticmethod
    def loss_terms(model, x, y, mask, objective="elbo", num_samples=1, alpha=0.5) -> dict:
        """The baseline's training loss, whatever ``objective`` the CVAEs use: the NLL of the missing pixels."""
        return baseline_nll(model, x, y, mask)

    @staticmethod
    def test_terms(model, x, y, mask, objective="elbo", num_samples=10, k=100) -> dict:
        """Per image (B,): {"nll"}, exact."""
        return {"nll": baseline_nll(model, x, y, mask)["nll_per_image"]}


class StructuredCVAE(nn.Module):
    """The CVAE of chapter 5: prior p(z|x), recognition q(z|x,y), generation p(y|x,z)."""

    def __init__(self, latent_dim=200, hidden=500, arch="structured_cvae"):
        super().__init__()
        self.config = _own_arch(StructuredConfig(arch, latent_dim, hidden))
        self.latent_dim = latent_dim
        self.prior_net = _mlp(NUM_PIXELS, hidden, 2 * latent_dim)  # x -> mu, logvar of p(z|x)
        # q(z|x,y) reads x with its hidden pixels filled in by y: the whole image, as in Pyro.
        self.recognition_net = _mlp(NUM_PIXELS, hidden, 2 * latent_dim)
        # p(y|x,z) reads x next to z, as the paper specifies (Pyro's reads z only).
        self.generation_net = _mlp(NUM_PIXELS + latent_dim, hidden, NUM_PIXELS)

    def prior(self, x):
        """p(z|x): x (B,1,28,28) -> mu, logvar, each (B, latent_dim)."""
        return self.prior_net(x.flatten(1)).chunk(2, dim=1)

    def encode(self, x, y):
        """q(z|x,y): x, y (B,1,28,28) -> mu, logvar, each (B, latent_dim)."""
        whole = torch.where(x == HIDDEN, y, x)  # (B,1,28,28): the complete image
        return self.recognition_net(whole.flatten(1)).chunk(2, dim=1)

    def decode_params(self, z, x):
        """p(y|x,z): z (B,D) and x (B,1,28,28) -> logits of every pixel, (B,1,28,28)."""
        return self.generation_net(torch.cat([x.flatten(1), z], dim=1)).view_as(x)

    def forward(self, x, y, samples=1):
        """The course's model interface (see ``CVAE.forward``): ``log_px`` = log p(y|x,z) over the missing
        pixels (those of x that are ``HIDDEN``), (B,), and the one latent group q(z|x,y), p(z|x);
        ``samples`` z per image from one encoding give (S*B,) outputs, sample-major as ``repeat_batch``."""
        check_samples(samples)
        mu, logvar = (repeat_batch(t, samples) for t in self.encode(x, y))  # q(z|x,y), (S*B, D) each
        x, y = repeat_batch(x, samples), repeat_batch(y, samples)
        eps = torch.randn_like(mu)
        params = self.decode_params(reparameterize(mu, logvar, eps), x)  # (B,1,28,28)
        mask = (x == HIDDEN).float()  # 1 on the pixels to predict
        return {
            "log_px": masked_log_prob(params, y, mask),
            "groups": [GroupStats(mu, logvar, *self.prior(x), eps)],
            "params": params,
        }

    @torch.no_grad()
    def predict(self, x, num_samples=1):
        """Draw z ~ p(z|x) and decode: (num_samples, B, 1, 28, 28) pixel means in [0, 1]."""
        mu, logvar = self.prior(x)  # (B, D)
        z = reparameterize(mu, logvar, torch.randn(num_samples, *mu.shape, device=mu.device))  # (S, B, D)
        xs = x.expand(num_samples, *x.shape)  # (S, B, 1, 28, 28)
        return torch.sigmoid(self.decode_params(z.flatten(0, 1), xs.flatten(0, 1))).view(xs.shape)

    @staticmethod
    def loss_terms(model, x, y, mask, objective="elbo", num_samples=1, alpha=0.5) -> dict:
        """-ELBO ("elbo"), -L_GSNN ("gsnn"), or ``alpha`` of the first and the rest of the second ("hybrid")."""
        if objective == "gsnn":
            return negative_gsnn(model, x, y, num_samples)
        if objective == "hybrid":
            return negative_hybrid(model, x, y, alpha, num_samples)
        return negative_elbo(model, x, y, num_samples)

    @staticmethod
    def test_terms(model, x, y, mask, objective="elbo", num_samples=10, k=100) -> dict:
        """Per image (B,): the bounds and estimates of -log p(y|x) that fit a model trained with ``objective``."""
        parts = {}
        if objective in ("elbo", "hybrid"):
            parts["nelbo"] = negative_elbo(model, x, y, num_samples)["nelbo_per_image"]
            parts["nll"] = importance_nll(model, x, y, k)
        if objective in ("gsnn", "hybrid"):
            parts["gsnn_bound"] = negative_gsnn(model, x, y, num_samples)["gsnn_bound_per_image"]
            parts["nll_prior"] = prior_nll(model, x, y, k)
        return parts


def baseline_nll(model, x, y, mask):
    """-log p(y|x) of the deterministic baseline, nats over the missing pixels (chapter 5)."""
    nll = -masked_log_prob(model(x), y, mask)  # (B,)
    return {"loss": nll.mean(), "nll": nll.mean(), "nll_per_image": nll}


def negative_elbo(model, x, y, num_samples=1):
    """-ELBO = -E_q[log p(y|x,z)] + KL(q(z|x,y) || p(z|x)), nats over missing pixels (chapter 5).

    ``losses.elbo_terms`` of the model's forward pass on the batch repeated ``num_samples`` times: the
    expectation is a mean over that many draws z ~ q(z|x,y) (Pyro's table: 10), the KL between the two
    Gaussians is exact. Returns batch means and ``nelbo_per_image`` (B,).
    """
    terms = elbo_terms(model(repeat_batch(x, num_samples), repeat_batch(y, num_samples)))
    per_image = terms["nelbo_per_image"].view(num_samples, -1).mean(0)  # (S*B,) -> (B,)
    return {
        "loss": terms["loss"],
        "recon": terms["recon"],
        "kl": terms["kl"],
        "nelbo": terms["nelbo"],
        "nelbo_per_image": per_image,
    }


@torch.no_grad()
def importance_nll(model, x, y, k=100, chunk=100):
    """-log p(y|x) by importance sampling from q, K samples: (B,) nats (chapter 5).

    -log (1/K) sum_k p(y|x,z_k) p(z_k|x) / q(z_k|x,y), z_k ~ q(z|x,y): ``evaluate.log_importance_weights``,
    the IWAE bound of chapter 1 written once for every model. An upper bound on -log p(y|x) in
    expectation that tightens as K grows; K = 1 is the 1-sample -ELBO. ``chunk`` samples at a time.
    """
    log_w = log_importance_weights(model, x, y, k, max_images=chunk * len(x))  # (K, B)
    return -log_mean_exp(log_w, dim=0)


def negative_gsnn(model, x, y, num_samples=1):
    """-L_GSNN = -(1/S) sum_s log p(y|x,z_s), z_s ~ p(z|x): the GSNN objective of Sohn et al. (chapter 5).

    The CVAE's networks trained as they are used at test time: z comes from the prior network (reparameterised,
    so its gradient reaches the prior network), and the recognition network is not used. By Jensen's
    inequality it is an upper bound on -log p(y|x), like the -ELBO. Returns batch means and
    ``gsnn_bound_per_image`` (B,), in nats over the missing pixels.
    """
    xs, ys = repeat_batch(x, num_samples), repeat_batch(y, num_samples)  # (S*B,1,28,28)
    z = reparameterize(*model.prior(xs))  # (S*B, D), z ~ p(z|x)
    nll = -masked_log_prob(model.decode_params(z, xs), ys, (xs == HIDDEN).float())  # (S*B,)
    per_image = nll.view(num_samples, -1).mean(0)  # (B,)
    return {"loss": per_image.mean(), "gsnn_bound": per_image.mean(), "gsnn_bound_per_image": per_image}


def negative_hybrid(model, x, y, alpha=0.5, num_samples=1):
    """alpha * (-ELBO) + (1 - alpha) * (-L_GSNN): the hybrid objective of Sohn et al. (chapter 5).

    The same networks get both gradients: the ELBO trains the recognition network and the decoder on z from q,
    the GSNN term trains the prior network and the decoder on z from p, the way samples are drawn at test time.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha (the weight of the ELBO in the hybrid objective) must be in [0, 1], got {alpha!r}")
    elbo = negative_elbo(model, x, y, num_samples)
    gsnn = negative_gsnn(model, x, y, num_samples)
    return {
        "loss": alpha * elbo["loss"] + (1 - alpha) * gsnn["loss"],
        "nelbo": elbo["nelbo"],
        "kl": elbo["kl"],
        "gsnn_bound": gsnn["gsnn_bound"],
    }


@torch.no_grad()
def prior_nll(model, x, y, k=100):
    """-log (1/K) sum_k p(y|x,z_k), z_k ~ p(z|x): importance sampling with the prior network as the proposal,
    (B,) nats (chapter 5).

    The weights p(y|x,z) p(z|x) / p(z|x) reduce to p(y|x,z_k). The only estimate a GSNN has (it has no trained
    recognition network); for a CVAE a looser one than ``importance_nll`` at the same K, since the prior
    does not know y. K = 1 is the 1-sample GSNN bound.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be at least 1, got {k!r}")
    mu, logvar = model.prior(x)  # (B, D) each
    mask = (x == HIDDEN).float()
    log_p = []  # K tensors (B,): one decoded batch per sample
    for _ in range(k):
        log_p.append(masked_log_prob(model.decode_params(reparameterize(mu, logvar), x), y, mask))
    log_p = torch.stack(log_p)  # (K, B)
    return -log_mean_exp(log_p, dim=0)


def structured_loss(model, images, labels=None, num_given=2, num_samples=1, objective="elbo", alpha=0.5):
    """The training loss of chapter 5 for ``fit``: split the images, then the baseline's NLL, or the CVAE's
    ``objective``: "elbo" (-ELBO), "gsnn" (-L_GSNN) or "hybrid" (``alpha`` of the first, the rest of the second).

    Use ``partial(structured_loss, num_given=2)``; the digit labels are ignored.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    x, y, mask = split_quadrants(images, num_given)
    return model.loss_terms(model, x, y, mask, objective, num_samples, alpha)


@torch.no_grad()
def evaluate(model, batches, num_given, num_samples=10, k=100, objective="elbo"):
    """Test figures of chapter 5 in nats per image over the missing pixels.

    Baseline: {"nll"}, exact. A CVAE trained with ``objective``:
    - "elbo": {"nelbo"} (``num_samples``-sample -ELBO, Pyro's number) and {"nll"} (importance-sampled from
      q with ``k`` samples);
    - "gsnn": {"gsnn_bound"} (``num_samples``-sample -L_GSNN) and {"nll_prior"} (``prior_nll`` with ``k``);
    - "hybrid": all four, since it trains both ways of drawing z.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    model.eval()
    device = next(model.parameters()).device

    def rows():
        for images, _ in batches:
            x, y, mask = split_quadrants(images.to(device), num_given)
            parts = model.test_terms(model, x, y, mask, objective, num_samples, k)  # (B,) each
            yield len(images), {name: float(value.mean()) for name, value in parts.items()}

    return batch_means(rows())


def per_missing_pixel(t, mask):
    """The mean of ``t`` (..., B,1,28,28) over the missing pixels, where ``mask`` (B,1,28,28) is 1 (chapter 5)."""
    return float((t * mask).sum() / (mask.sum() * t.numel() / mask.numel()))


@torch.no_grad()
def sample_spread(model, x, num_samples=10):
    """How much ``num_samples`` completions of x differ, and how sure each is, per missing pixel (chapter 5).

    {"spread": std over the samples, "sharpness": mean |p - 0.5|, where 0.5 is "no idea"}. Seed torch first
    for repeatable samples.
    """
    samples = model.predict(x, num_samples)  # (S, B, 1, 28, 28)
    mask = (x == HIDDEN).float()  # the missing pixels
    return {
        "spread": per_missing_pixel(samples.std(0), mask),
        "sharpness": per_missing_pixel((samples - 0.5).abs(), mask),
    }


def show_input(x):
    """x for display: hidden pixels (-1) in mid grey, (B,1,28,28) in [0, 1]."""
    return torch.where(x == HIDDEN, torch.full_like(x, 0.5), x)
