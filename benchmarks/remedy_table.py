"""Chapter 4's remedy table on a budget of your choice: train every remedy, diagnose, judge.

    python benchmarks/remedy_table.py --per-class 1000 --epochs 10

Trains the conv CVAE of chapter 4 on CIFAR-10 once per remedy (settings from
``cvaelib.remedies.chapter_settings``), with a checkpoint per model in --runs so an
interrupted run resumes; trains the judge on real training images; and prints one
markdown row per model: bits/dim, active units, KL, I(x; z | y), decoder sensitivity,
verdict, judged accuracy and Fréchet distance of the samples, and training seconds.
A grid of prior samples per remedy is written to --runs/samples.png.
"""

import argparse
import time
from pathlib import Path

import torch
from torchvision.utils import save_image

from cvaelib import CVAE, data
from cvaelib.diagnostics import compare
from cvaelib.judge import classifier_accuracy, frechet_distance, train_classifier
from cvaelib.remedies import RemedyConfig, RemedyLoss, chapter_settings
from cvaelib.train import fit, seed_everything


def _subset(images, labels, per_class, seed=0):
    return (images, labels) if per_class is None else data.stratified_subset(images, labels, per_class, seed)


def run(
    per_class=None,
    epochs=30,
    latent_dim=64,
    batch_size=128,
    test_per_class=None,
    judge_per_class=None,
    judge_epochs=10,
    samples_per_class=100,
    collapse_beta=300.0,
    runs=Path("runs/remedy_table"),
    only=None,
    device="cpu",
):
    runs.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = data.load("cifar10", "train")
    test_images, test_labels = data.load("cifar10", "test")
    # As in chapter 4: the first half of the test set tests the VAEs, the second half is the real reference.
    x_train, y_train = _subset(train_images, train_labels, per_class)
    x_test, y_test = _subset(test_images[:5000], test_labels[:5000], test_per_class)
    x_ref, _ = _subset(test_images[5000:], test_labels[5000:], samples_per_class)
    train_batches = data.Batches(x_train, y_train, batch_size, device=device, seed=0)
    test_batches = data.Batches(x_test, y_test, 500, shuffle=False, device=device)
    settings = chapter_settings(epochs, collapse_beta, group_sizes=(latent_dim // 4, latent_dim - latent_dim // 4))

    start = time.time()
    x_judge, y_judge = _subset(train_images, train_labels, judge_per_class, seed=1)
    judge, _ = train_classifier(x_judge, y_judge, num_epochs=judge_epochs, device=device, progress=False)
    judge_seconds = time.time() - start
    real_ref = x_ref.float() / 255
    rows = {
        "real test images": dict(
            judged=classifier_accuracy(judge, test_images[5000:], test_labels[5000:], device),
            fd=frechet_distance(judge, real_ref, x_test[: len(x_ref)].float() / 255),
        )
    }
    grids = []
    for name, s in settings.items():
        if only and name not in only:
            continue
        seed_everything(0)
        model = CVAE(
            image_shape=(3, 32, 32),
            num_classes=10,
            latent_dim=latent_dim,
            arch="conv",
            likelihood=s["likelihood"],
            prior="learned",
        )
        start = time.time()
        meta = {"remedy": name, "settings": repr(s), "per_class": per_class, "latent_dim": latent_dim}
        fit(
            model,
            RemedyLoss(RemedyConfig(**s["loss"]), steps_per_epoch=len(train_batches)),
            train_batches,
            epochs,
            device=device,
            checkpoint=runs / f"{name}.pt",
            meta=meta,
            progress=False,
        )
        rows[name] = compare(model.eval(), test_batches, judge, real_ref, samples_per_class)
        rows[name]["seconds"] = time.time() - start
        grids.append(rows[name]["samples"].view(10, samples_per_class, 3, 32, 32)[:, :8].reshape(-1, 3, 32, 32))
        print(f"{name}: {rows[name]['verdict']}", flush=True)
    if grids:  # one block of 10 classes x 8 samples per remedy, side by side
        save_image(torch.cat(grids), runs / "samples.png", nrow=8, padding=1, pad_value=1.0)

    print(
        f"\nCIFAR-10, {len(x_train)} training images, {epochs} epochs, latent {latent_dim}, batch {batch_size}, "
        f"{len(x_test)} test images; judge: {len(x_judge)} images, {judge_epochs} epochs, {judge_seconds:.0f} s"
    )
    print(
        "| remedy | bits/dim | active units | KL (nats) | I(x; z \\| y) (nats) | decoder sensitivity | verdict "
        "| judged accuracy | Fréchet distance | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        if "units" not in r:
            print(f"| {name} | | | | | | | {r['judged']:.1%} | {r['fd']:.1f} | |")
            continue
        bpd = "n/a" if r["bpd"] is None else f"{r['bpd']:.3f}"
        print(
            f"| {name} | {bpd} | {r['units']} of {latent_dim} | {r['kl']:.1f} | {r['mi']:.2f} | "
            f"{r['sensitivity']:.3f} | {r['verdict'].split(':')[0]} | {r['judged']:.1%} | {r['fd']:.1f} | "
            f"{r['seconds']:.0f} |"
        )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, help="training images per class (default: all)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--test-per-class", type=int, help="test images per class (default: all 5,000 of the first half)")
    p.add_argument("--judge-per-class", type=int, help="judge training images per class (default: all)")
    p.add_argument("--judge-epochs", type=int, default=10)
    p.add_argument("--samples-per-class", type=int, default=100)
    p.add_argument("--collapse-beta", type=float, default=300.0)
    p.add_argument("--runs", type=Path, default=Path("runs/remedy_table"), help="checkpoints and samples.png")
    p.add_argument("--only", nargs="+", help="train only these remedies")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    return run(
        a.per_class,
        a.epochs,
        a.latent_dim,
        a.batch_size,
        a.test_per_class,
        a.judge_per_class,
        a.judge_epochs,
        a.samples_per_class,
        a.collapse_beta,
        a.runs,
        a.only,
        a.device,
    )


if __name__ == "__main__":
    main()
