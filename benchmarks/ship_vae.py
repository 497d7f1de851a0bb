"""Chapter 1's full-profile VAE, trained and shipped with the course (chapter 1 shows it live in every profile).

    OMP_NUM_THREADS=1 python benchmarks/ship_vae.py

The 16-dimensional VAE of chapter 1 as its full profile trains it: every MNIST training image in batches of 128
(shuffled with seed 0), Adam at ``fit``'s default learning rate, 30 epochs, weights seeded with 0 (the chapter trains
other models first, so its own weights start elsewhere). Its test negative ELBO on all 10,000 test images and the
IWAE bound (``--k`` samples) on the first ``--iwae-images`` go in its manifest entry (``cvaelib.shipped``: 16-bit
weights, sha256, provenance), with the shipped file's own negative ELBO on the first 500 test images, which
``tests/test_shipped.py`` checks a clone against.
"""

import argparse
import time
from pathlib import Path

from common import mnist_to_ship, record_at_end, shipped_provenance

from cvaelib import VAE, data, evaluate
from cvaelib.losses import elbo
from cvaelib.provenance import RESULTS, as_json
from cvaelib.shipped import annotate, load_shipped, ship
from cvaelib.train import fit, seed_everything


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30, help="epochs (chapter 1's full profile: 30)")
    p.add_argument("--subset", type=int, help="training images per class (default: all; a quick check)")
    p.add_argument("--k", type=int, default=200, help="importance samples of the IWAE bound (chapter 1's: 200)")
    p.add_argument("--iwae-images", type=int, default=2000, help="test images of the IWAE bound")
    p.add_argument("--models", type=Path, default=RESULTS / "models", help="where the trained model ships")
    p.add_argument("--name", default="mnist_vae", help="the shipped model's name")
    return p.parse_args(argv)


def check_figure(name: str, folder: Path, test_images, test_labels) -> float:
    """The figure a test checks the shipped file against: its float16 weights' negative ELBO on the first 500 test
    images, with the noise seeded once the model is loaded (building it draws random numbers too)."""
    model = load_shipped(name, folder=folder)
    seed_everything(0)
    first = data.Batches(test_images[:500], test_labels[:500], 500, shuffle=False)
    return evaluate.negative_elbo(model, first)["nelbo"]


def main(argv=None) -> dict:
    args, began = parse_args(argv), time.time()
    images, labels, test_images, test_labels = mnist_to_ship(args.subset)
    batches = data.Batches(images, labels, 128, shuffle=True, seed=0)
    test_batches = data.Batches(test_images, test_labels, 1000, shuffle=False)
    seed_everything(0)
    model = VAE(latent_dim=16)
    start = time.perf_counter()
    fit(model, elbo, batches, args.epochs, device="cpu", progress=False)
    seconds = time.perf_counter() - start
    model.eval()
    seed_everything(0)
    first = data.Batches(test_images[: args.iwae_images], test_labels[: args.iwae_images], 500, shuffle=False)
    figures = {
        "epochs": args.epochs,
        "train_images": len(labels),
        "train_seconds": seconds,
        "test_negative_elbo_nats": evaluate.negative_elbo(model, test_batches)["nelbo"],
        "iwae": {"k": args.k, "images": args.iwae_images, "nats": evaluate.iwae_bound(model, first, k=args.k)},
    }
    about = shipped_provenance(record_at_end(args, began))
    record = {"dataset": "mnist", "recipe": "chapter 1's full profile", "provenance": about}
    record["figures"] = as_json(figures)
    entry = ship(model, args.name, record, None, args.models)
    check_nats = check_figure(args.name, args.models, test_images, test_labels)
    annotate(args.name, args.models, check_negative_elbo_500=check_nats)
    print(f"shipped {args.name} ({entry['bytes']:,} bytes): {as_json(figures)}; check on 500 images {check_nats:.3f}")
    return {**figures, "check_negative_elbo_500": check_nats}


if __name__ == "__main__":
    main()
