"""Chapter 4's two models on one wall-clock budget: test bits/dim over time, then judged prior samples.

    python benchmarks/hierarchical_vs_single.py --minutes 60 --eval-every 5

Trains the single-latent conv CVAE and the hierarchical CVAE on CIFAR-10 for the same number of
minutes each (one after the other, on the same cores), both with the speed switches and the average of
the weights (EMA) that ``--arch hierarchical`` trains with, and after every ``--eval-every`` minutes of
training records the test bits/dim of the averaged weights on the first ``--test-images`` test images
(and, at the end, of the trained weights themselves): a curve for both.
Training goes through ``fit`` with ``max_minutes`` and a checkpoint per model in ``--runs``, so an
interrupted benchmark resumes where it stopped. Then a classifier trained on the real training images
(the course's judge) judges 100 prior samples per class at each temperature. The figures, with their
provenance, go to ``--out`` (JSON) and a grid of samples per model beside it (PNG).
"""

import argparse
import json
import math
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

from common import (
    Contender,
    RaceSettings,
    contenders,
    diagnosis,
    draw_and_judge,
    finish_record,
    race,
    save_sample_grid,
    start_record,
    write_record,
)
from torch import nn

from cvaelib import data
from cvaelib.baselines import gaussian_bits_per_dim
from cvaelib.diagnostics import diagnose
from cvaelib.judge import classifier_accuracy, load_judge
from cvaelib.recipes import HIERARCHICAL
from cvaelib.train import SpeedConfig, default_device


def judged(model: nn.Module, judge: nn.Module, temperatures: list[float], per_class: int, out_png: Path) -> dict:
    """Judged accuracy of ``per_class`` prior samples per class at each temperature; a grid at the best."""
    scores, samples = {}, {}
    for t in temperatures:  # the decoded mean image, as every chapter shows; the same seed at every temperature
        scores[t], samples[t] = draw_and_judge(judge, partial(model.sample, temperature=t, mean=True), per_class)
    best = max(scores, key=lambda t: scores[t]["accuracy"])
    save_sample_grid(samples[best], per_class, out_png)
    return {
        "accuracy_by_temperature": {str(t): round(s["accuracy"], 4) for t, s in scores.items()},
        "best_temperature": best,
        "per_class_at_best": [round(a, 4) for a in scores[best]["per_class"].tolist()],
        "samples_png": out_png.name,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options (``--help`` lists them)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60.0, help="training minutes per model")
    p.add_argument("--eval-every", type=float, default=5.0, help="minutes of training between two test points")
    p.add_argument("--test-images", type=int, default=2000, help="test images of the curve and the final figures")
    p.add_argument("--per-class", type=int, default=100, help="prior samples per class for the judge")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.6, 0.8, 1.0])
    p.add_argument("--size", default="small", help="the hierarchical model's size preset")
    p.add_argument("--only", nargs="+", choices=["single_latent", "hierarchical"], help="race only these models")
    p.add_argument("--device", default=str(default_device()), help="where to train (default: a GPU if there is one)")
    p.add_argument("--runs", type=Path, default=Path("runs/hierarchical_vs_single"))
    p.add_argument("--out", type=Path, default=Path("results/benchmark_hierarchical_vs_single.json"))
    return p.parse_args(argv)


def model_figures(
    args: argparse.Namespace,
    name: str,
    contender: Contender,
    state: dict,
    model: nn.Module,
    test_batches: data.Batches,
    judge: nn.Module,
) -> dict:
    """A raced model's figures: its settings and curve, its diagnosis and its judged prior samples."""
    d = diagnose(model, test_batches)  # on all the race's test images: the cap is log of the images per class
    png = args.out.with_name(f"{args.out.stem}_{name}.png")
    groups_png = args.out.with_name(f"{args.out.stem}_{name}_groups.png")
    return {
        "settings": contender.as_record(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "training_minutes": round(state["seconds"] / 60, 2),
        "training_threads": state["threads"],  # torch threads of the process that trained it
        "curve": state["curve"],
        "test_bits_per_dim": state["curve"][-1]["test_bits_per_dim"],
        "trained_weights_test_bits_per_dim": state["trained_weights"]["test_bits_per_dim"],
        "speed": asdict(SpeedConfig.default("hierarchical", args.device)),
        "ema": HIERARCHICAL.ema,
        "kl_groups_nats": [round(g["kl_nats"], 2) for g in d["groups"]],
        "active_groups": d["active_groups"],
        # the diagnosis's figure draws from the prior before the judged samples, which seed their own draws
        "diagnosis": diagnosis(model, d, test_batches, groups_png),
        "judged": judged(model, judge, args.temperatures, args.per_class, png),
    }


def print_table(figures: dict, gaussian: float, real: float) -> None:
    """The record's figures as a Markdown table (the README's)."""
    print("| model | minutes | test bits/dim | judged (best temperature) |")
    for name, m in figures["models"].items():
        best = m["judged"]["best_temperature"]
        accuracy = m["judged"]["accuracy_by_temperature"][str(best)]
        print(f"| {name} | {m['training_minutes']} | {m['test_bits_per_dim']:.3f} | {accuracy:.1%} (T={best}) |")
    print(f"| one full-covariance Gaussian, same data | | {gaussian:.3f} | |")
    if math.isfinite(real):
        print(f"| real test images | | | {real:.1%} |")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began, source = time.time(), start_record(args, "benchmark")

    train_images, train_labels = data.load("cifar10", "train")
    test_images, test_labels = data.load("cifar10", "test")
    test_batches = data.Batches(test_images[: args.test_images], test_labels[: args.test_images], 250, shuffle=False)
    judge, _ = load_judge("cifar10", args.device)
    real = classifier_accuracy(judge, test_images[5000:], test_labels[5000:], args.device)
    print(f"judge: {real:.1%} of {len(test_images) - 5000} real test images", flush=True)

    # The yardstick on this very data: one full-covariance Gaussian, scored on the race's test images.
    gaussian = gaussian_bits_per_dim(train_images, test_images[: args.test_images])
    print(f"one full-covariance Gaussian on the same data: {gaussian:.3f} bits/dim", flush=True)
    figures = {"gaussian_bits_per_dim": round(gaussian, 4), "judge_accuracy_on_real_test_images": round(real, 4)}
    figures["models"] = {}
    settings = RaceSettings(args.minutes, args.eval_every, args.runs, device=args.device)
    for name, contender in contenders(args.size).items():
        if args.only and name not in args.only:
            continue
        state, model = race(name, contender, train_images, train_labels, test_batches, settings)
        figures["models"][name] = model_figures(args, name, contender, state, model, test_batches, judge)
        print(name, json.dumps(figures["models"][name]["judged"]), flush=True)
    write_record(args.out, finish_record(source, began, figures))
    print(f"wrote {args.out}")
    print_table(figures, gaussian, real)


if __name__ == "__main__":
    main()
