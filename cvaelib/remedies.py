"""Remedies for posterior collapse: KL schedules, free bits, sigma-VAE, KL balancing (chapter 4).

``RemedyLoss`` is a drop-in ``loss_fn`` for ``fit`` that combines them; each piece is also
a plain function so that the chapter can show and test it alone.
"""

import math
from dataclasses import dataclass, field
from functools import partial

import torch

from .interface import labels_for
from .losses import GaussianLikelihood, elbo_terms, gaussian_kl

SCHEDULES = ("constant", "linear", "cyclical")  # the KL weight's schedules of beta_schedule


def beta_schedule(kind: str, progress: float, warmup: float = 1.0, cycles: int = 4, ratio: float = 0.5) -> float:
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
    raise ValueError(f"unknown beta schedule {kind!r}; choose one of {list(SCHEDULES)}")


def free_bits(kl_per_dim: torch.Tensor, threshold: float, group_sizes: tuple[int, ...] | None = None) -> torch.Tensor:
    """Free bits (Kingma et al. 2016): each dimension (or group) pays at least ``threshold`` nats.

    ``kl_per_dim`` (B, D) -> a (B,) KL in which every dimension's (or group's) batch-mean KL
    below the threshold is replaced by the threshold, so no gradient pushes it lower.
    """
    kl = kl_per_dim if group_sizes is None else group_kl(kl_per_dim, group_sizes)  # (B, G)
    mean = kl.mean(0, keepdim=True)  # (1, G): the batch-mean KL of each unit
    # Where the batch mean is below the threshold, the unit costs a constant: no gradient.
    floored = torch.where(mean < threshold, torch.full_like(kl, threshold), kl)
    return floored.sum(1)


def group_kl(kl_per_dim: torch.Tensor, group_sizes: tuple[int, ...]) -> torch.Tensor:
    """Sum a (B, D) KL over consecutive groups of dimensions: (B, G)."""
    if sum(group_sizes) != kl_per_dim.shape[1]:
        raise ValueError(f"group sizes {tuple(group_sizes)} do not add up to the latent size {kl_per_dim.shape[1]}")
    return torch.stack([part.sum(1) for part in kl_per_dim.split(list(group_sizes), dim=1)], dim=1)


def group_balance_weights(kl_groups: torch.Tensor, group_sizes: tuple[int, ...]) -> torch.Tensor:
    """NVAE's KL balancing across groups (Vahdat & Kautz 2020): detached weights of mean 1.

    Each group's weight is proportional to its batch-mean KL divided by its size (plus 0.01
    so an empty group keeps a weight), normalised so the weights average 1. A group with a
    small KL gets a small weight: it is pushed less towards the prior and does not collapse early.

    The course divides by each group's size, its number of dimensions (KL per dimension). NVAE's code
    divides by the group's spatial area over the number of groups at its scale. The two agree, up to a
    constant that the normalisation removes, when every scale holds the same number of groups of the
    same channels (the "small" preset of chapter 4); they differ otherwise (the "full" preset's 2, 4, 6
    and 8 groups per scale).
    """
    sizes = torch.as_tensor(group_sizes, dtype=kl_groups.dtype, device=kl_groups.device)
    weights = (kl_groups.abs().mean(0) + 0.01) / sizes  # (G,)
    return (weights / weights.mean()).detach()


def optimal_sigma(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """sigma-VAE's optimal shared sigma (Rybkin et al. 2021): the root mean squared error."""
    return ((x - mean) ** 2).mean().sqrt().clamp(min=1e-3).detach()


def balanced_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    prior_mu: torch.Tensor,
    prior_logvar: torch.Tensor,
    alpha: float = 0.8,
    residual: bool = False,
) -> torch.Tensor:
    """DreamerV2's KL balancing between posterior and a learned prior (Hafner et al. 2021).

    alpha * KL(stopgrad(q) || p) + (1 - alpha) * KL(q || stopgrad(p)), per dimension (B, D).
    Its value is the plain KL; the first path trains only the prior, the second only the posterior.

    ``residual``: the posterior is parameterised as offsets from the prior (NVAE; the hierarchy of
    chapter 4), mu = prior_mu + dmu and logvar = prior_logvar + dlogvar. Then the posterior's mean
    depends on the prior's, and the second path would pull the prior's mean too (all told with weight
    2 alpha - 1 instead of alpha, chapter 4); there, q enters it as stopgrad(prior) + its offsets.
    """
    if prior_mu is None:
        raise ValueError("KL balancing needs a learned prior: build the model with prior='learned'")
    towards_posterior = gaussian_kl(mu.detach(), logvar.detach(), prior_mu, prior_logvar)
    if residual:  # same values; the prior's gradients through mu and logvar cancel exactly
        mu = prior_mu.detach() + (mu - prior_mu)
        logvar = prior_logvar.detach() + (logvar - prior_logvar)
    towards_prior = gaussian_kl(mu, logvar, prior_mu.detach(), prior_logvar.detach())
    return alpha * towards_posterior + (1 - alpha) * towards_prior


