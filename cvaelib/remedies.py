"""Remedies for posterior collapse: KL schedules, free bits, sigma-VAE, KL balancing (chapter 4).

``RemedyLoss`` is a drop-in ``loss_fn`` for ``fit`` that combines them; each piece is also
a plain function so that the chapter can show and test it alone.
"""
import math

import torch

from .losses import GaussianLikelihood, gaussian_kl


def beta_schedule(kind, progress, warmup=1.0, cycles=4, ratio=0.5):
    """The KL weight at ``progress`` (epochs done, a float) for a schedule (chapter 4).

    - ``"constant"``: 1.
    - ``"linear"``: rises from 0 to 1 over the first ``warmup`` epochs, then stays at 1.
    - ``"cyclical"`` (Fu et al. 2019): ``cycles`` cycles per ``warmup`` epochs; in each, the weight
      rises linearly over the first ``ratio`` of the cycle and then stays at 1.
    """
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return min(1.0, progress / warmup)
    if kind == "cyclical":
        period = warmup / cycles
        return min(1.0, (progress % period) / (period * ratio))
    raise ValueError(f"unknown beta schedule {kind!r}; choose constant, linear or cyclical")


def free_bits(kl_per_dim, threshold, group_sizes=None):
    """Free bits (Kingma et al. 2016): each dimension (or group) pays at least ``threshold`` nats.

    ``kl_per_dim`` (B, D) -> a (B,) KL in which every dimension's (or group's) batch-mean KL
    below the threshold is replaced by the threshold, so no gradient pushes it lower.
    """
    kl = kl_per_dim if group_sizes is None else group_kl(kl_per_dim, group_sizes)  # (B, G)
    mean = kl.mean(0, keepdim=True)  # (1, G): the batch-mean KL of each unit
    # Where the batch mean is below the threshold, the unit costs a constant: no gradient.
    floored = torch.where(mean < threshold, torch.full_like(kl, threshold), kl)
    return floored.sum(1)


def group_kl(kl_per_dim, group_sizes):
    """Sum a (B, D) KL over consecutive groups of dimensions: (B, G)."""
    if sum(group_sizes) != kl_per_dim.shape[1]:
        raise ValueError(f"group sizes {tuple(group_sizes)} do not add up to the latent size {kl_per_dim.shape[1]}")
    return torch.stack([part.sum(1) for part in kl_per_dim.split(list(group_sizes), dim=1)], dim=1)


def group_balance_weights(kl_groups, group_sizes):
    """NVAE's KL balancing across groups (Vahdat & Kautz 2020): detached weights of mean 1.

    Each group's weight is proportional to its batch-mean KL divided by its size (plus 0.01
    so an empty group keeps a weight), normalised so the weights average 1. A group with a
    small KL gets a small weight: it is pushed less towards the prior and does not collapse early.
    """
    sizes = torch.as_tensor(group_sizes, dtype=kl_groups.dtype, device=kl_groups.device)
    weights = (kl_groups.abs().mean(0) + 0.01) / sizes  # (G,)
    return (weights / weights.mean()).detach()


def optimal_sigma(x, mean):
    """sigma-VAE's optimal shared sigma (Rybkin et al. 2021): the root mean squared error."""
    return ((x - mean) ** 2).mean().sqrt().clamp(min=1e-3).detach()


def balanced_kl(mu, logvar, prior_mu, prior_logvar, alpha=0.8):
    """DreamerV2's KL balancing between posterior and a learned prior (Hafner et al. 2021).

    alpha * KL(stopgrad(q) || p) + (1 - alpha) * KL(q || stopgrad(p)), per dimension (B, D).
    Its value is the plain KL; its gradient trains the prior towards the posterior alpha
    times as hard as it pulls the posterior towards the prior.
    """
    if prior_mu is None:
        raise ValueError("KL balancing needs a learned prior: build the model with prior='learned'")
    towards_posterior = gaussian_kl(mu.detach(), logvar.detach(), prior_mu, prior_logvar)
    towards_prior = gaussian_kl(mu, logvar, prior_mu.detach(), prior_logvar.detach())
    return alpha * towards_posterior + (1 - alpha) * towards_prior


