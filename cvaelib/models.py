"""Encoders, decoders and the (conditional) VAE: a VAE is a CVAE with ``num_classes=0``.

Conditioning on a label y (chapter 2) comes in two ways:
- ``"concat"``: the one-hot y is concatenated to the encoder input (tiled as extra
  channels for convolutions) and to z at the decoder input, as most references do;
- ``"add"``: the encoder gets the one-hot the same way, but the decoder gets
  z + W y, a learned projection of the label added to z.
A ``"learned"`` prior replaces N(0, I) by a label-dependent p(z|y) = N(mu_y, sigma_y^2).
"""

import math
from dataclasses import asdict, dataclass, field, is_dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .hierarchical import HierarchicalConfig, HierarchicalCVAE
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
from .structured import BaselineConfig, BaselineNet, StructuredConfig, StructuredCVAE


def _check_shape(image_shape):
    shape = tuple(image_shape)
    if shape not in {(1, 28, 28), (3, 32, 32)}:
        raise ValueError(f"image_shape must be (1, 28, 28) or (3, 32, 32), got {shape}")
    return shape


class MLPEncoder(nn.Module):
    """x (B,C,H,W) and a condition (B,K) -> mu, logvar (B,D) through two hidden layers."""

    def __init__(self, image_shape, cond_dim, latent_dim, hidden=(512, 256)):
        super().__init__()
        layers, width = [], math.prod(image_shape) + cond_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 2 * latent_dim)

    def forward(self, x, cond):
        h = torch.cat([x.flatten(1), cond], dim=1)  # (B, C*H*W + K)
        return self.head(self.body(h)).chunk(2, dim=1)


class MLPDecoder(nn.Module):
    """z (B,D) and a condition (B,K) -> likelihood parameters (B, P*C, H, W)."""

    def __init__(self, image_shape, cond_dim, latent_dim, out_channels, hidden=(256, 512)):
        super().__init__()
        self.out_shape = (out_channels, *image_shape[1:])
        layers, width = [], latent_dim + cond_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, math.prod(self.out_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, z, cond):
        return self.net(torch.cat([z, cond], dim=1)).view(-1, *self.out_shape)


def _conv_channels(image_shape):
    # 28 -> 14 -> 7 (two stride-2 convs); 32 -> 16 -> 8 -> 4 (three).
    return (32, 64) if image_shape[1] == 28 else (64, 128, 256)


