"""The command line: ``python -m cvaelib train | sample | evaluate``."""

import argparse
import json
import math
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from . import data
from .checkpoint import SavedRun, check_writable, load_checkpoint
from .distributed import World, process_group
from .evaluate import expected_seconds, report
from .fitted_prior import fit_prior, loaded_fitted_prior, sample_with, store_fitted_prior
from .losses import bits_per_dim
from .models import MODELS, build_model
from .options import NATURAL, NON_NEGATIVE, POSITIVE, POSITIVE_INT, add_config_options, option_error, recipe_of
from .recipes import Recipe
from .remedies import RemedyLoss, group_kls
from .stopping import TrainingInterrupted
from .train import (
    SpeedConfig,
    default_device,
    ema_of,
    evaluate_loss,
    fit,
    seed_everything,
)

# evaluate's importance samples when --k is not given. Each is one decoder pass per test image, and a 32x32 colour
# image costs about ten times a 28x28 grey one: at 20, the conv CVAE's whole CIFAR-10 test set takes about 2 minutes
# on 2 cores instead of 7 to 10 at 100, and its IWAE bound is 0.013 bits/dim looser (benchmarks/evaluate_speed.py).
DEFAULT_K = {"mnist": 100, "fashion_mnist": 100, "cifar10": 20}
# Images per forward pass of evaluate's importance samples on a CPU: each pass encodes the batch once, so larger
# passes share the encoder among more samples (benchmarks/evaluate_speed.py); an accelerator takes 8192.
EVALUATE_IMAGES_PER_PASS = 4000


def _parser():
    p = argparse.ArgumentParser(prog="python -m cvaelib", description="Train, sample and evaluate (C)VAEs.")
    sub = p.add_subparsers(dest="command", required=True)
    _train_options(
        sub.add_parser("train", help="train a model; resumes if --out already holds the same model's checkpoint")
    )
    _sample_options(sub.add_parser("sample", help="write K samples per class to an .npz"))
    _fit_prior_options(
        sub.add_parser("fit-prior", help="fit a prior per class to a trained CVAE's codes; stored in its checkpoint")
    )
    _evaluate_options(sub.add_parser("evaluate", help="print the test figures of a checkpoint as JSON"))
    return p


def _train_options(t: argparse.ArgumentParser) -> None:
    """``train``'s options: the run's own, then one for each field of the configurations (``options``)."""
    t.add_argument("--dataset", required=True, choices=sorted(data.DATASETS))
    t.add_argument("--model", default="cvae", choices=["vae", "cvae"], help="a VAE has no label and prior N(0, I)")
    t.add_argument("--arch", choices=sorted(MODELS), help="default: per dataset")
    t.add_argument("--out", required=True, type=Path, help="checkpoint path, written after every epoch")
    t.add_argument(
        "--max-minutes",
        type=POSITIVE,
        help="stop cleanly after the epoch that passes M minutes of training; run the same command again to go on",
    )
    t.add_argument("--subset", type=POSITIVE_INT, help="train and test on this many images per class (smoke runs)")
    t.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    t.add_argument("--data-root", help=f"dataset folder (default: ${data.ENV_VAR}, else data/ in the repository)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_options(t)


def _sample_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--checkpoint", required=True, type=Path)
    s.add_argument("--n-per-class", type=POSITIVE_INT, default=10)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--seed", type=NATURAL, default=0)
    s.add_argument(
        "--temperature", type=NON_NEGATIVE, default=1.0, help="scale of the prior's standard deviations (0: its mean)"
    )
    s.add_argument(
        "--mean",
        action="store_true",
        help="write the decoder's means x_hat (as the chapters show them), not pixels drawn from the likelihood",
    )
    s.add_argument(
        "--prior",
        choices=["learned", "fitted"],
        help="draw z from the model's own prior, or from the prior fitted after training that the checkpoint holds "
        "(default: the fitted one when there is one)",
    )
    s.add_argument("--device")


def _fit_prior_options(f: argparse.ArgumentParser) -> None:
    f.add_argument("--checkpoint", required=True, type=Path, help="a conditional model's checkpoint; rewritten")
    f.add_argument(
        "--components",
        type=POSITIVE_INT,
        default=1,
        help="Gaussians per class: 1, the aggregate posterior's mean and covariance; more, a mixture fitted by EM",
    )
    f.add_argument("--seed", type=NATURAL, default=0)
    f.add_argument("--data-root", help=f"dataset folder (default: ${data.ENV_VAR}, else data/ in the repository)")
    f.add_argument("--device")


def _evaluate_options(e: argparse.ArgumentParser) -> None:
    e.add_argument("--checkpoint", required=True, type=Path)
    e.add_argument(
        "--k",
        type=POSITIVE_INT,
        help="importance samples of the IWAE bound (default: 100; CIFAR-10: 20, see DEFAULT_K)",
    )
    e.add_argument("--n", type=POSITIVE_INT, help="evaluate on the first N test images (default: all)")
    e.add_argument(
        "--stats-images",
        type=POSITIVE_INT,
        default=2000,
        help="active units and mutual information on the first this many test images",
    )
    e.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels-last layout for convolutions: the same figures, faster on a CPU (default: on)",
    )
    e.add_argument("--seed", type=NATURAL, default=0)
    e.add_argument("--device")
    e.add_argument("--data-root")


