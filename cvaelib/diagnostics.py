"""Has the posterior collapsed? One report with the evidence and a verdict (chapter 4)."""

import math

import torch
from torch import nn

from .evaluate import active_units, kl_per_dim, mutual_information, negative_elbo, posterior_and_prior
from .judge import frechet_distance, judge_samples
from .losses import bits_per_dim
from .train import seed_everything


@torch.no_grad()
def decoder_sensitivity(model: nn.Module, num_z: int = 64, seed: int = 0) -> float:
    """How much the decoded image changes with z for a fixed label, in pixel units [0, 1].

    For each label (or once for a VAE), decodes ``num_z`` prior samples and takes the
    per-pixel standard deviation across them, averaged over pixels and labels. Near 0:
    the decoder ignores z, and every sample of a class is the same picture.
    """
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    spreads = []
    for label in range(model.num_classes) or [None]:
        y = None if label is None else torch.full((num_z,), label, device=device)
        eps = torch.randn(num_z, model.latent_dim, generator=generator).to(device)
        prior_mu, prior_logvar = model.prior(y)
        z = eps if prior_mu is None else prior_mu + torch.exp(0.5 * prior_logvar) * eps
        spreads.append(model.decode(z, y).std(dim=0).mean())  # (num_z,C,H,W) -> std over z -> mean
    return float(torch.stack(spreads).mean())


@torch.no_grad()
def diagnose(
    model: nn.Module, batches, threshold: float = 0.01, collapsed_nats: float = 0.5, ignored_pixels: float = 0.01
) -> dict:
    """KL per dimension, active units, I(x; z), decoder sensitivity, and a verdict (chapter 4).

    The posterior has collapsed when z carries (almost) no information about x: no active
    unit, or a total KL below ``collapsed_nats`` together with a decoder whose output barely
    moves with z (sensitivity below ``ignored_pixels``).
    """
    mu, logvar, prior_mu, prior_logvar, labels = posterior_and_prior(model, batches)
    kl = kl_per_dim(mu, logvar, prior_mu, prior_logvar)  # (D,)
    units, variance = active_units(mu, threshold, labels)  # a CVAE's: within each class
    mi = mutual_information(mu, logvar, labels)  # a CVAE's: I(x; z | y)
    sensitivity = decoder_sensitivity(model)
    total_kl = float(kl.sum())
    evidence = [
        f"{units} of {model.latent_dim} latent dimensions active (Cov_x E[z_d] > {threshold}"
        + (", within each class)" if labels is not None else ")"),
        f"KL to the prior {total_kl:.2f} nats/image, largest dimension {float(kl.max()):.2f} nats",
        f"I(x; z{' | y' if labels is not None else ''}) = {mi:.2f} nats (at most log N)",
        f"decoder sensitivity to z: {sensitivity:.4f} (mean per-pixel std across z for a fixed label)",
    ]
    if units == 0 or (total_kl < collapsed_nats and sensitivity < ignored_pixels):
        verdict = "collapsed: z carries (almost) nothing about x and the decoder ignores it"
    elif units < model.latent_dim:
        verdict = f"partly collapsed: {model.latent_dim - units} of {model.latent_dim} dimensions are unused"
    else:
        verdict = "healthy: every latent dimension is used"
    return {
        "verdict": verdict,
        "evidence": evidence,
        "collapsed": verdict.startswith("collapsed"),
        "active_units": units,
        "latent_dim": model.latent_dim,
        "kl_per_dim": kl,
        "unit_variance": variance,
        "total_kl": total_kl,
        "mutual_information": mi,
        "decoder_sensitivity": sensitivity,
    }


@torch.no_grad()
def compare(
    model: nn.Module,
    test_batches,
    judge: nn.Module,
    real_images: torch.Tensor,
    samples_per_class: int = 100,
    seed: int = 0,
) -> dict:
    """One row of chapter 4's remedy table: the bound, the diagnosis and the judged samples.

    ``real_images`` (float, [0, 1]) are the reference for the Fréchet distance. Returns
    bits/dim (None for a density likelihood), active units, total KL, I(x; z | y), decoder
    sensitivity, verdict, judged accuracy, Fréchet distance, the samples (10 * samples_per_class)
    and the whole ``diagnose`` report.
    """
    d = diagnose(model, test_batches)
    device = next(model.parameters()).device
    nelbo = negative_elbo(model, test_batches)["nelbo"]
    labels = torch.arange(model.num_classes).repeat_interleave(samples_per_class)
    seed_everything(seed)
    samples = model.sample(labels.to(device)).cpu()
    return dict(
        bpd=bits_per_dim(nelbo, math.prod(model.image_shape)) if model.likelihood.discrete else None,
        units=d["active_units"],
        kl=d["total_kl"],
        mi=d["mutual_information"],
        sensitivity=d["decoder_sensitivity"],
        verdict=d["verdict"],
        diagnosis=d,
        judged=judge_samples(judge, samples, labels)["accuracy"],
        fd=frechet_distance(judge, real_images, samples),
        samples=samples,
    )