@dataclass(frozen=True)
class RemedyConfig:
    """The remedies ``RemedyLoss`` switches on (chapter 4, ``python -m cvaelib train``); stored in checkpoints.

    Without any, the loss is the plain negative ELBO.
    """

    beta: float = field(default=1.0, metadata={"help": "the KL weight at full strength"})
    schedule: str = field(default="constant", metadata={"help": "constant, linear or cyclical, over ``warmup`` epochs"})
    warmup: float = field(default=1.0, metadata={"help": "epochs of the warm-up (or of all cycles)"})
    cycles: int = field(default=4, metadata={"help": "cycles of the cyclical schedule"})
    free_bits: float | None = field(
        default=None, metadata={"help": "nats each dimension (or group, with group_sizes) may keep for free"}
    )
    group_sizes: tuple[int, ...] | None = field(
        default=None, metadata={"help": "split the latent into groups of these sizes"}
    )
    group_balance: bool = field(
        default=False,
        metadata={"help": "NVAE's balancing of the groups (group_sizes, or a hierarchy's) during the warm-up"},
    )
    optimal_sigma: bool = field(
        default=False, metadata={"help": "the sigma-VAE's analytic shared sigma (a Gaussian likelihood)"}
    )
    kl_balance: float | None = field(default=None, metadata={"help": "alpha of DreamerV2's balancing (learned prior)"})

    def __post_init__(self):
        beta_schedule(self.schedule, 0.0, 1.0, 1)  # rejects an unknown schedule now, not mid-training
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be a non-negative number, got {self.beta!r}")
        if not (math.isfinite(self.warmup) and self.warmup > 0):
            raise ValueError(f"warmup must be a positive number of epochs, got {self.warmup!r}")
        if not isinstance(self.cycles, int) or self.cycles < 1:
            raise ValueError(f"cycles must be a positive integer, got {self.cycles!r}")
        if self.free_bits is not None and not (math.isfinite(self.free_bits) and self.free_bits >= 0):
            raise ValueError(f"free_bits must be a non-negative number of nats, got {self.free_bits!r}")
        if self.group_sizes is not None:
            object.__setattr__(self, "group_sizes", tuple(self.group_sizes))  # a list from JSON or the CLI
            if not self.group_sizes or any(not isinstance(g, int) or g < 1 for g in self.group_sizes):
                raise ValueError(f"group_sizes must be positive integers, got {self.group_sizes!r}")
        if self.kl_balance is not None and not 0 <= self.kl_balance <= 1:
            raise ValueError(f"kl_balance must be in [0, 1] (DreamerV2's alpha), got {self.kl_balance!r}")


