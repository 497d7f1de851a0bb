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
from .checkpoint import check_writable, load_checkpoint, read_checkpoint
from .evaluate import report
from .losses import LIKELIHOODS, bits_per_dim
from .models import ARCHITECTURES, CONDITIONINGS, CVAE, PRIORS, ModelConfig
from .remedies import RemedyConfig, RemedyLoss
from .train import SpeedConfig, TrainConfig, default_device, evaluate_loss, fit, seed_everything

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

    t = sub.add_parser("train", help="train a model; resumes if --out already holds the same model's checkpoint")
    t.add_argument("--dataset", required=True, choices=sorted(data.DATASETS))
    t.add_argument("--model", default="cvae", choices=["vae", "cvae"])
    t.add_argument("--out", required=True, type=Path, help="checkpoint path, written after every epoch")
    t.add_argument("--epochs", type=POSITIVE_INT, help="default: per dataset (mnist 25, fashion_mnist 15, cifar10 30)")
    t.add_argument(
        "--max-minutes",
        type=POSITIVE,
        help="stop cleanly after the epoch that passes M minutes of training; run the same command again to go on",
    )
    t.add_argument("--latent-dim", type=POSITIVE_INT)
    t.add_argument("--arch", choices=sorted(ARCHITECTURES))
    t.add_argument("--likelihood", choices=sorted(LIKELIHOODS))
    t.add_argument("--sigma", type=POSITIVE, help="Gaussian likelihoods (gaussian, sigma): the (initial) sigma")
    t.add_argument("--conditioning", default="concat", choices=CONDITIONINGS)
    t.add_argument("--prior", choices=PRIORS, help="a VAE always uses the standard prior")
    t.add_argument("--beta", type=NON_NEGATIVE, default=1.0, help="weight of the KL term")
    t.add_argument(
        "--schedule",
        default="constant",
        choices=["constant", "linear", "cyclical"],
        help="KL weight schedule (chapter 4)",
    )
    t.add_argument("--warmup", type=POSITIVE, default=1.0, help="epochs of the KL warm-up (or of all cycles)")
    t.add_argument("--free-bits", type=NON_NEGATIVE, help="free bits: nats each latent dimension (or group) may keep")
    t.add_argument("--group-sizes", type=POSITIVE_INT, nargs="+", help="split the latent into groups of these sizes")
    t.add_argument("--group-balance", action="store_true", help="NVAE KL balancing of the groups during warm-up")
    t.add_argument("--kl-balance", type=PROBABILITY, help="DreamerV2 KL balancing with this alpha (learned prior)")
    t.add_argument("--optimal-sigma", action="store_true", help="sigma-VAE: analytic shared sigma (Gaussian)")
    t.add_argument(
        "--batch-size", type=POSITIVE_INT, help="default: per dataset (mnist 512, fashion_mnist 512, cifar10 128)"
    )
    t.add_argument("--lr", type=POSITIVE, help="Adam's learning rate; default: per dataset (3e-3, cifar10 1e-3)")
    t.add_argument("--clip-grad", type=POSITIVE, help="clip the gradient norm to this value")
    t.add_argument("--skip-grad-norm", type=POSITIVE, help="skip updates whose gradient norm is above this (counted)")
    t.add_argument("--subset", type=POSITIVE_INT, help="train and test on this many images per class (smoke runs)")
    t.add_argument("--seed", type=NATURAL, default=0)
    t.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    t.add_argument("--data-root", help=f"dataset folder (default: ${data.ENV_VAR}, else data/ in the repository)")
    t.add_argument("--bf16", action="store_true", help="mixed precision: autocast to bfloat16")
    t.add_argument("--channels-last", action="store_true", help="channels-last layout for convolutions")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    s = sub.add_parser("sample", help="write K samples per class to an .npz")
    s.add_argument("--checkpoint", required=True, type=Path)
    s.add_argument("--n-per-class", type=POSITIVE_INT, default=10)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--seed", type=NATURAL, default=0)
    s.add_argument("--device")

    e = sub.add_parser("evaluate", help="print the test figures of a checkpoint as JSON")
    e.add_argument("--checkpoint", required=True, type=Path)
    e.add_argument("--k", type=POSITIVE_INT, default=100, help="importance samples of the IWAE bound")
    e.add_argument("--n", type=POSITIVE_INT, help="evaluate on the first N test images (default: all)")
    e.add_argument("--seed", type=NATURAL, default=0)
    e.add_argument("--device")
    e.add_argument("--data-root")
    return p


