"""What several benchmarks share, written once: their records, chapter 4's race and its contenders, judged samples.

Not a benchmark itself. A script run as ``python benchmarks/NAME.py`` has ``benchmarks/`` first on its path, so
``from common import ...`` finds this file; the tests find it through pytest's ``pythonpath`` (pyproject.toml).

- Records: ``start_record`` takes the provenance before any work (the commit a run starts from) and
  ``finish_record`` adds the wall time and the figures; ``record_at_end`` takes it once the work is done;
  ``write_record`` writes either; ``shipped_provenance`` is the part a shipped model carries.
- Chapter 4's race: ``contenders`` (the single-latent conv CVAE and the hierarchy, each a ``Contender``),
  ``race`` (train one for a budget of minutes, with a test curve; ``RaceSettings`` says how) and ``diagnosis``.
- Judged samples: ``draw_and_judge`` and ``judged_accuracy`` (the judge's verdict on seeded prior samples),
  ``chosen_on_one_set`` (a temperature or a prior chosen on one set of samples, to be judged on another) and
  ``save_sample_grid`` (the first samples of each class, a row per class).
"""

import argparse
import json
import time
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures go to files; a machine without a display has no other backend
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.utils import save_image  # noqa: E402

from cvaelib import data, plots  # noqa: E402
from cvaelib.checkpoint import read_checkpoint, refuse_another_run  # noqa: E402
from cvaelib.hierarchical import HierarchicalConfig  # noqa: E402
from cvaelib.judge import judge_samples  # noqa: E402
from cvaelib.losses import bits_per_dim  # noqa: E402
from cvaelib.models import ModelConfig, build_model  # noqa: E402
from cvaelib.provenance import provenance  # noqa: E402
from cvaelib.recipes import HIERARCHICAL, default_recipe  # noqa: E402
from cvaelib.remedies import RemedyConfig, RemedyLoss, group_kls  # noqa: E402
from cvaelib.train import SpeedConfig, TrainConfig, ema_of, evaluate_loss, fit, seed_everything  # noqa: E402

CIFAR10_DATA = "CIFAR-10 training split of the offline copy: 25,000 images (half of the real one), decoded from JPEG"
CIFAR10_DIMS = 3 * 32 * 32  # the pixels of one image, over which bits/dim are counted
# A choice (of a temperature, of a prior) is made on samples drawn with one seed and its figure judged on samples
# drawn with another: judged on the samples that chose it, the best of several would look better than it is.
CHOOSING_SEED, JUDGING_SEED = 0, 1


# --- records ---------------------------------------------------------------------------------------------------


def settings_of(args: argparse.Namespace) -> dict:
    """The command line's settings for a record: every option except the folders and files it writes to (they say
    where the figures went, not what they are)."""
    return {k: v for k, v in vars(args).items() if not isinstance(v, Path)}


def start_record(args: argparse.Namespace, profile: str) -> dict:
    """Make the output folders (``args.runs``, the parent of ``args.out``); the provenance of a CIFAR-10 run, taken
    before any work (the commit it starts from). ``finish_record`` completes it."""
    args.runs.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    return provenance(0.0, settings_of(args), profile=profile, data=CIFAR10_DATA)


def finish_record(source: dict, began: float, figures: dict) -> dict:
    """The record of a run whose provenance ``source`` was taken at its start (``start_record``): with the wall time
    since ``began`` (a ``time.time()`` value) and the ``figures``, in the order given, after the provenance."""
    # source already holds "wall_seconds" (0.0): it keeps its place among the provenance's keys
    return {**source, **figures, "wall_seconds": round(time.time() - began, 1)}


def record_at_end(args: argparse.Namespace, began: float, **figures) -> dict:
    """The record of a benchmark whose provenance is taken once its work is done: the wall time since ``began``, the
    command line's settings, the torch threads it ran with, then the ``figures``."""
    return provenance(
        time.time() - began, settings_of(args), profile="benchmark", threads=torch.get_num_threads(), **figures
    )


def write_record(path: Path, record: dict) -> None:
    """Write a record as indented JSON (one key a line: a re-recorded figure shows as a one-line diff)."""
    path.write_text(json.dumps(record, indent=1) + "\n")


