"""The command line: ``python -m cvaelib train | sample | evaluate``."""

import argparse
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import data
from .checkpoint import check_writable, load_checkpoint, read_checkpoint, trained_epochs
from .evaluate import expected_seconds, report
from .hierarchical import SIZES, HierarchicalConfig
from .losses import LIKELIHOODS, bits_per_dim
from .models import ARCHITECTURES, CONDITIONINGS, PRIORS, ModelConfig, build_model
from .remedies import RemedyConfig, RemedyLoss, group_kls
from .train import (
    SpeedConfig,
    TrainConfig,
    TrainingInterrupted,
    bf16_is_fast,
    default_device,
    ema_of,
    evaluate_loss,
    fit,
    seed_everything,
)

# Defaults chosen so that prior samples are the requested class (see README, "Defaults").
DEFAULTS = {
    # 25 epochs of batch 512 at 3e-3: >= 98 % judged within about a minute and a half of 2-core CPU
    "mnist": dict(
        arch="mlp", latent_dim=16, likelihood="bernoulli", prior="learned", epochs=25, batch_size=512, lr=3e-3
    ),
    "fashion_mnist": dict(
        arch="conv", latent_dim=16, likelihood="bernoulli", prior="learned", epochs=15, batch_size=512, lr=3e-3
    ),
    "cifar10": dict(
        arch="conv", latent_dim=64, likelihood="logistic", prior="learned", epochs=30, batch_size=128, lr=1e-3
    ),
}
# --arch hierarchical (chapter 4), on any dataset: its likelihood, batch and learning rate; a KL warm-up over the
# first epoch, without which every latent group switched off within the first hundred steps on CIFAR-10 (chapter 4);
# VDVAE's guards: clip the gradient norm (typically 1e4 to 3e4 nats early on) and skip updates 100 times that;
# and what a short budget needs (VDVAE): a learning-rate warm-up, and an average of the weights to test and sample.
HIERARCHICAL = dict(
    likelihood="logistic_mixture",
    size="small",
    epochs=30,
    batch_size=32,
    lr=1e-3,
    schedule="linear",
    warmup=1.0,
    clip_grad=2e5,
    skip_grad_norm=2e6,
    lr_warmup_steps=200,
    ema=0.999,
)


# Images per forward pass of evaluate's importance samples on a CPU: each pass encodes the batch once, so larger
# passes share the encoder among more samples (benchmarks/evaluate_speed.py); an accelerator takes 8192.
EVALUATE_IMAGES_PER_PASS = 4000


