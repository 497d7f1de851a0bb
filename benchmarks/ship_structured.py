"""Chapter 5's full-profile models for one given quadrant, trained and shipped with the course.

    OMP_NUM_THREADS=1 python benchmarks/ship_structured.py

The deterministic baseline ("NN", 20 epochs) and the CVAE (30 epochs) of chapter 5 as its full profile trains them:
every MNIST training image in batches of 64 (shuffled with seed 0), Adam at ``fit``'s default learning rate, each
model's weights seeded with 0, the loss of ``--given`` given quadrants (1: the bottom-left, where most digits can
still be completed in several ways). Their test figures on all 10,000 test images, in nats over the missing pixels
(the baseline's exact negative log-likelihood; the CVAE's 10-sample negative ELBO and its importance-sampled
negative log-likelihood with K = ``--k``) go in their manifest entries (``cvaelib.shipped``: 16-bit weights, sha256,
provenance), with each shipped file's own figure on the first 500 test images, which ``tests/test_shipped.py``
checks a clone against. Chapter 5 shows both models live in every profile.
"""

import argparse
import time
from functools import partial
from pathlib import Path

from common import mnist_to_ship, record_at_end, shipped_provenance

from cvaelib import data
from cvaelib.provenance import RESULTS, as_json
from cvaelib.shipped import annotate, load_shipped, ship
from cvaelib.structured import BaselineNet, StructuredCVAE, evaluate, structured_loss
from cvaelib.train import fit, seed_everything

# each model's kind, class and epochs in chapter 5's full profile
MODELS = (("nn", BaselineNet, 20), ("cvae", StructuredCVAE, 30))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--given", type=int, default=1, choices=(1, 2, 3), help="quadrants given as input (default: 1)")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="a fraction of the full profile's epochs (a check)")
    p.add_argument("--subset", type=int, help="training images per class (default: all; a quick check)")
    p.add_argument("--k", type=int, default=100, help="importance samples of the CVAE's test NLL (chapter 5's: 100)")
    p.add_argument("--test-images", type=int, help="test images of the figures (default: all 10,000)")
    p.add_argument("--models", type=Path, default=RESULTS / "models", help="where the trained models ship")
    return p.parse_args(argv)


def name_of(kind: str, given: int) -> str:
    """The shipped name of chapter 5's ``kind`` ("nn" or "cvae") trained with ``given`` quadrants given."""
    return f"quadrants_{given}_{kind}"


def check_figure(name: str, folder: Path, test_images, test_labels, given: int) -> float:
    """The figure a test checks a shipped file against: its float16 weights' first test figure ("nll" for the
    baseline, "nelbo" for the CVAE) on the first 500 test images, the noise seeded once the model is loaded."""
    model = load_shipped(name, folder=folder)
    seed_everything(0)
    first = data.Batches(test_images[:500], test_labels[:500], 500, shuffle=False)
    figures = evaluate(model, first, given, k=1)
    return figures["nelbo"] if "nelbo" in figures else figures["nll"]


def main(argv=None) -> dict:
    args, began = parse_args(argv), time.time()
    images, labels, test_images, test_labels = mnist_to_ship(args.subset)
    test_images, test_labels = test_images[: args.test_images], test_labels[: args.test_images]
    batches = data.Batches(images, labels, 64, shuffle=True, seed=0)
    test_batches = data.Batches(test_images, test_labels, 500, shuffle=False)
    loss_fn = partial(structured_loss, num_given=args.given)
    trained, results = {}, {}
    for kind, make, full_epochs in MODELS:
        epochs = max(1, round(full_epochs * args.epochs_scale))
        seed_everything(0)
        model = make()
        start = time.perf_counter()
        fit(model, loss_fn, batches, epochs, device="cpu", progress=False)
        seconds = time.perf_counter() - start
        seed_everything(0)
        test = evaluate(model.eval(), test_batches, args.given, k=args.k)
        trained[kind] = model
        results[kind] = {"epochs": epochs, "train_images": len(labels), "train_seconds": seconds,
                         "test_images": len(test_labels), "k": args.k, "test_nats": test}  # fmt: skip
    about = shipped_provenance(record_at_end(args, began))
    for kind, model in trained.items():
        name = name_of(kind, args.given)
        record = {"dataset": "mnist", "recipe": "chapter 5's full profile", "num_given": args.given}
        ship(model, name, {**record, "provenance": about, "figures": as_json(results[kind])}, None, args.models)
        results[kind]["check_500"] = check_figure(name, args.models, test_images, test_labels, args.given)
        annotate(name, args.models, check_500=results[kind]["check_500"])
        print(f"shipped {name}: {as_json(results[kind])}")
    return results


if __name__ == "__main__":
    main()