def _speed(args, arch: str, device: torch.device, num_steps: int) -> SpeedConfig:
    """The speed options as typed, the others from ``SpeedConfig.default`` for the model's ``arch`` and a run of
    ``num_steps`` steps within ``--max-minutes``."""
    default = SpeedConfig.default(arch, device, num_steps, args.max_minutes)
    return replace(default, **{f.name: getattr(args, f.name) for f in fields(SpeedConfig) if hasattr(args, f.name)})


def _test_batches(name, root, device, n=None, per_class=None):
    images, labels = data.load(name, "test", root)
    if n is not None:
        images, labels = images[:n], labels[:n]
    if per_class is not None:
        images, labels = data.stratified_subset(images, labels, per_class)
    return data.Batches(images, labels, 500, shuffle=False, device=device)


def _train_batches(args, recipe: Recipe, device: torch.device, world: World) -> data.Batches:
    """``train``'s training images (``--subset`` of them per class): each process its shard of every epoch's
    permutation, in batches of its share of ``--batch-size``."""
    images, labels = data.load(args.dataset, "train", args.data_root)
    seed = recipe.train.seed
    if args.subset is not None:
        images, labels = data.stratified_subset(images, labels, args.subset, seed=seed)
    batch_size = recipe.batch_size // world.size
    return data.Batches(images, labels, batch_size, device=device, seed=seed, rank=world.rank, world_size=world.size)