def _number(kind, test, what):
    """An argparse type: ``kind`` parsed, then refused unless ``test`` holds (argparse names the option)."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what  # shown by argparse in its messages
    return parse


POSITIVE_INT = _number(int, lambda v: v > 0, "a positive integer")
NATURAL = _number(int, lambda v: v >= 0, "a non-negative integer")
POSITIVE = _number(float, lambda v: v > 0, "a positive number")
NON_NEGATIVE = _number(float, lambda v: v >= 0, "a non-negative number")
PROBABILITY = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def _parser():
    p = argparse.ArgumentParser(prog="python -m cvaelib", description="Train, sample and evaluate (C)VAEs.")
    sub = p.add_subparsers(dest="command", required=True)
    _train_options(
        sub.add_parser("train", help="train a model; resumes if --out already holds the same model's checkpoint")
    )
    _sample_options(sub.add_parser("sample", help="write K samples per class to an .npz"))
    _evaluate_options(sub.add_parser("evaluate", help="print the test figures of a checkpoint as JSON"))
    return p


def _train_options(t: argparse.ArgumentParser) -> None:
    """``train``'s options of what it trains: the data, the model and the remedies (then the optimisation's)."""
    t.add_argument("--dataset", required=True, choices=sorted(data.DATASETS))
    t.add_argument("--model", default="cvae", choices=["vae", "cvae"])
    t.add_argument("--out", required=True, type=Path, help="checkpoint path, written after every epoch")
    t.add_argument("--epochs", type=POSITIVE_INT, help="default: per dataset (mnist 25, fashion_mnist 15, cifar10 30)")
    t.add_argument(
        "--max-minutes",
        type=POSITIVE,
        help="stop cleanly after the epoch that passes M minutes of training; run the same command again to go on",
    )
    t.add_argument("--latent-dim", type=POSITIVE_INT, help="size of z (mlp and conv)")
    t.add_argument("--arch", choices=[*sorted(ARCHITECTURES), "hierarchical"])
    t.add_argument("--size", choices=sorted(SIZES), help="--arch hierarchical: tiny, small (a CPU) or full (a GPU)")
    t.add_argument(
        "--groups-per-resolution",
        type=POSITIVE_INT,
        nargs="+",
        help="--arch hierarchical: latent groups at each resolution, lowest first (overrides --size's)",
    )
    t.add_argument("--num-mixtures", type=POSITIVE_INT, help="components of --likelihood logistic_mixture (10)")
    t.add_argument("--likelihood", choices=sorted(LIKELIHOODS))
    t.add_argument("--sigma", type=POSITIVE, help="Gaussian likelihoods (gaussian, sigma): the (initial) sigma")
    t.add_argument("--conditioning", default="concat", choices=CONDITIONINGS)
    t.add_argument("--prior", choices=PRIORS, help="a VAE always uses the standard prior")
    t.add_argument("--beta", type=NON_NEGATIVE, default=1.0, help="weight of the KL term")
    t.add_argument(
        "--schedule",
        choices=["constant", "linear", "cyclical"],
        help="KL weight schedule (chapter 4); default: constant (--arch hierarchical: linear)",
    )
    t.add_argument("--warmup", type=POSITIVE, help="epochs of the KL warm-up (or of all cycles); default 1")
    t.add_argument("--free-bits", type=NON_NEGATIVE, help="free bits: nats each latent dimension (or group) may keep")
    t.add_argument("--group-sizes", type=POSITIVE_INT, nargs="+", help="split the latent into groups of these sizes")
    t.add_argument("--group-balance", action="store_true", help="NVAE KL balancing of the groups during warm-up")
    t.add_argument("--kl-balance", type=PROBABILITY, help="DreamerV2 KL balancing with this alpha (learned prior)")
    t.add_argument("--optimal-sigma", action="store_true", help="sigma-VAE: analytic shared sigma (Gaussian)")
    _optimisation_options(t)


def _optimisation_options(t: argparse.ArgumentParser) -> None:
    """``train``'s options of how it optimises and runs: batches, learning rate, guards, seed, device, speed."""
    t.add_argument(
        "--batch-size", type=POSITIVE_INT, help="default: per dataset (mnist 512, fashion_mnist 512, cifar10 128)"
    )
    t.add_argument("--lr", type=POSITIVE, help="Adam's learning rate; default: per dataset (3e-3, cifar10 1e-3)")
    t.add_argument(
        "--lr-warmup-steps",
        type=NATURAL,
        help="raise the learning rate linearly from 0 over this many steps; default 0 (--arch hierarchical: 200)",
    )
    t.add_argument("--cosine-decay", action="store_true", help="then lower it along a cosine to 0 at the last step")
    t.add_argument(
        "--ema",
        type=_number(float, lambda v: 0 < v < 1, "a number in (0, 1)"),
        help="test and sample with an average of the weights of this decay (VDVAE); default: none "
        "(--arch hierarchical: 0.999)",
    )
    t.add_argument("--clip-grad", type=POSITIVE, help="clip the gradient norm to this value")
    t.add_argument("--skip-grad-norm", type=POSITIVE, help="skip updates whose gradient norm is above this (counted)")
    t.add_argument("--subset", type=POSITIVE_INT, help="train and test on this many images per class (smoke runs)")
    t.add_argument("--seed", type=NATURAL, default=0)
    t.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    t.add_argument("--data-root", help=f"dataset folder (default: ${data.ENV_VAR}, else data/ in the repository)")
    t.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="mixed precision: autocast to bfloat16; default: off (--arch hierarchical: on where bfloat16 is native)",
    )
    t.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="channels-last layout for convolutions; default: off (--arch hierarchical: on)",
    )
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")


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
    s.add_argument("--device")


def _evaluate_options(e: argparse.ArgumentParser) -> None:
    e.add_argument("--checkpoint", required=True, type=Path)
    e.add_argument("--k", type=POSITIVE_INT, default=100, help="importance samples of the IWAE bound")
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