def _configs(args, parser):
    """The model, optimisation and remedy configurations of ``train``; option clashes are refused, named."""
    defaults = DEFAULTS[args.dataset]
    conditional = args.model == "cvae"

    def pick(value, key):  # `is None`, not `or`: a value of 0 is refused by the parser, never replaced
        return defaults[key] if value is None else value

    likelihood, latent_dim = pick(args.likelihood, "likelihood"), pick(args.latent_dim, "latent_dim")
    prior = pick(args.prior, "prior") if conditional else "standard"
    clashes = [
        (
            args.sigma is not None and likelihood not in ("gaussian", "sigma"),
            f"--sigma needs --likelihood gaussian or sigma (the likelihood is {likelihood})",
        ),
        (
            args.optimal_sigma and likelihood != "gaussian",
            f"--optimal-sigma needs --likelihood gaussian, not {likelihood}",
        ),
        (args.group_balance and args.group_sizes is None, "--group-balance needs --group-sizes"),
        (
            args.group_sizes is not None and sum(args.group_sizes) != latent_dim,
            f"--group-sizes {' '.join(map(str, args.group_sizes or []))} must add up to the latent size {latent_dim}",
        ),
        (
            args.kl_balance is not None and prior != "learned",
            "--kl-balance needs the learned prior (--prior learned, cvae)",
        ),
        (args.prior is not None and not conditional and args.prior != "standard", "--prior learned needs --model cvae"),
    ]
    for clash, message in clashes:
        if clash:
            parser.error(message)
    model = ModelConfig(
        image_shape=data.image_shape(args.dataset),
        num_classes=10 if conditional else 0,
        latent_dim=latent_dim,
        arch=pick(args.arch, "arch"),
        likelihood=likelihood,
        conditioning=args.conditioning,
        prior=prior,
        sigma=args.sigma,
    )
    remedies = RemedyConfig(
        beta=args.beta,
        schedule=args.schedule,
        warmup=args.warmup,
        free_bits=args.free_bits,
        group_sizes=None if args.group_sizes is None else tuple(args.group_sizes),
        group_balance=args.group_balance,
        kl_balance=args.kl_balance,
        sigma="optimal" if args.optimal_sigma else None,
    )
    optim = TrainConfig(
        lr=pick(args.lr, "lr"), seed=args.seed, clip_grad=args.clip_grad, skip_grad_norm=args.skip_grad_norm
    )
    return model, remedies, optim, pick(args.batch_size, "batch_size")


def default_settings(dataset: str) -> tuple[ModelConfig, TrainConfig, int, int]:
    """What ``python -m cvaelib train --dataset D`` trains with no other option: model, optimisation,
    batch size and epochs (``benchmarks/time_to_quality.py``)."""
    parser = _parser()
    model, _, optim, batch_size = _configs(parser.parse_args(["train", "--dataset", dataset, "--out", "-"]), parser)
    return model, optim, batch_size, DEFAULTS[dataset]["epochs"]


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
    meta = {
        "dataset": args.dataset,
        "model": asdict(model_config),
        "remedies": asdict(remedies),
        "train": {**asdict(optim), "batch_size": batch_size, "subset": args.subset},
    }
    # Everything that can be refused is refused before the data is read and any epoch runs.
    if args.out.exists():
        if read_checkpoint(args.out).get("meta") != meta:
            raise ValueError(
                f"{args.out} holds a checkpoint of a different model or setting; "
                "choose another --out, or delete it to start over"
            )
        say(f"resuming from {args.out}")
    if world.rank == 0:  # the only writer; two processes would race on the probe file
        check_writable(args.out, "--out")
    device = _train_device(args.device, world)
    with _process_group(world, device):
        images, labels = data.load(args.dataset, "train", args.data_root)
        if args.subset is not None:
            images, labels = data.stratified_subset(images, labels, args.subset, seed=args.seed)
        # Each process its shard of every epoch's permutation, in batches of its share of --batch-size.
        train_batches = data.Batches(
            images,
            labels,
            batch_size // world.size,
            device=device,
            seed=args.seed,
            rank=world.rank,
            world_size=world.size,
        )
        test_batches = _test_batches(args.dataset, args.data_root, device, per_class=args.subset)
        seed_everything(args.seed)
        model = CVAE(**asdict(model_config))
        epochs = DEFAULTS[args.dataset]["epochs"] if args.epochs is None else args.epochs
        say(f"training a {args.model} on {args.dataset} ({len(images)} images) for {epochs} epochs on {device}")
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
            speed=SpeedConfig(bf16=args.bf16, channels_last=args.channels_last, compile=args.compile),
            device=device,
            checkpoint=args.out,
            meta=meta,
            progress=not args.no_progress and world.rank == 0,
            max_minutes=args.max_minutes,
        )
    if world.rank != 0:  # the figures and the checkpoint are rank 0's
        return
    final = evaluate_loss(model, loss, test_batches, device)  # nelbo: the true negative ELBO, whatever beta
    figures = {
        "epochs": history[-1]["epoch"],
        "test_negative_elbo_nats": final["nelbo"],
        "test_reconstruction_nats": final["recon"],
        "test_kl_nats": final["kl"],
        "seconds": round(time.time() - start, 1),
    }
    if model.likelihood.discrete:
        figures["test_bits_per_dim"] = bits_per_dim(final["nelbo"], math.prod(model_config.image_shape))
    print(_json(figures))
    print(f"saved {args.out}" + (f" (epoch {figures['epochs']} of {epochs})" if figures["epochs"] < epochs else ""))


def sample(args):
    device = args.device or default_device()
    model = load_checkpoint(args.checkpoint, device)
    check_writable(args.out, "--out")
    seed_everything(args.seed)
    if model.num_classes:
        labels = torch.arange(model.num_classes).repeat_interleave(args.n_per_class)
        images = model.sample(labels.to(device))
    else:  # a VAE has no classes: 10 * K unlabelled samples, label -1
        labels = torch.full((10 * args.n_per_class,), -1)
        images = model.sample(num_samples=len(labels))
    np.savez(args.out, images=images.cpu().numpy().astype(np.float32), labels=labels.numpy().astype(np.int64))
    print(f"wrote {len(labels)} samples to {args.out}")


def evaluate(args):
    device = args.device or default_device()
    model = load_checkpoint(args.checkpoint, device)
    seed_everything(args.seed)
    batches = _test_batches(model.meta["dataset"], args.data_root, device, args.n)
    print(
        _json({"checkpoint": str(args.checkpoint), "dataset": model.meta["dataset"], **report(model, batches, args.k)})
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