def train(args, parser):
    """``python -m cvaelib train``; under ``torchrun --nproc_per_node N``, one model on N processes (DDP)."""
    try:
        recipe = recipe_of(args)
    except ValueError as e:
        option_error(parser, e)
    world, batch_size, epochs = World.from_environment(), recipe.batch_size, recipe.num_epochs
    if batch_size % world.size:
        parser.error(
            f"--batch-size {batch_size} must be divisible by the {world.size} torchrun processes, "
            "which take equal shares of every batch"
        )
    say = print if world.rank == 0 else (lambda *a, **k: None)  # rank 0 speaks for all processes
    device = world.device(torch.device(args.device) if args.device else default_device())
    with process_group(world, device):
        # the one read of --out: another run's checkpoint, or a path that cannot be written, is refused here, before
        # the data is read and any epoch runs (in the process group: only rank 0 probes it for writing)
        saved = SavedRun(args.out, recipe.meta(args.dataset, args.subset), "--out")
        if saved.contents is not None:
            say(f"resuming from {args.out}")
        train_batches = _train_batches(args, recipe, device, world)
        test_batches = _test_batches(args.dataset, args.data_root, device, per_class=args.subset)
        seed_everything(recipe.train.seed)
        model = build_model(recipe.model)
        ema = None if recipe.ema is None else ema_of(model, recipe.ema)
        images = len(train_batches.labels)
        say(f"training a {args.model} on {args.dataset} ({images} images) for {epochs} epochs on {device}")
        if world.size > 1:
            say(
                f"training on {world.size} processes (torchrun, DistributedDataParallel): "
                f"{batch_size // world.size} images per process in each batch of {batch_size}"
            )
        start = time.time()
        loss = RemedyLoss(recipe.remedies, steps_per_epoch=len(train_batches))  # without remedies: the ELBO
        remaining = round((epochs - saved.epochs_done()[0]) * len(train_batches))  # steps left of the planned run
        speed = _speed(args, recipe.model.arch, device, remaining)
        if speed.compile:
            say("compiling the model first (torch.compile: minutes on a CPU, then faster steps; --no-compile skips it)")
        history = fit(
            model,
            loss,
            train_batches,
            epochs,
            test_batches=test_batches,
            config=recipe.train,
            speed=speed,
            device=device,
            checkpoint=saved,
            progress=not args.no_progress and world.rank == 0,
            max_minutes=args.max_minutes,
            ema=ema,
        )
    if world.rank != 0:  # the figures and the checkpoint are rank 0's
        return
    done, _ = saved.epochs_done()
    if done == len(history) and history and "test_nelbo" in history[-1]:
        # the last epoch's test figures, as its line printed them: one figure per run, not a second estimate
        final = {k.removeprefix("test_"): v for k, v in history[-1].items() if k.startswith("test_")}
    else:  # stopped mid-epoch: the model has moved on since the last epoch's line
        final = evaluate_loss(model if ema is None else ema.module, loss, test_batches, device)
    figures = _final_figures(model, history, done, final, time.time() - start)
    print(_json(figures))
    print(f"saved {args.out}" + (f" ({done:.3g} of {epochs} epochs)" if done < epochs else ""))
    if model.num_classes and done >= epochs:  # a finished conditional run: the prior its samples come from
        _fit_and_store_prior(model if ema is None else ema.module, train_batches.images, train_batches.labels, saved)


def _final_figures(model, history: list, done: float, final: dict, seconds: float) -> dict:
    """``train``'s closing line: the test figures of the trained model (``final``, loss parts), its epochs and time."""
    figures = {
        "epochs": round(done, 3),
        "test_negative_elbo_nats": final["nelbo"],
        "test_reconstruction_nats": final["recon"],
        "test_kl_nats": final["kl"],
        "seconds": round(seconds, 1),
    }
    if model.likelihood.discrete:
        figures["test_bits_per_dim"] = bits_per_dim(final["nelbo"], math.prod(model.image_shape))
    kl_groups = group_kls(final)
    if kl_groups:  # a hierarchical model's KL per latent group, top-down
        figures["test_kl_groups_nats"] = kl_groups
    if history and "skipped_updates" in history[-1]:
        figures["skipped_updates"] = sum(h["skipped_updates"] for h in history)
    return figures


def sample(args):
    device = args.device or default_device()
    model = load_checkpoint(args.checkpoint, device)
    use_fitted = args.prior == "fitted" or (args.prior is None and model.meta["fitted_prior"] is not None)
    prior = loaded_fitted_prior(model, args.checkpoint) if use_fitted else None  # refused, naming the file, if none
    check_writable(args.out, "--out")
    seed_everything(args.seed)
    if model.num_classes:
        labels = torch.arange(model.num_classes).repeat_interleave(args.n_per_class)
        if prior is None:
            images = model.sample(labels.to(device), temperature=args.temperature, mean=args.mean)
        else:
            images = sample_with(model, prior, labels, temperature=args.temperature, mean=args.mean)
    else:  # a VAE has no classes: 10 * K unlabelled samples, label -1
        labels = torch.full((10 * args.n_per_class,), -1)
        images = model.sample(num_samples=len(labels), temperature=args.temperature, mean=args.mean)
    np.savez(args.out, images=images.cpu().numpy().astype(np.float32), labels=labels.numpy().astype(np.int64))
    source = "the prior fitted after training" if prior is not None else "the model's own prior"
    print(f"wrote {len(labels)} samples to {args.out}, z drawn from {source}")