def mnist_to_ship(subset: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MNIST's training images and labels (``subset`` per class, or all) and its test images and labels: what a
    shipped MNIST model trains and is measured on."""
    images, labels = data.load("mnist", "train")
    if subset is not None:
        images, labels = data.stratified_subset(images, labels, subset)
    return images, labels, *data.load("mnist", "test")


def shipped_provenance(source: dict) -> dict:
    """The part of a record's provenance that a shipped model carries in its manifest entry."""
    return {k: source[k] for k in ("commit", "date", "device", "torch")}


# --- chapter 4's race -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    """What a model of the race trains with: its model, remedy and optimisation configurations and batch size."""

    model: ModelConfig | HierarchicalConfig
    remedies: RemedyConfig
    train: TrainConfig
    batch_size: int

    def as_record(self) -> dict:
        """The four settings as a record gives them."""
        model, remedies, train = asdict(self.model), asdict(self.remedies), asdict(self.train)
        return {"model": model, "remedies": remedies, "train": train, "batch_size": self.batch_size}


def contenders(size: str = "small") -> dict[str, Contender]:
    """The race's two models by name, with the command line's defaults; ``size``: the hierarchy's size preset.

    The single-latent conv CVAE gets the hierarchical model's likelihood and learning-rate warm-up, so
    that only the latents differ.
    """
    single, hierarchical = default_recipe("cifar10"), default_recipe("cifar10", "hierarchical")
    single_model = replace(single.model, likelihood="logistic_mixture")
    single_optim = replace(single.train, warmup_steps=HIERARCHICAL.train.warmup_steps)
    return {
        "single_latent": Contender(single_model, single.remedies, single_optim, single.batch_size),
        "hierarchical": Contender(
            hierarchical.model.resized(size), hierarchical.remedies, hierarchical.train, hierarchical.batch_size
        ),
    }


@dataclass(frozen=True)
class RaceSettings:
    """How a contender races: its budget, where its checkpoint goes, its seed and its device."""

    minutes: float  # training minutes at most
    eval_every: float  # training minutes between two points of the test curve
    runs: Path  # the folder of its checkpoint (<name>.pt) and its curve (<name>.json)
    num_epochs: int | None = None  # the planned length (a long one compiles: SpeedConfig.default); None: the minutes
    seed: int = 0  # seeds the weights, the batches and the noise
    deadline: float | None = None  # a time.monotonic() value after which no new eval_every chunk starts
    device: str = "cpu"  # where it trains


def evaluate_point(model: nn.Module, loss: RemedyLoss, test_batches: data.Batches, device: str) -> dict:
    """Test bits/dim (the true negative ELBO, whatever the remedy) and, for a hierarchy, the KL of each group."""
    parts = evaluate_loss(model, loss, test_batches, device)
    point = {"test_bits_per_dim": round(bits_per_dim(parts["nelbo"], CIFAR10_DIMS), 4)}
    kls = group_kls(parts)
    if kls:
        point["test_kl_groups_nats"] = [round(k, 2) for k in kls]
    return point


def race(
    name: str,
    contender: Contender,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_batches: data.Batches,
    settings: RaceSettings,
) -> tuple[dict, nn.Module | None]:
    """Train a contender for ``settings.minutes`` of training time (or ``settings.num_epochs``, whichever ends
    first); its state (seconds, and a curve of test bits/dim and KL per group at every ``settings.eval_every``
    minutes) and model.

    Each ``fit`` call trains ``eval_every`` minutes and saves the checkpoint; the next one resumes from it.
    With ``settings.deadline``, no new ``eval_every`` chunk starts after it: then the state has ``finished`` False and
    the model is None, and calling again goes on. Both models train with the speed switches of ``--arch
    hierarchical`` on ``settings.device`` (they change how fast, not what; ``torch.compile`` only for a planned
    ``settings.num_epochs`` long enough) and an average of the weights (EMA).
    """
    optim = replace(contender.train, seed=settings.seed)
    seed_everything(settings.seed)
    model = build_model(contender.model).to(settings.device)  # a finished run is only loaded: fit never moves it
    batches = data.Batches(train_images, train_labels, contender.batch_size, seed=settings.seed)
    checkpoint, log = settings.runs / f"{name}.pt", settings.runs / f"{name}.json"
    # "batch", not "batch_size": the key the checkpoints of earlier runs hold, which a resumed run must match
    meta = {
        "model": asdict(contender.model),
        "remedies": asdict(contender.remedies),
        "train": asdict(optim),
        "batch": contender.batch_size,
    }
    if checkpoint.exists():  # another setting's run under this name is refused, finished or not
        refuse_another_run(read_checkpoint(checkpoint), meta, checkpoint, "--runs folder")
    fresh = {"seconds": 0.0, "curve": [], "done": False, "threads": torch.get_num_threads()}
    state = {**fresh, **json.loads(log.read_text())} if log.exists() and checkpoint.exists() else fresh
    loss = RemedyLoss(contender.remedies, steps_per_epoch=len(batches))
    ema = ema_of(model, HIERARCHICAL.ema)
    max_epochs = settings.num_epochs or 10_000  # without a planned length, the minutes end the run
    planned = None if settings.num_epochs is None else settings.num_epochs * len(batches)
    speed = SpeedConfig.default("hierarchical", settings.device, planned, settings.minutes)
    state["speed"] = asdict(speed)  # this process's switches (a resumed run decides again)

    while not (state["done"] or state["seconds"] >= 60 * settings.minutes - 1):  # the epochs or the minutes spent
        if settings.deadline is not None and time.monotonic() > settings.deadline:
            return {**state, "finished": False}, None
        start = time.monotonic()
        max_minutes = min(settings.eval_every, settings.minutes - state["seconds"] / 60)
        history = fit(
            model,
            loss,
            batches,
            max_epochs,
            config=optim,
            checkpoint=checkpoint,
            meta=meta,
            progress=False,
            max_minutes=max_minutes,
            device=settings.device,
            speed=speed,
            ema=ema,
        )
        state["done"] = len(history) >= max_epochs
        state["seconds"] += time.monotonic() - start
        saved = torch.load(checkpoint, weights_only=True, map_location="cpu")
        epochs = saved["epoch"] + (saved["partial"]["steps"] / len(batches) if saved.get("partial") else 0.0)
        point = {"minutes": round(state["seconds"] / 60, 2), "epochs": round(epochs, 3)}
        state["curve"].append({**point, **evaluate_point(ema.module.eval(), loss, test_batches, settings.device)})
        log.with_suffix(".tmp").write_text(json.dumps(state))
        log.with_suffix(".tmp").replace(log)  # whole or not at all: another process may read it (batch_size.py)
        print(name, state["curve"][-1], flush=True)
    if checkpoint.exists():  # the weights at the end of training (also for a benchmark whose budget was spent)
        saved = torch.load(checkpoint, weights_only=True, map_location=settings.device)
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        # updates the guard skipped for a huge gradient, in each epoch: a run that skips them all has stopped learning
        state["skipped_updates_per_epoch"] = [h.get("skipped_updates", 0) for h in saved["history"]]
    state["trained_weights"] = evaluate_point(model.eval(), loss, test_batches, settings.device)  # without the average
    return {**state, "finished": True}, ema.module.eval()


def diagnosis(model: nn.Module, d: dict, test_batches: data.Batches, out_png: Path) -> dict:
    """The ``diagnose`` report in figures, and for a hierarchy the figure that draws one group at a time from
    its prior (``plots.group_resampling``, on the first 8 test images), saved to ``out_png``."""
    record = {
        "images": test_batches.images.shape[0],
        "group_shapes": getattr(model, "group_shapes", None),  # (channels, height, width) of each group
        "verdict": d["verdict"],
        "evidence": d["evidence"],
        "active_units": d["active_units"],
        "latent_dim": d["latent_dim"],
        "decoder_sensitivity": round(d["decoder_sensitivity"], 4),
        # I(x; z | y) for one group; None for a hierarchy, whose groups give I(z_g; x, z_<g | y) each
        "mutual_information_nats": None if d["mutual_information"] is None else round(d["mutual_information"], 3),
        "groups": [{k: round(v, 3) if isinstance(v, float) else v for k, v in g.items()} for g in d["groups"]],
    }
    if len(d["groups"]) > 1:
        x, y = (t[:8] for t in next(iter(test_batches)))
        fig = plots.group_resampling(model, x, y)
        fig.savefig(out_png, bbox_inches="tight", dpi=120)
        plt.close(fig)
        record["resampling_png"] = out_png.name
    return record


# --- judged samples ---------------------------------------------------------------------------------------------


def draw_and_judge(
    judge: nn.Module, sample: Callable[[torch.Tensor], torch.Tensor], per_class: int, seed: int = 0
) -> tuple[dict, torch.Tensor]:
    """The judge's verdict (``judge.judge_samples``) on ``per_class`` samples per class, class after class, drawn
    by ``sample(labels)`` right after seeding everything with ``seed``; and the samples (on the CPU).

    Seeded here, so that every model and temperature is judged on the same noise, whatever ran before."""
    labels = torch.arange(10).repeat_interleave(per_class)
    seed_everything(seed)
    samples = sample(labels).cpu()
    return judge_samples(judge, samples, labels), samples


def judged_accuracy(
    judge: nn.Module, sample: Callable[[torch.Tensor], torch.Tensor], per_class: int, seed: int = 0
) -> float:
    """How often the judge names the class that ``sample`` was asked for (``draw_and_judge``)."""
    return draw_and_judge(judge, sample, per_class, seed)[0]["accuracy"]


def chosen_on_one_set(
    judge: nn.Module, samplers: dict[Hashable, Callable[[torch.Tensor], torch.Tensor]], per_class: int
) -> tuple[dict, Hashable]:
    """The judged accuracy of each of ``samplers`` (a temperature's, a prior's) on a first set of samples (seed
    ``CHOOSING_SEED``), and the key of the best. Give the best's figure from another set, ``judged_accuracy(...,
    seed=JUDGING_SEED)``: the set that chose it would flatter it."""
    choosing = {k: judged_accuracy(judge, sample, per_class, CHOOSING_SEED) for k, sample in samplers.items()}
    return choosing, max(choosing, key=choosing.get)


def first_of_each_class(samples: torch.Tensor, per_class: int, n: int) -> torch.Tensor:
    """The first ``n`` of each class's ``per_class`` samples (``samples`` ordered class after class), in that order."""
    return samples.reshape(10, per_class, *samples.shape[1:])[:, :n].flatten(0, 1)


def save_sample_grid(samples: torch.Tensor, per_class: int, png: Path) -> None:
    """A grid of the first 8 samples of each class, a row per class, saved to ``png``."""
    save_image(first_of_each_class(samples, per_class, 8), png, nrow=8, padding=1, pad_value=1.0)