def _configs(args, parser):
    """The model, optimisation and remedy configurations of ``train``; option clashes are refused, named."""
    defaults = _defaults(args)

    def pick(value, key):  # `is None`, not `or`: a value of 0 is refused by the parser, never replaced
        return defaults[key] if value is None else value

    likelihood, latent_dim = pick(args.likelihood, "likelihood"), pick(args.latent_dim, "latent_dim")
    prior = pick(args.prior, "prior") if args.model == "cvae" else "standard"
    for clash, message in _clashes(args, likelihood, latent_dim, prior):
        if clash:
            parser.error(message)
    remedies = RemedyConfig(
        beta=args.beta,
        schedule=pick(args.schedule, "schedule"),
        warmup=pick(args.warmup, "warmup"),
        free_bits=args.free_bits,
        group_sizes=None if args.group_sizes is None else tuple(args.group_sizes),
        group_balance=args.group_balance,
        kl_balance=args.kl_balance,
        sigma="optimal" if args.optimal_sigma else None,
    )
    optim = TrainConfig(
        lr=pick(args.lr, "lr"),
        seed=args.seed,
        clip_grad=args.clip_grad if args.clip_grad is not None else defaults.get("clip_grad"),
        skip_grad_norm=args.skip_grad_norm if args.skip_grad_norm is not None else defaults.get("skip_grad_norm"),
        warmup_steps=defaults.get("lr_warmup_steps", 0) if args.lr_warmup_steps is None else args.lr_warmup_steps,
        cosine_decay=args.cosine_decay,
    )
    model = _model_config(args, pick, likelihood, latent_dim, prior)
    return model, remedies, optim, pick(args.batch_size, "batch_size")


def _clashes(args, likelihood: str, latent_dim: int, prior: str) -> list[tuple[bool, str]]:
    """(clash, message) for every combination of ``train``'s options that cannot work together."""
    hierarchical = args.arch == "hierarchical"
    conditional = args.model == "cvae"
    only_hierarchical = {"--size": args.size, "--groups-per-resolution": args.groups_per_resolution}
    only_flat = {
        "--latent-dim": args.latent_dim,
        "--prior": args.prior,
        "--sigma": args.sigma,
        "--group-sizes": args.group_sizes,
    }
    return [
        *(
            (value is not None and not hierarchical, f"{name} needs --arch hierarchical")
            for name, value in only_hierarchical.items()
        ),
        *(
            (
                value is not None and hierarchical,
                f"{name} is not an option of --arch hierarchical (its latent groups are its own)",
            )
            for name, value in only_flat.items()
        ),
        (
            args.conditioning != "concat" and hierarchical,
            "--conditioning: --arch hierarchical adds the label at every resolution",
        ),
        (
            args.num_mixtures is not None and likelihood != "logistic_mixture",
            f"--num-mixtures needs --likelihood logistic_mixture (the likelihood is {likelihood})",
        ),
        (
            args.sigma is not None and likelihood not in ("gaussian", "sigma"),
            f"--sigma needs --likelihood gaussian or sigma (the likelihood is {likelihood})",
        ),
        (
            args.optimal_sigma and likelihood != "gaussian",
            f"--optimal-sigma needs --likelihood gaussian, not {likelihood}",
        ),
        (
            args.group_balance and args.group_sizes is None and not hierarchical,
            "--group-balance needs --group-sizes (or --arch hierarchical)",
        ),
        (
            args.group_sizes is not None and not hierarchical and sum(args.group_sizes) != latent_dim,
            f"--group-sizes {' '.join(map(str, args.group_sizes or []))} must add up to the latent size {latent_dim}",
        ),
        (
            args.kl_balance is not None and prior != "learned" and not hierarchical,
            "--kl-balance needs the learned prior (--prior learned, cvae)",
        ),
        (args.prior is not None and not conditional and args.prior != "standard", "--prior learned needs --model cvae"),
    ]


def _model_config(args, pick, likelihood: str, latent_dim: int, prior: str):
    """``train``'s model: a ``HierarchicalConfig`` for ``--arch hierarchical``, else a ``ModelConfig``."""
    conditional = args.model == "cvae"
    if args.arch == "hierarchical":
        return HierarchicalConfig(
            image_shape=data.image_shape(args.dataset),
            num_classes=10 if conditional else 0,
            size=pick(args.size, "size"),
            likelihood=likelihood,
            num_mixtures=10 if args.num_mixtures is None else args.num_mixtures,
            groups_per_resolution=args.groups_per_resolution,
        )
    return ModelConfig(
        image_shape=data.image_shape(args.dataset),
        num_classes=10 if conditional else 0,
        latent_dim=latent_dim,
        arch=pick(args.arch, "arch"),
        likelihood=likelihood,
        conditioning=args.conditioning,
        prior=prior,
        sigma=args.sigma,
    )


