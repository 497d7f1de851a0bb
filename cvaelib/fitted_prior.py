"""A prior fitted after training: per class, a density fitted to the codes the encoder uses (chapter 3).

A CVAE's learned prior p(z|y) is a diagonal Gaussian per class, trained with the model. The codes of a class's
images, the aggregate posterior q(z|y) = (1/N_y) sum_n q(z|x_n, y), need not look like it: they are correlated,
and where the prior puts mass but no code lies (its "hole", Hoffman and Johnson 2016) the decoder was never trained,
so samples drawn there are blurred or of no class. Fitting a density to the codes once training is done puts the
prior where they are (Ghosh et al. 2020 fit a Gaussian mixture; Dai and Wipf 2019 a second VAE):

- ``components=1``: one full-covariance Gaussian per class with the aggregate posterior's mean and covariance
  (the covariance of the posterior means plus their mean variance), in closed form;
- ``components=K``: a mixture of K full-covariance Gaussians per class (scikit-learn's ``GaussianMixture``, by EM),
  fitted to one draw z ~ q(z|x_n, y) per image.

The decoder is left as it is. A ``FittedPrior`` is tensors only (``state``), so that it is stored in a checkpoint and
read back with ``torch.load(weights_only=True)``. For a hierarchy it is fitted to the top latent group, whose
prior depends on the label alone; the groups below are still drawn from the model.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from .checkpoint import SavedRun
from .evaluate import gather_groups
from .interface import check_temperature

JITTER = 1e-6  # added to every variance before the Cholesky factor: a code dimension that never moves stays valid


@dataclass(frozen=True)
class FittedPrior:
    """Per class c, a mixture of K full-covariance Gaussians over the (top) latent group's D dimensions."""

    weights: torch.Tensor  # (C, K) mixture weights of each class, each row summing to 1
    means: torch.Tensor  # (C, K, D)
    scale_tril: torch.Tensor  # (C, K, D, D) lower-triangular Cholesky factors of the covariances

    def __post_init__(self):
        c, k = self.weights.shape
        if self.means.dim() != 3 or self.means.shape[:2] != (c, k):
            raise ValueError(f"means must be (C, K, D) = ({c}, {k}, D), got {tuple(self.means.shape)}")
        d = self.means.shape[2]
        if tuple(self.scale_tril.shape) != (c, k, d, d):
            shape = tuple(self.scale_tril.shape)
            raise ValueError(f"scale_tril must be (C, K, D, D) = ({c}, {k}, {d}, {d}), got {shape}")

    @property
    def num_classes(self) -> int:
        return self.weights.shape[0]

    @property
    def components(self) -> int:
        return self.weights.shape[1]

    @property
    def latent_dim(self) -> int:
        return self.means.shape[2]

    def distribution(self, y: torch.Tensor) -> MixtureSameFamily:
        """p_fitted(z | y) for each label of ``y`` (B,): a batch of B mixtures over D dimensions."""
        self._check_labels(y)
        y = y.to(self.weights.device).long()
        components = MultivariateNormal(self.means[y], scale_tril=self.scale_tril[y])  # batch (B, K), event (D,)
        return MixtureSameFamily(Categorical(probs=self.weights[y]), components)

    def log_prob(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p_fitted(z | y), (B,), for codes z (B, D) and labels y (B,)."""
        return self.distribution(y).log_prob(z.to(self.means))

    def sample(self, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """z (N, D) for each label (N,): a component by its weight, then its mean plus ``temperature`` times its
        scale times standard normal noise (1: the fitted density itself; 0: the chosen component's mean)."""
        check_temperature(temperature)
        self._check_labels(labels)
        y = labels.to(self.weights.device).long()
        k = Categorical(probs=self.weights[y]).sample()  # (N,) one component per sample
        eps = torch.randn(len(y), self.latent_dim, 1, device=self.means.device, dtype=self.means.dtype)
        return self.means[y, k] + temperature * (self.scale_tril[y, k] @ eps).squeeze(-1)  # (N, D)

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors only: what a checkpoint stores (``from_state`` reads it back)."""
        return {"weights": self.weights, "means": self.means, "scale_tril": self.scale_tril}

    @classmethod
    def from_state(cls, state: dict) -> "FittedPrior":
        missing = {"weights", "means", "scale_tril"} - set(state)
        if missing:
            raise ValueError(f"a fitted prior needs weights, means and scale_tril; this one lacks {sorted(missing)}")
        return cls(state["weights"], state["means"], state["scale_tril"])

    def to(self, device: torch.device | str) -> "FittedPrior":
        return FittedPrior(*(t.to(device) for t in (self.weights, self.means, self.scale_tril)))

    def _check_labels(self, y: torch.Tensor) -> None:
        if y.dim() != 1 or torch.is_floating_point(y):
            raise TypeError(f"labels must be a 1-d tensor of ints in [0, {self.num_classes}), got {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}), got {int(y.min())} to {int(y.max())}")


@torch.no_grad()
def top_group_codes(model: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q(z|x,y) of the top (for a CVAE: the only) latent group for every image: mu, logvar (N, D), labels (N,)."""
    if not getattr(model, "num_classes", 0):
        raise ValueError("a fitted prior is per class: the model must be conditional (num_classes > 0)")
    groups, labels = gather_groups(model, batches)
    return groups[0].mu, groups[0].logvar, labels


def _gaussian(mu: torch.Tensor, var: torch.Tensor) -> tuple:
    """One component with the mean (D,) and covariance (D, D) of the mixture (1/N) sum_n N(mu_n, diag(var_n)), in
    float64: its weight (1,), mean (1, D) and Cholesky factor (1, D, D)."""
    mu, var = mu.double(), var.double()
    centred = mu - mu.mean(0)
    cov = centred.T @ centred / len(mu) + torch.diag(var.mean(0))  # law of total covariance
    jitter = JITTER * torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
    return torch.ones(1, dtype=torch.float64), mu.mean(0)[None], torch.linalg.cholesky(cov + jitter)[None]


def fit_prior(model: nn.Module, batches, components: int = 1, seed: int = 0) -> FittedPrior:
    """Fit a ``FittedPrior`` to the codes of ``batches`` (the training images): per class, one Gaussian with the
    aggregate posterior's moments (``components=1``) or a mixture of ``components`` Gaussians fitted by EM to one
    z ~ q(z|x,y) per image (scikit-learn's ``GaussianMixture``, seeded with ``seed``). On the model's device."""
    if not isinstance(components, int) or components < 1:
        raise ValueError(f"components must be a positive integer, got {components!r}")
    model.eval()
    mu, logvar, y = top_group_codes(model, batches)
    var = logvar.double().exp()
    per_class = []  # (weights (K,), means (K, D), Cholesky factors (K, D, D)) of each class
    for c in range(model.num_classes):
        mu_c, var_c = mu[y == c], var[y == c]  # (N_c, D)
        if len(mu_c) < components:
            raise ValueError(f"class {c} has {len(mu_c)} images: too few to fit {components} Gaussian(s) to")
        per_class.append(_gaussian(mu_c, var_c) if components == 1 else _mixture(mu_c, var_c, components, seed))
    return FittedPrior(*(torch.stack(t).float().to(mu.device) for t in zip(*per_class)))


def _mixture(mu: torch.Tensor, var: torch.Tensor, components: int, seed: int) -> tuple:
    """A K-component full-covariance Gaussian mixture fitted by EM to one draw from each posterior (float64)."""
    from sklearn.mixture import GaussianMixture  # only this option needs scikit-learn

    generator = torch.Generator().manual_seed(seed)
    z = mu.double().cpu() + var.cpu().sqrt() * torch.randn(mu.shape, generator=generator, dtype=torch.float64)
    gmm = GaussianMixture(components, covariance_type="full", reg_covar=JITTER, random_state=seed).fit(z.numpy())
    covariances = torch.from_numpy(gmm.covariances_)
    return torch.from_numpy(gmm.weights_), torch.from_numpy(gmm.means_), torch.linalg.cholesky(covariances)


def sample_with(
    model: nn.Module, prior: FittedPrior, labels: torch.Tensor, temperature: float = 1.0, mean: bool = False
) -> torch.Tensor:
    """Images (N,C,H,W) in [0, 1] from ``model`` with its top latent group drawn from ``prior`` at ``temperature``
    (every group of a hierarchy below it from the model's own prior, at the same temperature)."""
    device = next(model.parameters()).device
    labels = labels.to(device)
    top = prior.to(device).sample(labels, temperature)
    return model.sample(labels, temperature=temperature, mean=mean, top=top)


def store_fitted_prior(saved: SavedRun, prior: FittedPrior) -> None:
    """Add ``prior`` to the checkpoint ``saved`` (rewritten atomically; tensors only)."""
    saved.add(fitted_prior={k: t.cpu() for k, t in prior.state().items()})


def loaded_fitted_prior(model: nn.Module, path: str | Path) -> FittedPrior:
    """The fitted prior of a model read by ``checkpoint.load_checkpoint(path)``; a ValueError naming ``path`` if
    the checkpoint holds none."""
    state = model.meta.get("fitted_prior")
    if state is None:
        raise ValueError(
            f"{path} holds no fitted prior; `python -m cvaelib fit-prior --checkpoint {path}` fits one "
            "(train stores one at the end of a conditional model's run)"
        )
    return FittedPrior.from_state(state).to(next(model.parameters()).device)
