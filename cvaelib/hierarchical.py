"""A small top-down hierarchical conditional VAE for CIFAR-10 (chapter 4): Ladder VAE, IAF, NVAE, VDVAE.

Bottom-up, a residual encoder summarises the image x at 16x16, 8x8 and 4x4 (and 2x2, 1x1 with more
resolutions). Top-down, the decoder starts from a learned constant at the lowest resolution and meets
the latent groups z_1, ..., z_G in turn, several per resolution. Group g has

- a prior p(z_g | z_<g, y) = N(prior_mu, exp(prior_logvar)), read from the top-down state h, and
- a posterior q(z_g | x, z_<g, y) read from h and the encoder's activation at that resolution, as a
  *residual* normal (NVAE, Vahdat & Kautz 2020): mu = prior_mu + dmu, logvar = prior_logvar + dlogvar.

A sample z_g (from q while training, from p when sampling) is added to h through a 1x1 convolution.
The label y enters at every resolution as a learned per-resolution embedding added to h. Every
log-variance is soft-clamped to (-5, 5) (the posterior's to (-10, 10)), and the last convolution
of every residual branch starts at zero, so that the network starts as an identity and trains stably;
so does the prior head's (p = N(0, I) at first), but, as in VDVAE, not the posterior head's: with
q = p at the start, the latents stayed unused for the first few hundred steps of a CPU trial.
The output is the likelihood's parameters at 32x32, by default the mixture of discretized logistics.
"""

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .interface import (
    at_least_float32,
    check_images,
    check_labels,
    check_samples,
    check_top,
    decoded_images,
    repeat_batch,
    sample_request,
)
from .losses import LIKELIHOODS, GroupStats, make_likelihood, reparameterize

# Presets; any value can be overridden by the constructor argument of the same name.
# "tiny" exists for the tests; "small" trains on a CPU; "full" wants a GPU.
SIZES = {
    "tiny": {
        "widths": (16, 16, 16, 16),
        "latent_channels": 2,
        "groups_per_resolution": (1, 1, 1),
        "blocks_per_resolution": 1,
    },
    "small": {
        "widths": (256, 256, 128, 64),
        "latent_channels": 8,
        "groups_per_resolution": (2, 2, 2),
        "blocks_per_resolution": 1,
    },
    "full": {
        "widths": (384, 384, 384, 256, 128),
        "latent_channels": 16,
        "groups_per_resolution": (2, 4, 6, 8),
        "blocks_per_resolution": 2,
    },
}
IMAGE_SHAPES = {(3, 32, 32), (1, 28, 28)}  # 28x28 images are padded to 32x32 inside the model
LOGVAR_BOUND = 5.0


def soft_clamp(x: torch.Tensor, bound: float = LOGVAR_BOUND) -> torch.Tensor:
    """Squash x smoothly into (-bound, bound), with slope 1 near 0: bound * tanh(x / bound)."""
    return bound * torch.tanh(x / bound)