def _defaults(args) -> dict:
    """The dataset's defaults, and on top of them those of ``--arch hierarchical`` when it is chosen."""
    flat = {"schedule": "constant", "warmup": 1.0}
    return {**flat, **DEFAULTS[args.dataset], **(HIERARCHICAL if args.arch == "hierarchical" else {})}


def default_settings(dataset: str, arch: str | None = None) -> tuple:
    """What ``python -m cvaelib train --dataset D [--arch A]`` trains with no other option: the model,
    remedy and optimisation configurations, batch size and epochs (``benchmarks/``)."""
    parser = _parser()
    argv = ["train", "--dataset", dataset, "--out", "-"] + ([] if arch is None else ["--arch", arch])
    args = parser.parse_args(argv)
    model, remedies, optim, batch_size = _configs(args, parser)
    return model, remedies, optim, batch_size, _defaults(args)["epochs"]


def _ema_decay(args) -> float | None:
    """``--ema``, else the default of ``--arch hierarchical`` (0.999), else None: no average of the weights."""
    return _defaults(args).get("ema") if args.ema is None else args.ema


def default_speed(arch: str | None, device: torch.device | str) -> SpeedConfig:
    """The speed switches ``train`` uses when none is given: for ``--arch hierarchical`` bfloat16 where the
    device has native bfloat16, and channels-last, measured fastest for it (``benchmarks/hierarchy_speed.py``);
    for every other model neither."""
    hierarchical = arch == "hierarchical"
    return SpeedConfig(bf16=hierarchical and bf16_is_fast(device), channels_last=hierarchical)


def _speed(args, device: torch.device) -> SpeedConfig:
    """``--bf16``, ``--channels-last`` and ``--compile`` as given, the unset ones from ``default_speed``."""
    default = default_speed(args.arch, device)
    return SpeedConfig(
        bf16=default.bf16 if args.bf16 is None else args.bf16,
        channels_last=default.channels_last if args.channels_last is None else args.channels_last,
        compile=args.compile,
    )


def _test_batches(name, root, device, n=None, per_class=None):
    images, labels = data.load(name, "test", root)
    if n is not None:
        images, labels = images[:n], labels[:n]
    if per_class is not None:
        images, labels = data.stratified_subset(images, labels, per_class)
    return data.Batches(images, labels, 500, shuffle=False, device=device)


@dataclass(frozen=True)
class _World:
    """The processes of a ``torchrun`` launch of ``train``: one process, rank 0, without torchrun."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1


def _world() -> _World:
    """torchrun's RANK, LOCAL_RANK and WORLD_SIZE, read from the environment (``train``)."""
    env = os.environ
    return _World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def _train_device(name: str | None, world: _World) -> torch.device:
    """``--device`` (else the best available); under torchrun each process on its own GPU, cuda:LOCAL_RANK."""
    device = torch.device(name) if name else default_device()
    if world.size == 1:
        return device
    if device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    if device.type != "cpu":
        raise ValueError(f"torchrun with {world.size} processes trains on cuda or cpu, not {device.type}")
    return device


@contextmanager
def _process_group(world: _World, device: torch.device):
    """With several torchrun processes, ``train``'s process group (nccl on CUDA, gloo on the CPU).

    It is destroyed at the end, also on an error. Without torchrun (one process) there is none.
    """
    if world.size == 1:
        yield
        return
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if cuda else "gloo", rank=world.rank, world_size=world.size, **({"device_id": device} if cuda else {})
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def _train_batches(args, batch_size: int, device: torch.device, world: _World) -> data.Batches:
    """``train``'s training images (``--subset`` of them per class): each process its shard of every epoch's
    permutation, in batches of its share of ``--batch-size``."""
    images, labels = data.load(args.dataset, "train", args.data_root)
    if args.subset is not None:
        images, labels = data.stratified_subset(images, labels, args.subset, seed=args.seed)
    return data.Batches(
        images, labels, batch_size // world.size, device=device, seed=args.seed, rank=world.rank, world_size=world.size
    )


