"""Chapter 4's remedy table: the hierarchical CVAE trained once per remedy on one wall-clock budget.

    python benchmarks/remedy_table.py --per-class 1000 --epochs 2 --warmup 1 --eval-every 1.5

Trains the command line's hierarchical CVAE (``--arch hierarchical``) on CIFAR-10 once per remedy of
``cvaelib.remedies.chapter_settings`` (none, KL warm-up, free bits per group, NVAE group balancing,
DreamerV2 balancing, beta = 1e-5), every remedy on the same budget: ``--epochs`` over ``--per-class``
training images per class (and at most ``--minutes`` each), recording the test bits/dim and the KL of each
latent group after every ``--eval-every`` minutes; then diagnoses each model (active groups, per-group
KL, I(x; z | y)), and judges its prior samples at each temperature with the course's classifier
(accuracy at the best temperature, Fréchet distance). Checkpoints in ``--runs``: an interrupted run
resumes. The figures and their provenance go to ``--out`` (chapter 4 reads them), a grid of samples
per remedy beside it.
"""

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

sys.path.insert(0, str(Path(__file__).parent))  # its sibling, run as a script or loaded by the tests
from hierarchical_vs_single import UNSET, race, start_record  # noqa: E402

from cvaelib import data  # noqa: E402
from cvaelib.baselines import gaussian_bits_per_dim
from cvaelib.cli import default_settings  # noqa: E402
from cvaelib.diagnostics import compare  # noqa: E402
from cvaelib.judge import classifier_accuracy, frechet_distance, load_judge  # noqa: E402
from cvaelib.remedies import RemedyConfig, chapter_settings  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=1000, help="training images per class")
    p.add_argument("--epochs", type=int, default=2, help="epochs per remedy: the budget")
    p.add_argument("--minutes", type=float, help="at most this many training minutes each (default: no limit)")
    p.add_argument("--eval-every", type=float, default=1.5, help="minutes of training between two test points")
    p.add_argument("--warmup", type=float, default=1.0, help="epochs of the KL warm-ups")
    p.add_argument("--free-bits", type=float, default=4.0, help="nats each latent group may keep for free")
    p.add_argument("--size", default="small", help="the hierarchical model's size preset")
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--stats-images", type=int, default=500, help="test images of the diagnosis")
    p.add_argument("--samples-per-class", type=int, default=100, help="prior samples per class for the judge")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.6, 0.8, 1.0])
    p.add_argument("--only", nargs="+", help="train only these remedies")
    p.add_argument("--runs", type=Path, default=Path("runs/remedy_table"))
    p.add_argument("--out", type=Path, default=Path("results/04_cvae_cifar10.json"))
    args = p.parse_args(argv)
    began, source = time.time(), start_record(args, "cpu-budget")

    all_images, all_labels = data.load("cifar10", "train")
    train_images, train_labels = data.stratified_subset(all_images, all_labels, args.per_class)
    test_images, test_labels = data.load("cifar10", "test")
    # As in chapter 4: the first half of the test set tests the models, the second half is the real reference.
    n = min(args.test_images, 5000)
    test_batches = data.Batches(test_images[:n], test_labels[:n], 250, shuffle=False)
    real_ref = data.stratified_subset(test_images[5000:], test_labels[5000:], args.samples_per_class)[0].float() / 255
    judge, _ = load_judge("cifar10")
    real = classifier_accuracy(judge, test_images[5000:], test_labels[5000:])
    print(f"judge: {real:.1%} of {len(test_images) - 5000} real test images", flush=True)

    gaussian = gaussian_bits_per_dim(all_images, test_images[:n])  # the yardstick on this very data
    print(f"one full-covariance Gaussian on the same data: {gaussian:.3f} bits/dim", flush=True)

    model_config, _, optim, batch_size, _ = default_settings("cifar10", "hierarchical")
    model_config = replace(model_config, size=args.size, **UNSET)
    remedies = chapter_settings(args.warmup, args.free_bits)
    rows, grids = {}, []
    for name, remedy in remedies.items():
        if args.only and name not in args.only:
            continue
        config = RemedyConfig(**remedy)
        state, model = race(
            name,
            (model_config, config, optim, batch_size),
            train_images,
            train_labels,
            test_batches,
            args.minutes or float("inf"),
            args.eval_every,
            args.runs,
            args.epochs,
        )
        r = compare(
            model,
            test_batches,
            judge,
            real_ref,
            args.samples_per_class,
            temperatures=tuple(args.temperatures),
            max_images=args.stats_images,
        )
        rows[name] = {
            "remedy": asdict(config),
            "training_minutes": round(state["seconds"] / 60, 2),
            "curve": state["curve"],
            "bits_per_dim": round(r["bpd"], 4),
            "active_groups": r["groups"],
            "groups": len(r["kl_groups"]),
            "kl_nats": round(r["kl"], 2),
            "kl_groups_nats": [round(k, 2) for k in r["kl_groups"]],
            "mutual_information_nats": round(r["mi"], 3),
            "decoder_sensitivity": round(r["sensitivity"], 4),
            "verdict": r["verdict"],
            "judged_by_temperature": {str(t): round(a, 4) for t, a in r["judged_by_temperature"].items()},
            "best_temperature": r["temperature"],
            "judged": round(r["judged"], 4),
            "frechet_distance": round(r["fd"], 2),
        }
        print(name, json.dumps({k: v for k, v in rows[name].items() if k not in ("curve", "remedy")}), flush=True)
        keep = torch.cat([torch.arange(min(4, args.samples_per_class)) + c * args.samples_per_class for c in range(10)])
        grids.append(make_grid(r["samples"][keep], nrow=min(4, args.samples_per_class), padding=1, pad_value=1.0))
    png = args.out.with_name(f"{args.out.stem}_remedy_samples.png")
    save_image(torch.stack(grids), png, nrow=len(grids), padding=4, pad_value=1.0)
    record = {
        **source,
        "wall_seconds": round(time.time() - began, 1),
        "model": asdict(model_config),
        "train": {**asdict(optim), "batch_size": batch_size},
        "gaussian_bits_per_dim": round(gaussian, 4),
        "judge_accuracy_on_real_test_images": round(real, 4),
        "frechet_distance_real_vs_real": round(frechet_distance(judge, real_ref, test_images[:n].float() / 255), 2),
        "samples_png": png.name,
        "remedies": rows,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out} and {png}")
    print("| remedy | bits/dim | active groups | KL per group (nats) | I(x; z | y) | judged (T) | FD |")
    for name, r in rows.items():
        kl = ", ".join(f"{k:.0f}" for k in r["kl_groups_nats"])
        print(
            f"| {name} | {r['bits_per_dim']:.3f} | {r['active_groups']} of {r['groups']} | {kl} | "
            f"{r['mutual_information_nats']:.2f} | {r['judged']:.1%} ({r['best_temperature']}) | "
            f"{r['frechet_distance']:.1f} |"
        )
    print(f"| one full-covariance Gaussian, same data | {gaussian:.3f} | | | | | |")
    return record


if __name__ == "__main__":
    main()