class ResBlock(nn.Module):
    """VDVAE's bottleneck block: GELU-1x1, GELU-3x3, GELU-3x3, GELU-1x1, added to x when ``residual``.

    With ``zero_last`` the last convolution starts at zero: a residual block starts as the identity, a head at 0.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int | None = None,
        residual: bool = True,
        zero_last: bool = True,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        self.residual = residual
        self.net = nn.Sequential(
            nn.GELU(),
            nn.Conv2d(in_channels, mid_channels, 1),
            nn.GELU(),
            nn.Conv2d(mid_channels, mid_channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(mid_channels, mid_channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(mid_channels, out_channels, 1),
        )
        if zero_last:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B,in,r,r) -> (B,out,r,r)
        return x + self.net(x) if self.residual else self.net(x)


class LatentGroup(nn.Module):
    """One latent group z_g of ``latent_channels`` maps at one resolution r (chapter 4)."""

    def __init__(self, width: int, latent_channels: int, num_groups: int):
        super().__init__()
        mid = max(width // 4, 1)
        self.latent_channels = latent_channels
        # h -> prior mean, prior log-variance and an update of h: (B,W,r,r) -> (B,2Z+W,r,r)
        self.prior = ResBlock(width, mid, 2 * latent_channels + width, residual=False)
        # [h, encoder activation] -> the posterior's offsets from the prior: (B,2W,r,r) -> (B,2Z,r,r)
        self.posterior = ResBlock(2 * width, mid, 2 * latent_channels, residual=False, zero_last=False)
        self.z_proj = nn.Conv2d(latent_channels, width, 1)  # z -> h: (B,Z,r,r) -> (B,W,r,r)
        with torch.no_grad():  # VDVAE: scale each group's contribution to h by 1/sqrt(G)
            self.z_proj.weight.mul_(num_groups**-0.5)
        self.block = ResBlock(width, mid)

    def forward(self, h, activation=None, from_prior=False, temperature=1.0, z=None):
        """Top-down step: h (B,W,r,r) -> new h, and (mu, logvar, prior_mu, prior_logvar), each (B, Z*r*r).

        Without an encoder ``activation`` (sampling), z comes from the prior at ``temperature``, or is the
        given ``z`` (B, Z*r*r), and the statistics are None. With one, z comes from the posterior, or from
        the prior when ``from_prior`` (the statistics still report both).
        """
        Z = self.latent_channels
        prior_mu, prior_logvar, update = self.prior(h).split([Z, Z, h.shape[1]], dim=1)
        prior_logvar = soft_clamp(prior_logvar)
        eps = torch.randn_like(prior_mu)  # (B,Z,r,r)
        if activation is None and z is not None:
            z, stats = z.view_as(prior_mu).to(prior_mu), None  # (B, Z*r*r) -> (B,Z,r,r)
        elif activation is None:
            z, stats = reparameterize(prior_mu, prior_logvar, eps, temperature), None
        else:
            dmu, dlogvar = self.posterior(torch.cat([h, activation], dim=1)).chunk(2, dim=1)
            mu, logvar = prior_mu + dmu, prior_logvar + soft_clamp(dlogvar)  # NVAE's residual normal
            z = reparameterize(prior_mu, prior_logvar, eps) if from_prior else reparameterize(mu, logvar, eps)
            # (B,Z*r*r) each, at least float32 under bfloat16 autocast too: the KL keeps its digits
            stats = GroupStats(*(at_least_float32(t.flatten(1)) for t in (mu, logvar, prior_mu, prior_logvar, eps)))
        return self.block(h + update + self.z_proj(z)), stats


@dataclass(frozen=True)
class HierarchicalConfig:
    """Everything that defines a ``HierarchicalCVAE`` (chapter 4, ``--arch hierarchical``); stored in checkpoints.

    ``size`` picks a preset of ``SIZES``; a value given explicitly overrides the preset's, and the resolved
    values are kept, so ``HierarchicalCVAE(**asdict(config))`` rebuilds the same model.
    """

    image_shape: tuple[int, int, int] = field(
        default=(3, 32, 32), metadata={"help": "CIFAR-10's; (1, 28, 28) is padded to 32x32 inside"}
    )
    num_classes: int = field(default=10, metadata={"help": "0: unconditional"})
    size: str = field(default="small", metadata={"help": '"tiny" (tests), "small" (a CPU), "full" (a GPU)'})
    likelihood: str = field(default="logistic_mixture", metadata={"help": "p(x | z, y), any of losses.LIKELIHOODS"})
    num_mixtures: int = field(default=10, metadata={"help": "components of the logistic mixture"})
    widths: tuple[int, ...] | None = field(
        default=None, metadata={"help": "channels at each latent resolution, lowest first, then at 32x32"}
    )
    latent_channels: int | None = field(default=None, metadata={"help": "channels of every latent group"})
    groups_per_resolution: tuple[int, ...] | None = field(
        default=None, metadata={"help": "latent groups at each resolution, lowest first"}
    )
    blocks_per_resolution: int | None = field(
        default=None, metadata={"help": "residual blocks per resolution in the encoder and decoder"}
    )
    arch: str = field(default="hierarchical", metadata={"help": "what ``models.build_model`` rebuilds"})

    def __post_init__(self):
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        if self.image_shape not in IMAGE_SHAPES:
            raise ValueError(f"image_shape must be (3, 32, 32) or (1, 28, 28), got {self.image_shape}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose one of {sorted(SIZES)}")
        if self.arch != "hierarchical":
            raise ValueError(f"a HierarchicalConfig has arch 'hierarchical', got {self.arch!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {self.likelihood!r}; choose one of {sorted(LIKELIHOODS)}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative integer, got {self.num_classes!r}")
        if not isinstance(self.num_mixtures, int) or self.num_mixtures < 1:
            raise ValueError(f"num_mixtures must be a positive integer, got {self.num_mixtures!r}")
        if self.num_mixtures != 10 and self.likelihood != "logistic_mixture":
            raise ValueError(f"num_mixtures is the logistic mixture's: the likelihood is {self.likelihood!r}")
        for name, preset in SIZES[self.size].items():
            value = preset if getattr(self, name) is None else getattr(self, name)
            object.__setattr__(self, name, tuple(value) if isinstance(value, (list, tuple)) else value)
        gpr, widths = self.groups_per_resolution, self.widths
        if not 1 <= len(gpr) <= 5 or min(gpr) < 1:
            raise ValueError(
                f"groups_per_resolution needs 1 to 5 entries (resolutions 1x1 .. 16x16), each at least 1, got {gpr}"
            )
        if len(widths) != len(gpr) + 1 or min(widths) < 1:
            raise ValueError(
                f"widths needs one entry per latent resolution and one for 32x32, {len(gpr) + 1} in all, got {widths}"
            )
        for name in ("latent_channels", "blocks_per_resolution"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")

    def check_remedies(self, remedies) -> None:
        """Refuse remedies (a ``RemedyConfig``) this model cannot take, with a ValueError that starts with the field."""
        if remedies.group_sizes is not None:
            raise ValueError("group_sizes is not an option of a hierarchical model: its latent groups are its own")

    def unconditional(self) -> "HierarchicalConfig":
        """The same hierarchy without the label (its priors are then learned from the groups above alone)."""
        return replace(self, num_classes=0)

    def resized(self, size: str) -> "HierarchicalConfig":
        """The same model at another ``size``, with every field of the presets taken from that size's."""
        return replace(self, size=size, **dict.fromkeys(SIZES[self.size]))  # unset: filled from the new size