def _run_meta(args, model_config, remedies: RemedyConfig, optim: TrainConfig, batch_size: int) -> dict:
    """What ``train`` stores in its checkpoint to rebuild and resume the run. A checkpoint already at ``--out``
    must hold the same, or ``train`` refuses it (a ValueError) rather than resume another run into it."""
    meta = {
        "dataset": args.dataset,
        "model": asdict(model_config),
        "remedies": asdict(remedies),
        "train": {**asdict(optim), "batch_size": batch_size, "subset": args.subset, "ema": _ema_decay(args)},
    }
    if args.out.exists() and read_checkpoint(args.out).get("meta") != meta:
        raise ValueError(
            f"{args.out} holds a checkpoint of a different model or setting; "
            "choose another --out, or delete it to start over"
        )
    return meta


def train(args, parser):
    """``python -m cvaelib train``; under ``torchrun --nproc_per_node N``, one model on N processes (DDP)."""
    model_config, remedies, optim, batch_size = _configs(args, parser)
    world = _world()
    if batch_size % world.size:
        parser.error(
            f"--batch-size {batch_size} must be divisible by the {world.size} torchrun processes, "
            "which take equal shares of every batch"
        )
    say = print if world.rank == 0 else (lambda *a, **k: None)  # rank 0 speaks for all processes
    meta = _run_meta(args, model_config, remedies, optim, batch_size)
    if args.out.exists():  # refused before the data is read and any epoch runs
        say(f"resuming from {args.out}")
    if world.rank == 0:  # the only writer; two processes would race on the probe file
        check_writable(args.out, "--out")
    device = _train_device(args.device, world)
    with _process_group(world, device):
        train_batches = _train_batches(args, batch_size, device, world)
        test_batches = _test_batches(args.dataset, args.data_root, device, per_class=args.subset)
        seed_everything(args.seed)
        model = build_model(**asdict(model_config))
        ema = None if meta["train"]["ema"] is None else ema_of(model, meta["train"]["ema"])
        epochs = _defaults(args)["epochs"] if args.epochs is None else args.epochs
        images = len(train_batches.labels)
        say(f"training a {args.model} on {args.dataset} ({images} images) for {epochs} epochs on {device}")
        if world.size > 1:
            say(
                f"training on {world.size} processes (torchrun, DistributedDataParallel): "
                f"{batch_size // world.size} images per process in each batch of {batch_size}"
            )
        start = time.time()
        loss = RemedyLoss(remedies, steps_per_epoch=len(train_batches))  # without remedies: the ELBO
        history = fit(
            model,
            loss,
            train_batches,
            epochs,
            test_batches=test_batches,
            config=optim,
            speed=_speed(args, device),
            device=device,
            checkpoint=args.out,
            meta=meta,
            progress=not args.no_progress and world.rank == 0,
            max_minutes=args.max_minutes,
            ema=ema,
        )
    if world.rank != 0:  # the figures and the checkpoint are rank 0's
        return
    done, _ = trained_epochs(read_checkpoint(args.out))
    if done == len(history) and history and "test_nelbo" in history[-1]:
        # the last epoch's test figures, as its line printed them: one figure per run, not a second estimate
        final = {k.removeprefix("test_"): v for k, v in history[-1].items() if k.startswith("test_")}
    else:  # stopped mid-epoch: the model has moved on since the last epoch's line
        final = evaluate_loss(model if ema is None else ema.module, loss, test_batches, device)
    figures = _final_figures(model, history, done, final, time.time() - start)
    print(_json(figures))
    print(f"saved {args.out}" + (f" ({done:.3g} of {epochs} epochs)" if done < epochs else ""))


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
    check_writable(args.out, "--out")
    seed_everything(args.seed)
    if model.num_classes:
        labels = torch.arange(model.num_classes).repeat_interleave(args.n_per_class)
        images = model.sample(labels.to(device), temperature=args.temperature, mean=args.mean)
    else:  # a VAE has no classes: 10 * K unlabelled samples, label -1
        labels = torch.full((10 * args.n_per_class,), -1)
        images = model.sample(num_samples=len(labels), temperature=args.temperature, mean=args.mean)
    np.savez(args.out, images=images.cpu().numpy().astype(np.float32), labels=labels.numpy().astype(np.int64))
    print(f"wrote {len(labels)} samples to {args.out}")


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
    per_pass = EVALUATE_IMAGES_PER_PASS if torch.device(device).type == "cpu" else None
    seconds = expected_seconds(model, batches, args.k, args.channels_last, per_pass)
    print(
        f"evaluating {len(batches.labels)} test images: the bound, and the IWAE bound with K = {args.k} importance "
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
                    args.k,
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
            {"sample": sample, "evaluate": evaluate}[args.command](args)
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
