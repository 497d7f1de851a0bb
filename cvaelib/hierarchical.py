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
from dataclasses import dataclass, field, fields, replace

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

    def _prior(self, h):
        """p(z_g | z_<g, y) read from the top-down state h (B,W,r,r): its mean and log-variance (B,Z,r,r) each, an
        update of h, and the noise eps (B,Z,r,r) that draws z: drawn in both steps, so that a step draws the same
        noise whatever z it then uses."""
        Z = self.latent_channels
        prior_mu, prior_logvar, update = self.prior(h).split([Z, Z, h.shape[1]], dim=1)
        return prior_mu, soft_clamp(prior_logvar), update, torch.randn_like(prior_mu)

    def _with(self, h, update, z):
        """The next state: z (B,Z,r,r) added to h through a 1x1 convolution, then a residual block."""
        return self.block(h + update + self.z_proj(z))

    def posterior_step(self, h, activation, from_prior: bool = False):
        """Training's top-down step: z from q(z_g | x, z_<g, y), read from h (B,W,r,r) and the encoder's
        ``activation`` at this resolution (B,W,r,r); or from the prior when ``from_prior`` (group resampling).
        Returns the new h and the ``GroupStats`` (mu, logvar, prior_mu, prior_logvar, eps; (B, Z*r*r) each)."""
        prior_mu, prior_logvar, update, eps = self._prior(h)
        dmu, dlogvar = self.posterior(torch.cat([h, activation], dim=1)).chunk(2, dim=1)
        mu, logvar = prior_mu + dmu, prior_logvar + soft_clamp(dlogvar)  # NVAE's residual normal
        z = reparameterize(prior_mu, prior_logvar, eps) if from_prior else reparameterize(mu, logvar, eps)
        # (B,Z*r*r) each, at least float32 under bfloat16 autocast too: the KL keeps its digits
        stats = GroupStats(*(at_least_float32(t.flatten(1)) for t in (mu, logvar, prior_mu, prior_logvar, eps)))
        return self._with(h, update, z), stats

    def prior_step(self, h, temperature: float = 1.0, z=None):
        """Sampling's top-down step: z from p(z_g | z_<g, y) at ``temperature``, or the given ``z`` (B, Z*r*r)
        (a top group drawn elsewhere); h (B,W,r,r) -> the new h."""
        prior_mu, prior_logvar, update, eps = self._prior(h)
        if z is None:
            z = reparameterize(prior_mu, prior_logvar, eps, temperature)
        else:
            z = z.view_as(prior_mu).to(prior_mu)  # (B, Z*r*r) -> (B,Z,r,r)
        return self._with(h, update, z)