class ConvEncoder(nn.Module):
    """Strided convolutions; the condition enters as constant extra input channels."""

    def __init__(self, image_shape, cond_dim, latent_dim, hidden=256):
        super().__init__()
        layers, c = [], image_shape[0] + cond_dim
        for c_out in _conv_channels(image_shape):
            # kernel 4, stride 2, padding 1 halves H and W: (B,c,H,W) -> (B,c_out,H/2,W/2)
            layers += [nn.Conv2d(c, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
            c = c_out
        self.body = nn.Sequential(*layers, nn.Flatten())
        side = image_shape[1] // 2 ** len(_conv_channels(image_shape))
        self.head = nn.Sequential(
            nn.Linear(c * side * side, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 2 * latent_dim)
        )

    def forward(self, x, cond):
        # (B,K) -> (B,K,H,W): the one-hot label tiled over the image
        maps = cond[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return self.head(self.body(torch.cat([x, maps], dim=1))).chunk(2, dim=1)


class ConvDecoder(nn.Module):
    """z and the condition -> a small feature map, then transposed convolutions up to H x W."""

    def __init__(self, image_shape, cond_dim, latent_dim, out_channels):
        super().__init__()
        channels = _conv_channels(image_shape)[::-1]
        self.side = image_shape[1] // 2 ** len(channels)
        self.fc = nn.Sequential(nn.Linear(latent_dim + cond_dim, channels[0] * self.side**2), nn.LeakyReLU(0.2))
        layers, c = [], channels[0]
        for c_out in channels[1:]:
            # kernel 4, stride 2, padding 1 doubles H and W
            layers += [nn.ConvTranspose2d(c, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
            c = c_out
        layers.append(nn.ConvTranspose2d(c, out_channels, 4, 2, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, z, cond):
        h = self.fc(torch.cat([z, cond], dim=1)).view(-1, self.body[0].in_channels, self.side, self.side)
        return self.body(h)


ARCHITECTURES = {"mlp": (MLPEncoder, MLPDecoder), "conv": (ConvEncoder, ConvDecoder)}
CONDITIONINGS = ("concat", "add")
PRIORS = ("standard", "learned")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a CVAE (chapters 1-4, ``python -m cvaelib train``); stored in checkpoints.

    ``CVAE(**asdict(config))`` rebuilds the model; every value is checked here, before any work.
    """

    image_shape: tuple[int, int, int] = field(
        default=(1, 28, 28), metadata={"help": "(C, H, W): MNIST's (1, 28, 28) or CIFAR-10's (3, 32, 32)"}
    )
    num_classes: int = field(default=10, metadata={"help": "0: a plain VAE, no label"})
    latent_dim: int = field(default=16, metadata={"help": "size of z"})
    arch: str = field(default="mlp", metadata={"help": '"mlp" or "conv"'})
    likelihood: str = field(default="bernoulli", metadata={"help": "p(x|z,y): bernoulli, gaussian, sigma or logistic"})
    conditioning: str = field(default="concat", metadata={"help": 'how the decoder gets y: "concat" or "add"'})
    prior: str = field(default="standard", metadata={"help": '"standard" N(0, I) or "learned" p(z|y)'})
    sigma: float | None = field(default=None, metadata={"help": "the (initial) sigma of a Gaussian likelihood"})

    def __post_init__(self):
        object.__setattr__(self, "image_shape", _check_shape(self.image_shape))
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative integer, got {self.num_classes!r}")
        if not isinstance(self.latent_dim, int) or self.latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {self.latent_dim!r}")
        for name, value, choices in [
            ("arch", self.arch, sorted(ARCHITECTURES)),
            ("likelihood", self.likelihood, sorted(LIKELIHOODS)),
            ("conditioning", self.conditioning, CONDITIONINGS),
            ("prior", self.prior, PRIORS),
        ]:
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of {list(choices)}")
        if self.prior == "learned" and self.num_classes == 0:
            raise ValueError("prior 'learned' is p(z|y): it needs labels (num_classes > 0, a CVAE)")
        if self.sigma is not None:
            if self.likelihood not in ("gaussian", "sigma"):
                raise ValueError(
                    f"sigma is a Gaussian likelihood's: it needs likelihood 'gaussian' or 'sigma', "
                    f"not {self.likelihood!r}"
                )
            if not (math.isfinite(self.sigma) and self.sigma > 0):
                raise ValueError(f"sigma must be positive, got {self.sigma!r}")

    def check_remedies(self, remedies) -> None:
        """Refuse remedies (a ``RemedyConfig``) this model cannot take, with a ValueError that starts with the field."""
        sizes = remedies.group_sizes
        if sizes is not None and sum(sizes) != self.latent_dim:
            raise ValueError(
                f"group_sizes {' '.join(map(str, sizes))} must add up to the latent size {self.latent_dim}"
            )
        if remedies.group_balance and sizes is None:
            raise ValueError("group_balance needs group_sizes, or a hierarchical model")
        if remedies.kl_balance is not None and self.prior != "learned":
            raise ValueError("kl_balance needs the learned prior p(z|y): prior 'learned', in a CVAE")

    def unconditional(self) -> "ModelConfig":
        """The same model without the label: a VAE, with the standard prior N(0, I)."""
        return replace(self, num_classes=0, prior="standard")


class CVAE(nn.Module):
    """Conditional VAE q(z|x,y), p(x|z,y); with ``num_classes=0`` a plain VAE (chapters 1-4).

    All arguments are plain values, checked and kept in ``self.config`` (a ``ModelConfig``) so that
    a checkpoint can rebuild the model (``build_model(model.config)``).
    """

    residual_posterior = False  # q(z|x,y) has its own mean, not the prior's plus an offset (remedies.balanced_kl)

    def __init__(
        self,
        image_shape=(1, 28, 28),
        num_classes=10,
        latent_dim=16,
        arch="mlp",
        likelihood="bernoulli",
        conditioning="concat",
        prior="standard",
        sigma=None,
    ):
        super().__init__()
        self.config = ModelConfig(image_shape, num_classes, latent_dim, arch, likelihood, conditioning, prior, sigma)
        image_shape = self.config.image_shape
        self.image_shape, self.num_classes, self.latent_dim = image_shape, num_classes, latent_dim
        self.likelihood = make_likelihood(likelihood, **({} if sigma is None else {"sigma": sigma}))
        encoder, decoder = ARCHITECTURES[arch]
        decoder_cond = num_classes if conditioning == "concat" else 0
        self.encoder = encoder(image_shape, num_classes, latent_dim)
        self.decoder = decoder(image_shape, decoder_cond, latent_dim, self.likelihood.out_channels(image_shape[0]))
        # "add": y -> W y, a learned vector per class added to z at the decoder input
        self.label_projection = nn.Embedding(num_classes, latent_dim) if conditioning == "add" and num_classes else None
        # learned prior: a mean and a log-variance per class, starting at N(0, I)
        self.prior_params = nn.Embedding(num_classes, 2 * latent_dim) if prior == "learned" else None
        if self.prior_params is not None:
            nn.init.zeros_(self.prior_params.weight)

    def one_hot(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """Check labels and one-hot them: (B,) int64 -> (B, num_classes); no label for a VAE."""
        check_labels(y, self.num_classes, len(y) if y is not None else 0)
        return None if y is None else F.one_hot(y.long(), self.num_classes).float()

    def _empty(self, batch_size, device):
        return torch.zeros(batch_size, 0, device=device)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x,y): images (B,C,H,W) in [0, 1] -> mu, logvar, each (B, latent_dim)."""
        check_images(x, self.image_shape)
        onehot = self.one_hot(y)
        return self.encoder(x, self._empty(len(x), x.device) if onehot is None else onehot)

    def prior(self, y: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """p(z|y) as (mu, logvar), or (None, None) for the standard normal N(0, I)."""
        if self.prior_params is None:
            return None, None
        return self.prior_params(y).chunk(2, dim=1)

    def decode_params(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """p(x|z,y): z (B,D) -> the likelihood's raw parameters (B, P*C, H, W)."""
        onehot = self.one_hot(y)
        if onehot is None:
            return self.decoder(z, self._empty(len(z), z.device))
        if self.label_projection is not None:
            return self.decoder(z + self.label_projection(y), self._empty(len(z), z.device))
        return self.decoder(z, onehot)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded images x_hat in [0, 1], (B,C,H,W): the mean of p(x|z,y)."""
        return self.likelihood.mean(self.decode_params(z, y))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, samples: int = 1) -> dict:
        """Encode, sample z, decode: the course's one model interface (chapters 1-5).

        Returns a dict with ``log_px`` (B,) = log p(x|z,y) and ``groups``, one ``GroupStats`` (a CVAE has
        one latent group: its mu, logvar, prior mean and log-variance and eps), which is all the ELBO, IWAE and
        the diagnostics read; and the likelihood's ``params`` and mean ``x_hat`` (reconstructions). The outputs
        are float32 even under bfloat16 autocast, so that the likelihood and the KL keep their digits (autocast
        lowers only the layers' matrix products).
        ``samples`` > 1 draws that many z per image from one encoding (the IWAE bound's K): every output is
        then that of the batch ``samples`` times over (S*B, ...), sample-major as ``repeat_batch``.
        """
        check_samples(samples)
        mu, logvar = (repeat_batch(at_least_float32(t), samples) for t in self.encode(x, y))  # (S*B, D), encoded once
        x, y = repeat_batch(x, samples), repeat_batch(y, samples)
        eps = torch.randn_like(mu)  # (S*B, D)
        z = reparameterize(mu, logvar, eps)  # (S*B, D)
        params = at_least_float32(self.decode_params(z, y))
        return {
            "log_px": self.likelihood.log_prob(params, x),
            "groups": [GroupStats(mu, logvar, *self.prior(y), eps)],
            "params": params,
            "x_hat": self.likelihood.mean(params),
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
        """Draw z from the prior and decode: float images in [0, 1], (N,C,H,W) (chapter 2).

        A CVAE takes ``labels`` (N,); a VAE takes ``num_samples``. ``temperature`` scales the prior's
        standard deviation (1: the prior itself; 0: its mean). The pixels are a sample of the likelihood
        when it has a ``sample`` (the logistic mixture), else its mean; ``mean=True`` always gives the mean.
        ``top``: the codes z (N, D) to decode, drawn elsewhere (a prior fitted after training, ``fitted_prior``).
        """
        device = next(self.parameters()).device
        labels, num_samples = sample_request(self.num_classes, labels, num_samples, temperature, device)
        check_top(top, num_samples, self.latent_dim)
        if top is None:
            eps = torch.randn(num_samples, self.latent_dim, device=device)  # (N, D)
            prior_mu, prior_logvar = self.prior(labels)
            z = temperature * eps if prior_mu is None else reparameterize(prior_mu, prior_logvar, eps, temperature)
        else:
            z = top.to(device, torch.float32)
        return decoded_images(self.likelihood, self.decode_params(z, labels), mean)


def VAE(**kwargs) -> CVAE:
    """A plain VAE: the CVAE with no label (chapter 1)."""
    return CVAE(num_classes=0, **kwargs)


# The registry of architectures: every kind of model the course builds from a configuration, by its ``arch``, the one
# place that maps one to the other. The rest of the course never asks which kind a model is: every configuration
# states its ``arch`` (the image models' also check their own remedies and know their unconditional form), and every
# model implements the interface (``interface.py``). ``MODELS`` are the image models that ``train --arch`` trains
# (chapters 1-4); ``TASK_MODELS`` are chapter 5's, which complete a digit from some of its quadrants.
MODELS = {"mlp": CVAE, "conv": CVAE, "hierarchical": HierarchicalCVAE}
CONFIGS = {"mlp": ModelConfig, "conv": ModelConfig, "hierarchical": HierarchicalConfig}
TASK_MODELS = {"structured_nn": BaselineNet, "structured_cvae": StructuredCVAE}
CONVOLUTIONAL = ("conv", "hierarchical")  # the architectures of convolutions (a channels-last layout pays)


def build_model(config: ModelConfig | HierarchicalConfig | BaselineConfig | StructuredConfig | dict) -> nn.Module:
    """The model a configuration describes: a config object, or its ``asdict`` as a checkpoint stores it."""
    fields = asdict(config) if is_dataclass(config) else dict(config)
    arch = fields.get("arch", ModelConfig.arch)
    every = {**MODELS, **TASK_MODELS}
    if arch not in every:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(every)}")
    return every[arch](**fields)