class RemedyLoss:
    """A ``loss_fn`` for ``fit``: the negative ELBO with the remedies of a ``RemedyConfig`` (chapter 4).

    ``fit`` calls ``set_epoch`` each epoch; the schedule then advances with every training step.
    With ``optimal_sigma``, each training batch uses its own best sigma (Rybkin et al. 2021), and
    the model's likelihood keeps the sigma fitted on the epoch's training batches so far: at test
    time (and in a checkpoint, and in ``evaluate``) the model uses that stored sigma.
    """

    def __init__(self, config: RemedyConfig = RemedyConfig(), steps_per_epoch: int | None = None):
        self.config, self.steps_per_epoch = config, steps_per_epoch
        self.epoch, self.step = 0, 0
        self._squared_error, self._count = 0.0, 0  # the sigma-VAE's fit over the epoch

    def set_epoch(self, epoch: int, step: int = 0) -> None:
        """Start epoch ``epoch`` (0-based) at training step ``step`` (a resumed run starts mid-epoch)."""
        self.epoch, self.step = epoch, step
        self._squared_error, self._count = 0.0, 0

    def progress(self) -> float:
        """Epochs done so far, as a float."""
        return self.epoch + (self.step / self.steps_per_epoch if self.steps_per_epoch else 0.0)

    def _optimal_sigma_recon(self, model, x, mean):
        """-log p(x|z) under the sigma-VAE's shared sigma: the batch's best while training, the stored one else."""
        likelihood = model.likelihood
        if not isinstance(likelihood, GaussianLikelihood) or isinstance(likelihood.log_sigma, torch.nn.Parameter):
            raise ValueError(
                "optimal_sigma needs a fixed-sigma Gaussian decoder: build the model with likelihood='gaussian'"
            )
        if not model.training:
            return -likelihood.log_prob(mean, x)
        sigma = optimal_sigma(x, mean)
        # Store the sigma fitted on every training pixel of the epoch so far (a buffer: saved, used at test time).
        self._squared_error = self._squared_error + ((x - mean.detach()) ** 2).sum()
        self._count += x.numel()
        with torch.no_grad():
            likelihood.log_sigma.copy_(torch.log((self._squared_error / self._count).sqrt().clamp(min=1e-3)))
        return (((x - mean) ** 2) / (2 * sigma**2) + torch.log(sigma) + 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))

    def penalty(self, kl_dims: list[torch.Tensor]) -> torch.Tensor:
        """What the loss charges for the KLs (B, D_g) of the groups, (B,): free bits, or NVAE's balanced
        groups during the warm-up, or the plain KL."""
        c = self.config
        kl_per_dim = torch.cat(kl_dims, dim=1)  # (B, D)
        # The units that free bits and group balancing act on: the given groups of a flat latent, else the
        # model's own latent groups (a hierarchical model), else (free bits) every dimension.
        sizes = c.group_sizes or (tuple(k.shape[1] for k in kl_dims) if len(kl_dims) > 1 else None)
        if c.group_balance and self.weight() < c.beta:  # NVAE balances only during the warm-up
            if sizes is None:
                raise ValueError("group balancing needs several latent groups: group_sizes, or a hierarchical model")
            kl_groups = group_kl(kl_per_dim, sizes)
            return (kl_groups * group_balance_weights(kl_groups, sizes)).sum(1)
        if c.free_bits is not None:
            return free_bits(kl_per_dim, c.free_bits, sizes)
        return kl_per_dim.sum(1)

    def weight(self) -> float:
        """The KL weight at this step: beta times the schedule."""
        c = self.config
        return c.beta * beta_schedule(c.schedule, self.progress(), c.warmup, c.cycles)

    def __call__(self, model, x, y=None):
        c = self.config
        out = model(x, labels_for(model, y))
        recon = self._optimal_sigma_recon(model, x, out["params"]) if c.optimal_sigma else None
        kl_fn = gaussian_kl
        if c.kl_balance is not None:  # a residual posterior: q's mean is the prior's plus an offset
            kl_fn = partial(balanced_kl, alpha=c.kl_balance, residual=model.residual_posterior)
        weight = self.weight()
        terms = elbo_terms(out, weight, kl_fn, recon, self.penalty)
        if model.training:
            self.step += 1
        parts = {k: terms[k] for k in ("loss", "recon", "kl", "nelbo", "kl_per_dim")}
        parts["beta"] = terms["recon"].new_tensor(weight)
        if len(out["groups"]) > 1:  # a hierarchical model's KL per group, recorded in the history of fit
            parts.update({f"kl_g{i}": k for i, k in enumerate(terms["kl_groups"])})
        return parts


def group_kls(parts: dict, prefix: str = "") -> list[float]:
    """Each latent group's KL, top-down, from the loss parts ``RemedyLoss`` returns (``kl_g0``, ``kl_g1``, ...) or
    from an entry of ``fit``'s history (``prefix`` ``"train_"`` or ``"test_"``); empty for a model of one group."""
    kls = []
    while f"{prefix}kl_g{len(kls)}" in parts:
        kls.append(parts[f"{prefix}kl_g{len(kls)}"])
    return kls


def chapter_settings(warmup: float = 0.25, free_bits: float = 4.0, kl_balance: float = 0.8) -> dict:
    """``RemedyConfig`` arguments of every remedy chapter 4 compares on its hierarchical CVAE.

    ``none`` is the full KL from the first step; the warm-ups last ``warmup`` epochs; ``free_bits`` are
    nats per latent group; ``group_balance`` is NVAE's balancing of the groups during the same warm-up;
    ``kl_balance`` DreamerV2's alpha, at full KL from the first step; ``beta_1e-5`` the tutorials' recipe.
    """
    return {
        "none": {},
        "warmup": dict(schedule="linear", warmup=warmup),
        "free_bits": dict(free_bits=free_bits),
        "group_balance": dict(schedule="linear", warmup=warmup, group_balance=True),
        "kl_balance": dict(kl_balance=kl_balance),
        "beta_1e-5": dict(beta=1e-5),
    }