@dataclass(frozen=True, kw_only=True)
class HierarchicalConfig:
    """Everything that defines a ``HierarchicalCVAE`` (chapter 4, ``--arch hierarchical``); stored in checkpoints.

    ``HierarchicalConfig.from_size(size, **fields)`` takes the fields a preset of ``SIZES`` sets from that
    preset, unless given; the constructor takes every field, as a checkpoint stores them, so
    ``HierarchicalCVAE(**asdict(config))`` rebuilds the same model.
    """

    image_shape: tuple[int, int, int] = field(
        default=(3, 32, 32), metadata={"help": "CIFAR-10's; (1, 28, 28) is padded to 32x32 inside"}
    )
    num_classes: int = field(default=10, metadata={"help": "0: unconditional"})
    size: str = field(default="small", metadata={"help": 'the preset: "tiny" (tests), "small" (a CPU), "full" (a GPU)'})
    likelihood: str = field(default="logistic_mixture", metadata={"help": "p(x | z, y), any of losses.LIKELIHOODS"})
    num_mixtures: int = field(default=10, metadata={"help": "components of the logistic mixture"})
    widths: tuple[int, ...] = field(
        metadata={"help": "channels at each latent resolution, lowest first, then at 32x32 (default: the size's)"}
    )
    latent_channels: int = field(metadata={"help": "channels of every latent group (default: the size's)"})
    groups_per_resolution: tuple[int, ...] = field(
        metadata={"help": "latent groups at each resolution, lowest first (default: the size's)"}
    )
    blocks_per_resolution: int = field(
        metadata={"help": "residual blocks per resolution in the encoder and decoder (default: the size's)"}
    )
    arch: str = field(default="hierarchical", metadata={"help": "what ``models.build_model`` rebuilds"})

    @classmethod
    def from_size(cls, size: str = "small", **given) -> "HierarchicalConfig":
        """The preset ``size`` of ``SIZES``, with any field in ``given`` in place of the preset's."""
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
        return cls(size=size, **{**SIZES[size], **given})

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose one of {sorted(SIZES)}")
        for name in SIZES[self.size]:
            if getattr(self, name) is None:
                raise ValueError(
                    f"{name} is not set: HierarchicalConfig.from_size(size) takes it from the size's preset"
                )
        for name in ("image_shape", "widths", "groups_per_resolution"):  # lists from JSON or the command line
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.image_shape not in IMAGE_SHAPES:
            raise ValueError(f"image_shape must be (3, 32, 32) or (1, 28, 28), got {self.image_shape}")
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
        kept = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in {"size", *SIZES.get(size, ())}}
        return HierarchicalConfig.from_size(size, **kept)


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
        # level 0 (32x32) keeps the stem's width; level k > 0 changes width from level k-1's; then blocks
        widths_in = (up_first[0], *up_first[:-1])
        self.levels = nn.ModuleList(
            nn.Sequential(_change_width(a, b), *_stage(b, blocks)) for a, b in zip(widths_in, up_first, strict=True)
        )

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """x (B,C,32,32) -> {r: (B,w,r,r)} for each latent resolution r (16, 8, 4, ...)."""
        h = self.levels[0](self.stem(x))  # (B,C,32,32) -> (B,w,32,32)
        activations = {}
        for level in self.levels[1:]:
            h = level(F.avg_pool2d(h, 2))  # (B,w,2r,2r) -> (B,w',r,r)
            activations[h.shape[-1]] = h
        return activations


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
        """Learned constant -> groups, lowest resolution first -> params (B,P,32,32), and one GroupStats per group.

        With the encoder's ``activations`` ({r: (B,w,r,r)}), each group steps with its posterior (with its prior
        for the indices in ``prior_groups``); without them (sampling), each steps with its prior at
        ``temperature``, the top group with the z ``top`` (B, D_0) if given, and the stats are empty."""
        h, stats = self.h0.expand(batch_size, -1, -1, -1), []  # (1,w,r0,r0) -> (B,w,r0,r0)
        index = 0  # the group's place, top-down
        for i, groups in enumerate(self.groups):
            h = self._enter_level(h, y, i)
            for group in groups:
                if activations is None:
                    h = group.prior_step(h, temperature, top if index == 0 else None)
                else:
                    h, group_stats = group.posterior_step(h, activations[h.shape[-1]], index in prior_groups)
                    stats.append(group_stats)
                index += 1
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
        self.config = c = HierarchicalConfig.from_size(**config)
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

    def forward(self, x, y=None, samples=1):
        """Encode bottom-up, decode top-down with z from q (chapter 4).

        The course's one model interface: a dict with ``log_px`` (B,) = log p(x|z,y) and ``groups``, one
        ``GroupStats`` (mu, logvar, prior_mu, prior_logvar, eps; (B, D_g) each) per group, top-down, and
        ``params`` (B,P,H,W) and ``x_hat`` (B,C,H,W). ``samples`` > 1 runs the bottom-up pass once and the
        top-down pass for that many z per image: every output is then that of the batch ``samples`` times over
        (S*B, ...), sample-major as ``repeat_batch``.
        """
        return self._pass(x, y, samples)

    def resample(self, x, y=None, groups=()):
        """``forward``, but the groups whose indices are in ``groups`` draw z from their prior, the others from q:
        what a group holds of an image (chapter 4's figure). Their entries still report q and p, and their ``eps``
        is then the prior's noise (such a pass is for looking at, not for ``losses.log_weight``)."""
        groups = set(groups)
        if not groups <= set(range(len(self.group_shapes))):
            raise ValueError(f"groups must be group indices in [0, {len(self.group_shapes)}), got {sorted(groups)}")
        return self._pass(x, y, 1, groups)

    def _pass(self, x, y, samples, prior_groups=frozenset()):
        check_images(x, self.image_shape)
        check_labels(y, self.num_classes, len(x))
        check_samples(samples)
        encoded = self.encoder(F.pad(x, [self.pad] * 4))  # bottom-up once: {r: (B,w,r,r)}
        activations = {r: repeat_batch(a, samples) for r, a in encoded.items()}
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