def fit_prior_command(args):
    """``python -m cvaelib fit-prior``: a prior per class fitted to the codes of the checkpoint's training images."""
    device = args.device or default_device()
    model = load_checkpoint(args.checkpoint, device)
    saved = SavedRun(args.checkpoint, option="--checkpoint")  # refused now if it cannot be written
    run = model.meta["train"]
    images, labels = data.load(model.meta["dataset"], "train", args.data_root)
    images, labels = data.stratified_subset(images, labels, run["subset"], seed=run["seed"])  # as it trained
    _fit_and_store_prior(model, images, labels, saved, args.components, args.seed)


def _fit_and_store_prior(model, images, labels, saved: SavedRun, components: int = 1, seed: int = 0) -> None:
    """Fit a prior per class to the codes of ``images`` and store it in the checkpoint ``saved``."""
    batches = data.Batches(images, labels, 500, shuffle=False, device=next(model.parameters()).device)
    store_fitted_prior(saved, fit_prior(model, batches, components, seed))
    print(
        f"fitted {components} full-covariance Gaussian(s) per class to the codes of {len(labels)} training images; "
        f"stored in {saved.path} (sample draws from it by default, --prior learned from the model's own)"
    )


def evaluate(args):
    device = args.device or default_device()
    model = load_checkpoint(args.checkpoint, device)
    done, planned = model.meta["epochs_done"], model.meta["num_epochs"]
    if planned is not None and done < planned:
        print(
            f"note: {args.checkpoint} stopped at {done:.3g} of {planned} epochs; these are the figures of that "
            "model (run the train command that made it again to finish it)",
            file=sys.stderr,
        )
    batches = _test_batches(model.meta["dataset"], args.data_root, device, args.n)
    k = DEFAULT_K[model.meta["dataset"]] if args.k is None else args.k
    per_pass = EVALUATE_IMAGES_PER_PASS if torch.device(device).type == "cpu" else None
    seconds = expected_seconds(model, batches, k, args.channels_last, per_pass)
    print(
        f"evaluating {len(batches.labels)} test images: the bound, and the IWAE bound with K = {k} importance "
        f"samples (each decoded, the image encoded once per pass); about {seconds / 60:.1f} minutes here "
        "(one batch timed; --k and --n make it shorter)",
        file=sys.stderr,
    )
    seed_everything(args.seed)
    print(
        _json(
            {
                "checkpoint": str(args.checkpoint),
                "dataset": model.meta["dataset"],
                "epochs": round(done, 3),
                "of_epochs": planned,
                **report(
                    model,
                    batches,
                    k,
                    stats_images=args.stats_images,
                    channels_last=args.channels_last,
                    images_per_pass=per_pass,
                ),
            }
        )
    )


def _finite(value):
    """JSON has no NaN or Infinity: a non-finite figure is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json(figures):
    return json.dumps(_finite(figures), allow_nan=False)


def main(argv=None):
    """Entry point of ``python -m cvaelib``: a problem the user can fix is one line on stderr, exit status 1."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            train(args, parser)
        else:
            {"sample": sample, "evaluate": evaluate, "fit-prior": fit_prior_command}[args.command](args)
    except (OSError, ValueError, FloatingPointError) as e:  # missing files, refused checkpoints, divergence
        sys.exit(f"error: {e}")
    except TrainingInterrupted as e:  # Ctrl-C during training: fit saved the step it ended
        sys.stderr.write(
            f"\ninterrupted at epoch {e.epoch}, step {e.step} of {e.steps_per_epoch}; checkpoint kept in "
            f"{e.checkpoint}; the same command resumes\n"
        )
        sys.exit(130)
    except KeyboardInterrupt:  # Ctrl-C outside a training step: loading data, a test pass, evaluate, sample
        resume = "; a checkpoint saved before is kept, and the same command resumes from it"
        sys.stderr.write("\ninterrupted" + (resume if args.command == "train" else "") + "\n")
        sys.exit(130)
