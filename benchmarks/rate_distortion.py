"""Rate and distortion of the MNIST VAE at several beta: the ELBO as a line (chapter 1).

    python benchmarks/rate_distortion.py                    # all betas, all images (minutes on a CPU)
    python benchmarks/rate_distortion.py --per-class 100    # a quick look

Alemi et al. (2018) read the ELBO on one picture. The *rate* R = E KL(q(z|x) || p(z)) is what the
code costs in nats, the *distortion* D = E[-log p(x|z)] what the reconstruction costs; the negative
ELBO is D + R, so every model with the same ELBO lies on a line of slope -1 in the (R, D) plane. A
beta-VAE minimises D + beta R: small beta buys a lower distortion with a higher rate (towards an
autoencoder), large beta drives the rate to 0 (posterior collapse: z says nothing, and D is what the
decoder pays drawing every image from its average). This trains chapter 1's VAE (MLP, latent 16,
Bernoulli likelihood) once per beta with ``cvaelib.train.fit`` and measures R and D on the test set.
Each model is checkpointed in ``--runs``, so an interrupted run resumes; the figures go to
``--out`` with their provenance.
"""

import argparse
import time
from functools import partial
from pathlib import Path

from common import finish_record, write_record

from cvaelib import VAE, data
from cvaelib.evaluate import negative_elbo
from cvaelib.losses import elbo
from cvaelib.provenance import as_json, provenance
from cvaelib.train import TrainConfig, fit, seed_everything

BETAS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--betas", type=float, nargs="+", default=list(BETAS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--per-class", type=int, help="train on this many images per class (default: all)")
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--runs", type=Path, default=Path("runs/rate_distortion"))
    p.add_argument("--out", type=Path, default=Path("results/benchmark_rate_distortion.json"))
    args = p.parse_args(argv)
    if not args.betas or min(args.betas) <= 0 or 1.0 not in args.betas:
        p.error("--betas must be positive and include 1 (the ELBO itself)")
    if args.epochs < 1 or args.latent_dim < 1:
        p.error("--epochs and --latent-dim must be positive")
    settings = {k: v for k, v in vars(args).items() if k not in ("runs", "out")}
    # the provenance before any work: the commit the run starts from
    began, source = time.time(), provenance(0.0, as_json(settings), profile="benchmark", data="MNIST, pixel-exact")

    images, labels = data.load("mnist", "train")
    if args.per_class is not None:
        images, labels = data.stratified_subset(images, labels, args.per_class)
    test_images, test_labels = data.load("mnist", "test")
    train_batches = data.Batches(images, labels, args.batch_size, seed=0)
    test_batches = data.Batches(test_images, test_labels, 1000, shuffle=False)
    points = []
    for beta in args.betas:
        seed_everything(0)
        model = VAE(latent_dim=args.latent_dim)
        meta = {"benchmark": "rate_distortion", "beta": beta, "settings": settings}
        fit(
            model,
            partial(elbo, beta=beta),
            train_batches,
            args.epochs,
            config=TrainConfig(lr=args.lr),
            device="cpu",
            checkpoint=args.runs / f"beta_{beta:g}.pt",
            meta=as_json(meta),
            progress=False,
        )
        seed_everything(1)
        test = negative_elbo(model, test_batches)  # nats per image: recon is D, kl is R
        points.append({"beta": beta, "rate_nats": test["kl"], "distortion_nats": test["recon"]})
        print(f"beta {beta:g}: rate {test['kl']:.2f} nats, distortion {test['recon']:.2f} nats", flush=True)

    record = finish_record(source, began, {"points": as_json(points)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_record(args.out, record)
    print(f"wrote {args.out}")
    print("| beta | rate R (nats) | distortion D (nats) | -ELBO = D + R |")
    for point in points:
        r, d = point["rate_nats"], point["distortion_nats"]
        print(f"| {point['beta']:g} | {r:.2f} | {d:.2f} | {r + d:.2f} |")
    return record


if __name__ == "__main__":
    main()