class RemedyLoss:
    """A ``loss_fn`` for ``fit``: the negative ELBO with any of the remedies switched on (chapter 4).

    Arguments: ``beta`` (the KL weight at full strength), ``schedule`` (constant, linear,
    cyclical) over ``warmup`` epochs, ``free_bits`` (nats per dimension, or per group when
    ``group_sizes`` is given), ``group_balance`` (NVAE balancing of ``group_sizes`` during the
    warm-up), ``sigma`` (``"optimal"`` for the sigma-VAE's analytic sigma with a Gaussian
    decoder mean), ``kl_balance`` (alpha of DreamerV2 balancing; needs a learned prior).
    ``fit`` calls ``set_epoch`` each epoch; the schedule then advances with every training step.
    """

    def __init__(self, beta=1.0, schedule="constant", warmup=1.0, cycles=4, free_bits=None, group_sizes=None,
                 group_balance=False, sigma=None, kl_balance=None, steps_per_epoch=None):
        beta_schedule(schedule, 0.0, warmup, cycles)  # rejects an unknown schedule now, not mid-training
        if group_balance and group_sizes is None:
            raise ValueError("group balancing needs group_sizes, e.g. (8, 56) for a 64-d latent in two groups")
        if sigma not in (None, "optimal"):
            raise ValueError(f"sigma must be None or 'optimal', got {sigma!r}")
        self.beta, self.schedule, self.warmup, self.cycles = beta, schedule, warmup, cycles
        self.free_bits, self.group_sizes, self.group_balance = free_bits, group_sizes, group_balance
        self.sigma, self.kl_balance, self.steps_per_epoch = sigma, kl_balance, steps_per_epoch
        self.epoch, self.step = 0, 0

    def set_epoch(self, epoch):
        self.epoch, self.step = epoch, 0

    def progress(self):
        """Epochs done so far, as a float."""
        return self.epoch + (self.step / self.steps_per_epoch if self.steps_per_epoch else 0.0)

    def __call__(self, model, x, y=None):
        y = y if model.num_classes else None
        out = model(x, y)
        if self.sigma == "optimal":  # decoder mean with the batch's best shared sigma
            if not isinstance(model.likelihood, GaussianLikelihood):
                raise ValueError("sigma='optimal' needs a Gaussian decoder: build the model with likelihood='gaussian'")
            mean = out["params"]
            sigma = optimal_sigma(x, mean)
            recon = (((x - mean) ** 2) / (2 * sigma**2) + torch.log(sigma) + 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))
        else:
            recon = -model.likelihood.log_prob(out["params"], x)  # (B,)
        prior_mu, prior_logvar = out["prior"]
        if self.kl_balance is not None:
            kl_per_dim = balanced_kl(out["mu"], out["logvar"], prior_mu, prior_logvar, self.kl_balance)
        else:
            kl_per_dim = gaussian_kl(out["mu"], out["logvar"], prior_mu, prior_logvar)  # (B, D)
        kl = kl_per_dim.sum(1)  # (B,): the true KL, reported
        weight = self.beta * beta_schedule(self.schedule, self.progress(), self.warmup, self.cycles)
        if self.group_balance and weight < self.beta:  # NVAE balances only during the warm-up
            kl_groups = group_kl(kl_per_dim, self.group_sizes)
            penalty = (kl_groups * group_balance_weights(kl_groups, self.group_sizes)).sum(1)
        elif self.free_bits is not None:
            penalty = free_bits(kl_per_dim, self.free_bits, self.group_sizes)
        else:
            penalty = kl
        if model.training:
            self.step += 1
        return {"loss": (recon + weight * penalty).mean(), "recon": recon.mean(), "kl": kl.mean(),
                "nelbo": (recon + kl).mean(), "beta": torch.tensor(weight), "kl_per_dim": kl_per_dim.mean(0)}


def chapter_settings(num_epochs, collapse_beta=300.0, free_bits=0.5, group_sizes=(16, 48)):
    """Likelihood and ``RemedyLoss`` arguments of every model compared in chapter 4.

    Warm-ups last the first third of ``num_epochs``; cyclical annealing runs its cycles over
    all of them. ``collapse`` forces posterior collapse with a huge KL weight.
    """
    warmup = num_epochs / 3
    return {
        "constant":      dict(likelihood="logistic", loss=dict(beta=1.0)),
        "collapse":      dict(likelihood="logistic", loss=dict(beta=collapse_beta)),
        "linear":        dict(likelihood="logistic", loss=dict(schedule="linear", warmup=warmup)),
        "cyclical":      dict(likelihood="logistic", loss=dict(schedule="cyclical", warmup=num_epochs)),
        "free_bits":     dict(likelihood="logistic", loss=dict(free_bits=free_bits)),
        "sigma_vae":     dict(likelihood="gaussian", loss=dict(sigma="optimal")),
        "kl_balance":    dict(likelihood="logistic", loss=dict(kl_balance=0.8)),
        "group_balance": dict(likelihood="logistic", loss=dict(group_sizes=tuple(group_sizes), group_balance=True,
                                                               schedule="linear", warmup=warmup)),
        "beta_1e-5":     dict(likelihood="logistic", loss=dict(beta=1e-5)),
    }
