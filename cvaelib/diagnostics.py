"""Has the posterior collapsed? One report with the evidence and a verdict (chapter 4)."""

import math

import torch
from torch import nn

from .evaluate import gather_groups, group_figures, negative_elbo, total_mutual_information
from .judge import frechet_distance, judge_samples
from .losses import bits_per_dim, gaussian_kl
from .train import seed_everything


@torch.no_grad()
def decoder_sensitivity(model: nn.Module, num_z: int = 64, seed: int = 0) -> float:
    """How much the decoded image changes with z for a fixed label, in pixel units [0, 1].

    For each label (or once for a VAE), decodes ``num_z`` prior samples (their mean images, ``sample(mean=True)``)
    and takes the per-pixel standard deviation across them, averaged over pixels and labels. Near 0:
    the decoder ignores z, and every sample of a class is the same picture. The global random state is untouched.
    """
    model.eval()
    device = next(model.parameters()).device
    spreads = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for label in range(model.num_classes) or [None]:
            if label is None:
                images = model.sample(num_samples=num_z, mean=True)
            else:
                images = model.sample(torch.full((num_z,), label), mean=True)
            spreads.append(images.std(dim=0).mean())  # (num_z,C,H,W) -> std over z -> mean
    return float(torch.stack(spreads).mean())


@torch.no_grad()
def diagnose(
    model: nn.Module,
    batches,
    threshold: float = 0.01,
    collapsed_nats: float = 0.5,
    ignored_pixels: float = 0.01,
    max_images: int | None = None,
) -> dict:
    """KL, active units and mutual information per latent group (and in total for one group), decoder
    sensitivity, and a verdict (chapter 4).

    The posterior has collapsed when z carries (almost) no information about x: no active unit, or a
    total KL below ``collapsed_nats`` together with a decoder whose output barely moves with z
    (sensitivity below ``ignored_pixels``). A model of several groups is partly collapsed when some
    groups have no active unit (they switched off); a model of one group when some dimensions do.
    ``max_images``: diagnose on the first that many images of ``batches`` (default: all).
    """
    groups, labels = gather_groups(model, batches, max_images)
    per_group = group_figures(groups, labels, threshold)  # a CVAE's: within each class
    kl = torch.cat([gaussian_kl(g.mu, g.logvar, g.prior_mu, g.prior_logvar).mean(0) for g in groups])  # (D,)
    units = sum(f["active_units"] for f in per_group)
    mi = total_mutual_information(per_group)
    sensitivity = decoder_sensitivity(model)
    total_kl = float(kl.sum())
    off = [i for i, f in enumerate(per_group) if f["active_units"] == 0]
    given = " | y" if labels is not None else ""

    def nats(f):  # an estimate at its cap is a lower bound
        return ("≥ " if f["mutual_information_at_cap"] else "") + f"{f['mutual_information_nats']:.2f}"

    cap = f"cap {per_group[0]['mutual_information_cap_nats']:.2f}, the log of the images" + (
        " per class" if given else ""
    )
    if mi is not None:
        information = f"I(x; z{given}) = {nats(per_group[0])} nats ({cap})"
    else:
        information = f"I(z_g; x, z_<g{given}) per group: {', '.join(map(nats, per_group))} nats ({cap})"
    evidence = [
        f"{units} of {model.latent_dim} latent dimensions active (Cov_x E[z_d - prior mean] > {threshold}"
        + (", within each class)" if labels is not None else ")"),
        f"KL to the prior {total_kl:.2f} nats/image, largest dimension {float(kl.max()):.2f} nats",
        information,
        f"decoder sensitivity to z: {sensitivity:.4f} (mean per-pixel std across z for a fixed label)",
    ]
    if len(groups) > 1:
        evidence.append(
            f"{len(groups) - len(off)} of {len(groups)} latent groups active; KL per group (nats): "
            + ", ".join(f"{f['kl_nats']:.1f}" for f in per_group)
        )
    collapsed = units == 0 or (total_kl < collapsed_nats and sensitivity < ignored_pixels)
    verdict = _verdict(collapsed, off, len(groups), units, model.latent_dim)
    return {
        "verdict": verdict,
        "evidence": evidence,
        "collapsed": collapsed,
        "active_units": units,
        "latent_dim": model.latent_dim,
        "kl_per_dim": kl,
        "total_kl": total_kl,
        "mutual_information": mi,
        "decoder_sensitivity": sensitivity,
        "groups": per_group,
        "active_groups": len(groups) - len(off),
    }


def _verdict(collapsed: bool, off: list[int], num_groups: int, units: int, latent_dim: int) -> str:
    """``diagnose``'s verdict: collapsed, partly collapsed (the groups, or dimensions of one group, unused), healthy."""
    if collapsed:
        return "collapsed: z carries (almost) nothing about x and the decoder ignores it"
    if num_groups > 1 and off:
        return f"partly collapsed: {len(off)} of {num_groups} latent groups are unused (groups {off})"
    if num_groups == 1 and units < latent_dim:
        return f"partly collapsed: {latent_dim - units} of {latent_dim} dimensions are unused"
    return f"healthy: every latent {'group' if num_groups > 1 else 'dimension'} is used"


@torch.no_grad()
def compare(
    model: nn.Module,
    test_batches,
    judge: nn.Module,
    real_images: torch.Tensor,
    samples_per_class: int = 100,
    seed: int = 0,
    temperatures: tuple[float, ...] = (1.0,),
    max_images: int | None = None,
) -> dict:
    """One row of chapter 4's remedy table: the bound, the diagnosis and the judged samples.

    ``real_images`` (float, [0, 1]) are the reference for the Fréchet distance. Samples (the decoder's
    mean image for z drawn from the prior, as the chapters show them) are drawn at every temperature and
    judged; the row reports the best one's. Returns bits/dim (None for a density
    likelihood), active units and groups, total and per-group KL, I(x; z | y), decoder sensitivity,
    verdict, judged accuracy per temperature, the best temperature and its judged accuracy, Fréchet
    distance and samples (10 * samples_per_class), and the whole ``diagnose`` report (on the first
    ``max_images`` test images).
    """
    d = diagnose(model, test_batches, max_images=max_images)
    device = next(model.parameters()).device
    nelbo = negative_elbo(model, test_batches)["nelbo"]
    labels = torch.arange(model.num_classes).repeat_interleave(samples_per_class)
    drawn = {}
    for t in temperatures:
        seed_everything(seed)
        samples = model.sample(labels.to(device), temperature=t, mean=True).cpu()
        drawn[t] = (judge_samples(judge, samples, labels)["accuracy"], samples)
    best = max(drawn, key=lambda t: drawn[t][0])
    return dict(
        bpd=bits_per_dim(nelbo, math.prod(model.image_shape)) if model.likelihood.discrete else None,
        units=d["active_units"],
        groups=d["active_groups"],
        kl=d["total_kl"],
        kl_groups=[f["kl_nats"] for f in d["groups"]],
        mi=d["mutual_information"],
        sensitivity=d["decoder_sensitivity"],
        verdict=d["verdict"],
        diagnosis=d,
        judged_by_temperature={t: accuracy for t, (accuracy, _) in drawn.items()},
        temperature=best,
        judged=drawn[best][0],
        fd=frechet_distance(judge, real_images, drawn[best][1]),
        samples=drawn[best][1],
    )
