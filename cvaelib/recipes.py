"""What ``python -m cvaelib train`` trains: a ``Recipe`` of configurations, and each dataset's default one.

A recipe holds the model's configuration, the remedies, the optimisation and the batches. Each configuration
checks its own values; the recipe checks the combinations (free bits on groups that add up to the latent, the
sigma-VAE on a Gaussian decoder, ...), so that a bad combination is refused before any work starts. The command
line makes its options from these fields (``cli``), and the benchmarks start from the same defaults.
"""

from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace

from . import data
from .hierarchical import HierarchicalConfig
from .models import CONFIGS, ModelConfig
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
    batch_size: int = field(default=128, metadata={"help": "images in each training step"})
    num_epochs: int = field(default=10, metadata={"help": "passes over the training images"})
    ema: float | None = field(
        default=None, metadata={"help": "test and sample with an average of the weights of this decay (VDVAE)"}
    )

    def __post_init__(self):
        for name in ("batch_size", "num_epochs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"ema must be a number in (0, 1), got {self.ema!r}")
        self.model.check_remedies(self.remedies)  # each model its own combinations: free bits' groups, balancing
        if self.remedies.optimal_sigma and self.model.likelihood != "gaussian":
            raise ValueError(f"optimal_sigma needs the likelihood 'gaussian', not {self.model.likelihood!r}")

    def with_overrides(self, overrides: dict) -> "Recipe":
        """This recipe with each field in ``overrides`` (a field's name -> its value, in any of the recipe's
        configurations) set; ``size`` picks that preset's fields first, and a field given explicitly overrides the
        preset's. A field of another architecture's model is refused, naming it (a ValueError)."""
        own, any_model = {f.name for f in fields(self.model)}, {f.name for c in CONFIGS.values() for f in fields(c)}
        misplaced = sorted((set(overrides) - own) & any_model)  # a field of another architecture's model
        if misplaced:
            name, mine = misplaced[0], self.model.arch
            archs = " or ".join(sorted(a for a, c in CONFIGS.items() if name in {f.name for f in fields(c)}))
            raise ValueError(f"{name} is not an option of --arch {mine}; it is one of --arch {archs}")

        def pick(config, **parts):
            given = {f.name: overrides[f.name] for f in fields(config) if f.name in overrides}
            return replace(config, **{**parts, **given})

        model = self.model.resized(overrides["size"]) if "size" in overrides else self.model
        return pick(self, model=pick(model), remedies=pick(self.remedies), train=pick(self.train))

    def overrides(self, base: "Recipe") -> dict:
        """The fields (name -> value) that make ``base`` into this recipe: ``base.with_overrides`` of them is this
        recipe (chapter 4 prints the commands of its runs from them). A changed ``size`` compares the other fields
        with that size's preset."""
        size = {k: v for k, v in _changed(self.model, base.model).items() if k == "size"}
        if size:
            base = replace(base, model=base.model.resized(size["size"]))
        parts = ((self.model, base.model), (self.remedies, base.remedies), (self.train, base.train), (self, base))
        return size | {k: v for config, default in parts for k, v in _changed(config, default).items()}

    def meta(self, dataset: str, subset: int | None = None) -> dict:
        """What ``train`` stores in a checkpoint of this recipe on ``dataset`` (``subset``: ``--subset``'s images per
        class): a run resumes only from a checkpoint that holds the same, and chapter 4 loads one only then."""
        train = {**asdict(self.train), "batch_size": self.batch_size, "subset": subset, "ema": self.ema}
        return {"dataset": dataset, "model": asdict(self.model), "remedies": asdict(self.remedies), "train": train}


def _changed(config, default) -> dict:
    """The fields of ``config`` (not the configurations it holds) whose values differ from ``default``'s."""
    changed = {
        f.name: getattr(config, f.name) for f in fields(config) if getattr(config, f.name) != getattr(default, f.name)
    }
    return {k: v for k, v in changed.items() if not is_dataclass(v)}


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
    HierarchicalConfig.from_size("small", likelihood="logistic_mixture"),
    RemedyConfig(schedule="linear", warmup=1.0),
    TrainConfig(lr=1e-3, clip_grad=2e5, skip_grad_norm=2e6, warmup_steps=200),
    batch_size=32,
    num_epochs=30,
    ema=0.999,
)

ARCH_DEFAULTS = {HIERARCHICAL.model.arch: HIERARCHICAL}  # architectures with a recipe of their own, on any dataset


def default_recipe(dataset: str, arch: str | None = None, conditional: bool = True) -> Recipe:
    """What ``train --dataset D [--arch A] [--model vae]`` trains with no other option (the benchmarks start here).

    A VAE (``conditional=False``) has no label and the standard prior N(0, I).
    """
    if dataset not in DEFAULTS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(DEFAULTS)}")
    recipe = ARCH_DEFAULTS.get(arch) or DEFAULTS[dataset]
    model = replace(recipe.model, image_shape=data.image_shape(dataset))
    if arch is not None and arch != model.arch:
        model = replace(model, arch=arch)
    if not conditional:
        model = model.unconditional()
    return replace(recipe, model=model)