def _stage(width: int, blocks: int) -> list[nn.Module]:
    """The residual blocks of one resolution level."""
    return [ResBlock(width, max(width // 4, 1)) for _ in range(blocks)]


def _change_width(a: int, b: int) -> nn.Module:
    """A 1x1 convolution between levels of different widths."""
    return nn.Conv2d(a, b, 1) if a != b else nn.Identity()


class Encoder(nn.Module):
    """The bottom-up pass: x (B,C,32,32) -> the activation at every latent resolution (VDVAE's ``Encoder``).

    ``widths`` lists the channels at each latent resolution, lowest first, then at 32x32 (as the config does).
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], blocks: int):
        super().__init__()
        up_first = widths[::-1]  # the order the encoder meets them: 32x32 first, the lowest resolution last
        self.stem = nn.Conv2d(in_channels, up_first[0], 3, padding=1)
        # level k: change width from level k-1's, then blocks; level 0 (32x32) keeps the stem's width
        self.levels = nn.ModuleList(
            nn.Sequential(_change_width(a, b), *_stage(b, blocks))
            for a, b in zip(up_first[:1] + up_first[:-1], up_first, strict=True)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (B,C,32,32) -> [(B,w,r,r) for each latent resolution r], lowest resolution first."""
        h = self.levels[0](self.stem(x))  # (B,C,32,32) -> (B,w,32,32)
        activations = []
        for level in self.levels[1:]:
            h = level(F.avg_pool2d(h, 2))  # (B,w,2r,2r) -> (B,w',r,r)
            activations.append(h)
        return activations[::-1]


class Decoder(nn.Module):
    """The top-down pass: a learned constant, the latent groups from the lowest resolution up, then the
    likelihood's parameters at 32x32 (VDVAE's ``Decoder`` and ``DecBlock``). The label y, if any, is added
    at every resolution as a learned vector."""

    def __init__(self, config: HierarchicalConfig, resolutions: tuple[int, ...], out_channels: int):
        super().__init__()
        widths, gpr, blocks = config.widths, config.groups_per_resolution, config.blocks_per_resolution
        self.resolutions = resolutions
        self.h0 = nn.Parameter(torch.zeros(1, widths[0], resolutions[0], resolutions[0]))
        self.groups = nn.ModuleList(
            nn.ModuleList(LatentGroup(widths[i], config.latent_channels, sum(gpr)) for _ in range(n))
            for i, n in enumerate(gpr)
        )
        # before level i > 0 (32x32 last): change width to widths[i], then upsample
        self.up = nn.ModuleList(_change_width(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.label_embeddings = (  # one per level, 32x32 included
            nn.ModuleList(nn.Embedding(config.num_classes, w) for w in widths) if config.num_classes else None
        )
        self.out_blocks = nn.Sequential(*_stage(widths[-1], blocks))
        self.out = nn.Sequential(nn.GELU(), nn.Conv2d(widths[-1], out_channels, 1))

    def _enter_level(self, h, y, i):
        if (
            i
        ):  # 1x1 width change, then nearest upsampling (they commute; cheaper in this order): (B,w,r,r) -> (B,w',2r,2r)
            h = F.interpolate(self.up[i - 1](h), scale_factor=2, mode="nearest")
        # (B,w,r,r) + (B,w,1,1): the label's embedding for this level, broadcast over the map
        return h if y is None else h + self.label_embeddings[i](y.long())[:, :, None, None]

    def forward(self, y, batch_size, activations=None, prior_groups=(), temperature=1.0, top=None):
        """Learned constant -> groups, lowest resolution first -> params (B,P,32,32), and one GroupStats per group
        (None when sampling: no encoder ``activations``). Groups in ``prior_groups`` draw z from the prior; when
        sampling, ``top`` (B, D_0), if given, is the top group's z."""
        h, stats = self.h0.expand(batch_size, -1, -1, -1), []  # (1,w,r0,r0) -> (B,w,r0,r0)
        for i, groups in enumerate(self.groups):
            h = self._enter_level(h, y, i)
            for group in groups:
                e = None if activations is None else activations[i]
                z = top if not stats else None
                h, group_stats = group(h, e, from_prior=len(stats) in prior_groups, temperature=temperature, z=z)
                stats.append(group_stats)
        h = self.out_blocks(self._enter_level(h, y, len(self.groups)))  # (B,w,16,16) -> (B,w',32,32)
        return self.out(h), stats  # (B,w',32,32) -> (B,P,32,32)


class HierarchicalCVAE(nn.Module):
    """A top-down hierarchical CVAE p(x | z_1..G, y) prod_g p(z_g | z_<g, y) (chapter 4): an ``Encoder``
    (bottom-up) and a ``Decoder`` (top-down) that meet in the latent groups.

    ``groups_per_resolution`` lists the groups at each resolution, from the lowest to 16x16: three
    entries give 4x4, 8x8 and 16x16; five give 1x1 up to 16x16. ``num_classes=0``: unconditional.
    The arguments are those of ``HierarchicalConfig``, checked and kept in ``self.config``, so
    ``models.build_model(model.config)`` rebuilds the model.
    """

    residual_posterior = True  # q's mean and log-variance are the prior's plus offsets (remedies.balanced_kl)

    def __init__(self, **config):
        super().__init__()
        self.config = c = HierarchicalConfig(**config)
        self.image_shape, self.num_classes = c.image_shape, c.num_classes
        self.likelihood = make_likelihood(
            c.likelihood, **({"num_mixtures": c.num_mixtures} if c.likelihood == "logistic_mixture" else {})
        )
        self.pad = (32 - c.image_shape[1]) // 2  # 28x28 -> 32x32
        gpr = c.groups_per_resolution
        # the resolutions of the latent groups, lowest first: (4, 8, 16) for three entries; 32x32 comes last
        self.resolutions = tuple(16 // 2 ** (len(gpr) - 1 - i) for i in range(len(gpr)))
        Z = c.latent_channels
        self.group_shapes = [(Z, r, r) for r, n in zip(self.resolutions, gpr, strict=True) for _ in range(n)]
        self.latent_dim = sum(c * h * w for c, h, w in self.group_shapes)
        self.encoder = Encoder(c.image_shape[0], c.widths, c.blocks_per_resolution)
        self.decoder = Decoder(c, self.resolutions, self.likelihood.out_channels(c.image_shape[0]))

    def _unpad(self, params):
        # 28x28 images were padded to 32x32: (B,P,32,32) -> (B,P,28,28)
        return params[:, :, self.pad : -self.pad, self.pad : -self.pad] if self.pad else params

    def forward(self, x, y=None, prior_groups=(), samples=1):
        """Encode bottom-up, decode top-down with z from q (or from p for ``prior_groups``) (chapter 4).

        The course's one model interface: a dict with ``log_px`` (B,) = log p(x|z,y) and ``groups``, one
        ``GroupStats`` (mu, logvar, prior_mu, prior_logvar, eps; (B, D_g) each) per group, top-down, and
        ``params`` (B,P,H,W) and ``x_hat`` (B,C,H,W). A group whose index is in ``prior_groups`` draws z
        from its prior (resample one group, keep the others); its entry still reports q and p, and its
        ``eps`` is then the prior's noise (such a pass is for looking at, not for ``losses.log_weight``).
        ``samples`` > 1 runs the bottom-up pass once and the top-down pass for that many z per image: every
        output is then that of the batch ``samples`` times over (S*B, ...), sample-major as ``repeat_batch``.
        """
        check_images(x, self.image_shape)
        check_labels(y, self.num_classes, len(x))
        check_samples(samples)
        prior_groups = set(prior_groups)
        if not prior_groups <= set(range(len(self.group_shapes))):
            raise ValueError(
                f"prior_groups must be group indices in [0, {len(self.group_shapes)}), got {sorted(prior_groups)}"
            )
        activations = [repeat_batch(a, samples) for a in self.encoder(F.pad(x, [self.pad] * 4))]  # bottom-up once
        x, y = repeat_batch(x, samples), repeat_batch(y, samples)
        params, groups = self.decoder(y, len(x), activations, prior_groups)
        params = at_least_float32(self._unpad(params))  # the likelihood in float32 under bfloat16 autocast too
        return {
            "params": params,
            "x_hat": self.likelihood.mean(params),
            "log_px": self.likelihood.log_prob(params, x),
            "groups": groups,
        }

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor | None = None,
        num_samples: int | None = None,
        temperature: float = 1.0,
        mean: bool = False,
        top: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images from the prior, (N,C,H,W) in [0, 1] (chapter 4): a label each, or ``num_samples`` without.

        Every group draws z_g = prior_mu + temperature * prior_std * eps. The pixels are a sample of
        the likelihood when it has a ``sample`` (the mixture's honest 8-bit image: noisy even at
        temperature 0), else its mean; ``mean=True`` always returns the mean x_hat, so that at
        temperature 0 the image is a deterministic function of the label. ``top`` (N, D_0): the top group's z,
        drawn elsewhere (a prior fitted after training, ``fitted_prior``); the groups below come from the model.
        """
        labels, num_samples = sample_request(self.num_classes, labels, num_samples, temperature, self.decoder.h0.device)
        check_top(top, num_samples, math.prod(self.group_shapes[0]))
        params, _ = self.decoder(labels, num_samples, temperature=temperature, top=top)
        return decoded_images(self.likelihood, self._unpad(params), mean)
