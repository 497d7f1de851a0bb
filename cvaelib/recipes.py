"""What ``python -m cvaelib train`` trains: a ``Recipe`` of configurations, and each dataset's default one.

A recipe holds the model's configuration, the remedies, the optimisation and the batches. Each configuration
checks its own values; the recipe checks the combinations (free bits on groups that add up to the latent, the
sigma-VAE on a Gaussian decoder, ...), so that a bad combination is refused before any work starts. The command
line makes its options from these fields (``cli``), and the benchmarks start from the same defaults.
"""

from dataclasses import asdict, dataclass, replace

from . import data
from .hierarchical import HierarchicalConfig
from .models import ModelConfig
from .remedies import RemedyConfig
from .train import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """A training run of ``python -m cvaelib train``: its model, remedies, optimisation and batches.

    Stored in every checkpoint it makes (``meta``), so that a run resumes only into the same recipe.
    """

    model: ModelConfig | HierarchicalConfig
    remedies: RemedyConfig = RemedyConfig()
    train: TrainConfig = TrainConfig()
    batch_size: int = 128  # images in each training step
    num_epochs: int = 10  # passes over the training images
    ema: float | None = None  # test and sample with an average of the weights of this decay (VDVAE)

    def __post_init__(self):
        for name in ("batch_size", "num_epochs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"ema must be a number in (0, 1), got {self.ema!r}")
        model, remedies = self.model, self.remedies
        hierarchical = isinstance(model, HierarchicalConfig)
        sizes = remedies.group_sizes
        if sizes is not None and hierarchical:
            raise ValueError("group_sizes is not an option of a hierarchical model: its latent groups are its own")
        if sizes is not None and sum(sizes) != model.latent_dim:
            raise ValueError(
                f"group_sizes {' '.join(map(str, sizes))} must add up to the latent size {model.latent_dim}"
            )
        if remedies.group_balance and sizes is None and not hierarchical:
            raise ValueError("group_balance needs group_sizes, or a hierarchical model")
        if remedies.optimal_sigma and model.likelihood != "gaussian":
            raise ValueError(f"optimal_sigma needs the likelihood 'gaussian', not {model.likelihood!r}")
        if remedies.kl_balance is not None and not hierarchical and model.prior != "learned":
            raise ValueError("kl_balance needs the learned prior p(z|y): prior 'learned', in a CVAE")

    def meta(self, dataset: str, subset: int | None = None) -> dict:
        """What ``train`` stores in a checkpoint of this recipe on ``dataset`` (``subset``: ``--subset``'s images per
        class): a run resumes only from a checkpoint that holds the same, and chapter 4 loads one only then."""
        train = {**asdict(self.train), "batch_size": self.batch_size, "subset": subset, "ema": self.ema}
        return {"dataset": dataset, "model": asdict(self.model), "remedies": asdict(self.remedies), "train": train}


def _flat(latent_dim: int, arch: str, likelihood: str, lr: float, batch_size: int, num_epochs: int) -> Recipe:
    """A CVAE with the learned prior p(z|y), the model of chapters 2-3 (image shape: set per dataset)."""
    model = ModelConfig(latent_dim=latent_dim, arch=arch, likelihood=likelihood, prior="learned")
    return Recipe(model, train=TrainConfig(lr=lr), batch_size=batch_size, num_epochs=num_epochs)


# Chosen so that prior samples are the requested class (README, "Defaults"; benchmarks/README.md, "Time to quality",
# gives the judged accuracy they reach and how long they take).
DEFAULTS = {
    "mnist": _flat(16, "mlp", "bernoulli", lr=3e-3, batch_size=512, num_epochs=45),
    "fashion_mnist": _flat(16, "conv", "bernoulli", lr=1e-3, batch_size=128, num_epochs=20),
    "cifar10": _flat(64, "conv", "logistic", lr=1e-3, batch_size=128, num_epochs=30),
}
# --arch hierarchical (chapter 4), on any dataset: a KL warm-up over the first epoch, without which every latent group
# switched off within the first hundred steps on CIFAR-10 (chapter 4); VDVAE's guards: clip the gradient norm
# (typically 1e4 to 3e4 nats early on) and skip updates 100 times that; and what a short budget needs (VDVAE): a
# learning-rate warm-up, and an average of the weights to test and sample with.
HIERARCHICAL = Recipe(
    HierarchicalConfig(size="small", likelihood="logistic_mixture"),
    RemedyConfig(schedule="linear", warmup=1.0),
    TrainConfig(lr=1e-3, clip_grad=2e5, skip_grad_norm=2e6, warmup_steps=200),
    batch_size=32,
    num_epochs=30,
    ema=0.999,
)


def default_recipe(dataset: str, arch: str | None = None, conditional: bool = True) -> Recipe:
    """What ``train --dataset D [--arch A] [--model vae]`` trains with no other option (the benchmarks start here).

    A VAE (``conditional=False``) has no label and the standard prior N(0, I).
    """
    if dataset not in DEFAULTS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DEFAULTS)}")
    recipe = HIERARCHICAL if arch == "hierarchical" else DEFAULTS[dataset]
    model = replace(recipe.model, image_shape=data.image_shape(dataset))
    if arch not in (None, "hierarchical"):
        model = replace(model, arch=arch)
    if not conditional:
        model = replace(model, num_classes=0, **({} if arch == "hierarchical" else {"prior": "standard"}))
    return replace(recipe, model=model)
