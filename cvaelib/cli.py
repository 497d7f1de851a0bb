"""The command line: ``python -m cvaelib train | sample | evaluate``."""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import data
from .checkpoint import load_checkpoint
from .evaluate import report
from .losses import LIKELIHOODS, bits_per_dim
from .models import ARCHITECTURES, CONDITIONINGS, PRIORS, CVAE
from .remedies import RemedyLoss
from .train import default_device, evaluate_loss, fit, seed_everything

# Defaults chosen so that prior samples are the requested class (see README, "Defaults").
DEFAULTS = {
    "mnist": dict(arch="mlp", latent_dim=16, likelihood="bernoulli", prior="learned", epochs=20),
    "fashion_mnist": dict(arch="conv", latent_dim=16, likelihood="bernoulli", prior="learned", epochs=20),
    "cifar10": dict(arch="conv", latent_dim=64, likelihood="logistic", prior="learned", epochs=30),
}


def _parser():
    p = argparse.ArgumentParser(prog="python -m cvaelib", description="Train, sample and evaluate (C)VAEs.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model; resumes if --out already holds the same model's checkpoint")
    t.add_argument("--dataset", required=True, choices=sorted(data.DATASETS))
    t.add_argument("--model", default="cvae", choices=["vae", "cvae"])
    t.add_argument("--out", required=True, type=Path, help="checkpoint path, written after every epoch")
    t.add_argument("--epochs", type=int, help="default: per dataset (mnist 20, fashion_mnist 20, cifar10 30)")
    t.add_argument("--latent-dim", type=int)
    t.add_argument("--arch", choices=sorted(ARCHITECTURES))
    t.add_argument("--likelihood", choices=sorted(LIKELIHOODS))
    t.add_argument("--sigma", type=float, help="Gaussian likelihoods: the (initial) sigma")
    t.add_argument("--conditioning", default="concat", choices=CONDITIONINGS)
    t.add_argument("--prior", choices=PRIORS, help="a VAE always uses the standard prior")
    t.add_argument("--beta", type=float, default=1.0, help="weight of the KL term")
    t.add_argument("--schedule", default="constant", choices=["constant", "linear", "cyclical"],
                   help="KL weight schedule (chapter 4)")
    t.add_argument("--warmup", type=float, default=1.0, help="epochs of the KL warm-up (or of all cycles)")
    t.add_argument("--free-bits", type=float, help="free bits: nats each latent dimension (or group) may keep")
    t.add_argument("--group-sizes", type=int, nargs="+", help="split the latent into groups of these sizes")
    t.add_argument("--group-balance", action="store_true", help="NVAE KL balancing of the groups during warm-up")
    t.add_argument("--kl-balance", type=float, help="DreamerV2 KL balancing with this alpha (learned prior)")
    t.add_argument("--optimal-sigma", action="store_true", help="sigma-VAE: analytic shared sigma (Gaussian)")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--clip-grad", type=float, help="clip the gradient norm to this value")
    t.add_argument("--subset", type=int, help="train and test on this many images per class (smoke runs)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    t.add_argument("--data-root", help=f"dataset folder (default: ${data.ENV_VAR}, else ./data)")
    t.add_argument("--bf16", action="store_true", help="mixed precision: autocast to bfloat16")
    t.add_argument("--channels-last", action="store_true", help="channels-last layout for convolutions")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    s = sub.add_parser("sample", help="write K samples per class to an .npz")
    s.add_argument("--checkpoint", required=True, type=Path)
    s.add_argument("--n-per-class", type=int, default=10)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device")

    e = sub.add_parser("evaluate", help="print the test figures of a checkpoint as JSON")
    e.add_argument("--checkpoint", required=True, type=Path)
    e.add_argument("--k", type=int, default=100, help="importance samples of the IWAE bound")
    e.add_argument("--n", type=int, help="evaluate on the first N test images (default: all)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device")
    e.add_argument("--data-root")
    return p


def _test_batches(name, root, device, n=None, per_class=None):
    images, labels = data.load(name, "test", root)
    if n is not None:
        images, labels = images[:n], labels[:n]
    if per_class is not None:
        images, labels = data.stratified_subset(images, labels, per_class)
    return data.Batches(images, labels, 500, shuffle=False, device=device)


def train(args):
    defaults = DEFAULTS[args.dataset]
    conditional = args.model == "cvae"
    config = dict(
        image_shape=data.image_shape(args.dataset),
        num_classes=10 if conditional else 0,
        latent_dim=args.latent_dim or defaults["latent_dim"],
        arch=args.arch or defaults["arch"],
        likelihood=args.likelihood or defaults["likelihood"],
        conditioning=args.conditioning,
        prior=(args.prior or defaults["prior"]) if conditional else "standard",
        sigma=args.sigma,
    )
    remedies = dict(beta=args.beta, schedule=args.schedule, warmup=args.warmup, free_bits=args.free_bits,
                    group_sizes=args.group_sizes, group_balance=args.group_balance, kl_balance=args.kl_balance,
                    sigma="optimal" if args.optimal_sigma else None)
    settings = dict(**remedies, batch_size=args.batch_size, lr=args.lr, clip_grad=args.clip_grad,
                    subset=args.subset, seed=args.seed)
    meta = {"dataset": args.dataset, "model": config, "train": settings}
    if args.out.exists():
        old = torch.load(args.out, map_location="cpu", weights_only=False).get("meta", {})
        if old != meta:
            sys.exit(f"error: {args.out} holds a checkpoint of a different model or setting; "
                     f"choose another --out, or delete it to start over")
        print(f"resuming from {args.out}")
    device = torch.device(args.device) if args.device else default_device()
    images, labels = data.load(args.dataset, "train", args.data_root)
    if args.subset:
        images, labels = data.stratified_subset(images, labels, args.subset, seed=args.seed)
    train_batches = data.Batches(images, labels, args.batch_size, device=device, seed=args.seed)
    test_batches = _test_batches(args.dataset, args.data_root, device, per_class=args.subset)
    seed_everything(args.seed)
    model = CVAE(**config)
    epochs = args.epochs or defaults["epochs"]
    print(f"training a {args.model} on {args.dataset} ({len(images)} images) for {epochs} epochs on {device}")
    start = time.time()
    loss = RemedyLoss(**remedies, steps_per_epoch=len(train_batches))  # without remedies: the ELBO
    fit(model, loss, train_batches, epochs, test_batches=test_batches, lr=args.lr, device=device,
        seed=args.seed, clip_grad=args.clip_grad, checkpoint=args.out, meta=meta, progress=not args.no_progress,
        bf16=args.bf16, channels_last=args.channels_last, compile=args.compile)
    final = evaluate_loss(model, loss, test_batches, device)  # nelbo: the true negative ELBO, whatever beta
    figures = {"test_negative_elbo_nats": final["nelbo"], "test_reconstruction_nats": final["recon"],
               "test_kl_nats": final["kl"], "seconds": round(time.time() - start, 1)}
    if model.likelihood.discrete:
        figures["test_bits_per_dim"] = bits_per_dim(final["nelbo"], int(np.prod(config["image_shape"])))
    print(json.dumps(figures))
    print(f"saved {args.out}")


def sample(args):
    device = args.device or default_device()
    model = load_checkpoint(args.checkpoint, device)
    seed_everything(args.seed)
    if model.num_classes:
        labels = torch.arange(model.num_classes).repeat_interleave(args.n_per_class)
        images = model.sample(labels.to(device))
    else:  # a VAE has no classes: 10 * K unlabelled samples, label -1
        labels = torch.full((10 * args.n_per_class,), -1)
        images = model.sample(num_samples=len(labels))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, images=images.cpu().numpy().astype(np.float32), labels=labels.numpy().astype(np.int64))
    print(f"wrote {len(labels)} samples to {args.out}")


def evaluate(args):
    device = args.device or default_device()
    model = load_checkpoint(args.checkpoint, device)
    seed_everything(args.seed)
    batches = _test_batches(model.meta["dataset"], args.data_root, device, args.n)
    print(json.dumps({"checkpoint": str(args.checkpoint), "dataset": model.meta["dataset"],
                      **report(model, batches, args.k)}))


def main(argv=None):
    """Entry point of ``python -m cvaelib``."""
    args = _parser().parse_args(argv)
    {"train": train, "sample": sample, "evaluate": evaluate}[args.command](args)
