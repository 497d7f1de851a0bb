"""Chapter 4's remedy table: the hierarchical CVAE trained per remedy and seed on one budget.

    python benchmarks/remedy_table.py --per-class 1250 --epochs 3 --warmup 1 --eval-every 2 --seeds 3

Trains the command line's hierarchical CVAE (``--arch hierarchical``) on CIFAR-10 with ``--seeds`` seeds per
remedy of ``cvaelib.remedies.chapter_settings`` (none, KL warm-up, free bits per group, NVAE group balancing,
DreamerV2 balancing; beta = 1e-5 with one seed, as its bound settles it), every run on the same budget:
``--epochs`` over ``--per-class``
training images per class (and at most ``--minutes`` each), recording the test bits/dim and the KL of each
latent group after every ``--eval-every`` minutes; then diagnoses each model (active groups, per-group
KL, I(x; z | y)), and judges its prior samples at each temperature with the course's classifier
(accuracy at the best temperature, Fréchet distance). Each remedy's record keeps every seed's figures
(``seeds``) and, for the bound, the active groups and the judged accuracy, their mean over the seeds with
a 95 % Student-t interval (``intervals``). Checkpoints in ``--runs``: an interrupted run resumes, and
``--max-minutes`` ends this call cleanly after that much training (run the same command again to go on).
A trained run's figures are kept in ``--runs`` too, so that calls with ``--only`` side by side (one process
per core, say) and one last call without it make the whole table without judging a run twice.
The figures and their provenance go to ``--out`` (chapter 4 reads them), a grid of samples per remedy
beside it (its first seed). ``--device`` trains on a GPU where there is one.
"""

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from common import (
    Contender,
    RaceSettings,
    contenders,
    finish_record,
    first_of_each_class,
    race,
    start_record,
    write_record,
)
from scipy import stats
from torchvision.utils import make_grid, save_image

from cvaelib import data
from cvaelib.baselines import gaussian_bits_per_dim
from cvaelib.diagnostics import compare
from cvaelib.judge import classifier_accuracy, frechet_distance, load_judge
from cvaelib.remedies import RemedyConfig, chapter_settings
from cvaelib.train import default_device

ONE_SEED = {"beta_1e-5"}  # its bound already says what it is: an autoencoder that pays for every nat
SUMMARISED = ("bits_per_dim", "active_groups", "judged")  # the figures given with a mean and an interval


def mean_interval(values: list[float], confidence: float = 0.95) -> dict:
    """The mean of ``values`` and its ``confidence`` interval from Student's t (one value: no interval)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "interval": None, "n": n}
    sem = stats.sem(values)
    low, high = (mean, mean) if sem == 0 else stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return {"mean": mean, "interval": [float(low), float(high)], "n": n}


def summary(seeds: list[dict]) -> dict:
    """A remedy's figures over its seeds: the mean and interval of each of ``SUMMARISED``."""
    return {k: mean_interval([s[k] for s in seeds]) for k in SUMMARISED}


def judged_run(model, run: Path, judge, test_batches, real_ref, args) -> tuple[dict, torch.Tensor]:
    """A trained run's figures (``compare``: the bound, the diagnosis and the judged samples) and its prior
    samples, kept in ``run``.json and ``run``.pt so that a later call reads them instead of judging again."""
    figures, samples = run.with_suffix(".json"), run.with_suffix(".pt")
    if figures.exists() and samples.exists():
        return json.loads(figures.read_text()), torch.load(samples, weights_only=True)
    r = compare(
        model,
        test_batches,
        judge,
        real_ref,
        args.samples_per_class,
        temperatures=tuple(args.temperatures),
        max_images=args.stats_images,
    )
    row = {
        "bits_per_dim": round(r["bpd"], 4),
        "active_groups": r["groups"],
        "groups": len(r["kl_groups"]),
        "kl_nats": round(r["kl"], 2),
        "kl_groups_nats": [round(k, 2) for k in r["kl_groups"]],
        # I(z_g; x, z_<g | y) of each group, and the cap of these estimates (log of the images per class)
        "mutual_information_groups_nats": [round(g["mutual_information_nats"], 3) for g in r["diagnosis"]["groups"]],
        "mutual_information_cap_nats": round(r["diagnosis"]["groups"][0]["mutual_information_cap_nats"], 3),
        "decoder_sensitivity": round(r["sensitivity"], 4),
        "verdict": r["verdict"],
        "judged_by_temperature": {str(t): round(a, 4) for t, a in r["judged_by_temperature"].items()},
        "best_temperature": r["temperature"],
        "judged": round(r["judged"], 4),
        "frechet_distance": round(r["fd"], 2),
    }
    figures.write_text(json.dumps(row))
    torch.save(r["samples"], samples)
    return row, r["samples"]


def _mean_and_interval(s: dict) -> str:
    return f"{s['mean']:.3f}" + ("" if s["interval"] is None else f" [{s['interval'][0]:.3f}, {s['interval'][1]:.3f}]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options (``--help`` lists them)."""
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
    p.add_argument("--only", nargs="+", help="train and judge only these remedies (the table waits for all)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per remedy (beta_1e-5: one)")
    p.add_argument(
        "--only-seeds", type=int, nargs="+", help="train and judge only these seeds (the table waits for all)"
    )
    p.add_argument("--max-minutes", type=float, help="end this call after about this many minutes of training")
    p.add_argument("--device", default=str(default_device()), help="where to train (default: a GPU if there is one)")
    p.add_argument("--runs", type=Path, default=Path("runs/remedy_table"))
    p.add_argument("--out", type=Path, default=Path("results/04_cvae_cifar10.json"))
    return p.parse_args(argv)


@dataclass(frozen=True)
class Inputs:
    """What every run of the table trains, is tested and is judged on: loaded once, before the first run."""

    all_images: torch.Tensor  # the whole training split, as loaded: the Gaussian yardstick is fitted to it
    train_images: torch.Tensor  # the --per-class images of each class that the models train on
    train_labels: torch.Tensor
    test_images: torch.Tensor  # the first test images (at most --test-images), which test the models
    test_batches: data.Batches
    real_ref: torch.Tensor  # --samples-per-class real images per class, the Fréchet distance's reference
    judge: torch.nn.Module
    real: float  # the judge's accuracy on the real reference images


def load_inputs(args: argparse.Namespace) -> Inputs:
    """The training subset, the test images and the judge with its real reference, as chapter 4 splits them."""
    all_images, all_labels = data.load("cifar10", "train")
    train_images, train_labels = data.stratified_subset(all_images, all_labels, args.per_class)
    test_images, test_labels = data.load("cifar10", "test")
    # As in chapter 4: the first half of the test set tests the models, the second half (its last 5,000
    # images) is the real reference.
    n = min(args.test_images, len(test_images) - 5000)
    test_batches = data.Batches(test_images[:n], test_labels[:n], 250, shuffle=False)
    real_images, real_labels = test_images[-5000:], test_labels[-5000:]
    real_ref = data.stratified_subset(real_images, real_labels, args.samples_per_class)[0].float() / 255
    judge, _ = load_judge("cifar10", args.device)
    real = classifier_accuracy(judge, real_images, real_labels, args.device)
    print(f"judge: {real:.1%} of {len(real_images)} real test images", flush=True)
    return Inputs(all_images, train_images, train_labels, test_images[:n], test_batches, real_ref, judge, real)


def remedy_rows(args: argparse.Namespace, hierarchy: Contender, inputs: Inputs) -> tuple[dict, list] | None:
    """Train (or resume) and judge every run asked for: each remedy's row of seeds, and the grid of its first
    seed's samples. None when ``--max-minutes`` stopped this call before the last run had finished."""
    deadline = None if args.max_minutes is None else time.monotonic() + 60 * args.max_minutes
    minutes = args.minutes or float("inf")  # no limit: the epochs are the budget
    budget = RaceSettings(
        minutes, args.eval_every, args.runs, num_epochs=args.epochs, deadline=deadline, device=args.device
    )
    rows, grids = {}, []
    for name, remedy in chapter_settings(args.warmup, args.free_bits).items():
        if args.only and name not in args.only:
            continue
        contender = replace(hierarchy, remedies=RemedyConfig(**remedy))
        seeds = []
        for seed in range(1 if name in ONE_SEED else args.seeds):
            if args.only_seeds and seed not in args.only_seeds:
                continue
            state, model = race(
                f"{name}_seed{seed}",
                contender,
                inputs.train_images,
                inputs.train_labels,
                inputs.test_batches,
                replace(budget, seed=seed),
            )
            if not state["finished"]:
                print(f"stopped after {args.max_minutes:g} minutes; run the same command again to go on", flush=True)
                return None
            run = args.runs / f"{name}_seed{seed}_figures"
            row, samples = judged_run(model, run, inputs.judge, inputs.test_batches, inputs.real_ref, args)
            seeds.append(
                {
                    "seed": seed,
                    "training_minutes": round(state["seconds"] / 60, 2),
                    "curve": state["curve"],
                    "skipped_updates_per_epoch": state["skipped_updates_per_epoch"],
                    **row,
                }
            )
            print(name, json.dumps({k: v for k, v in seeds[-1].items() if k != "curve"}), flush=True)
            if seed == 0:  # the grid shows the first seed's samples
                first = first_of_each_class(samples, args.samples_per_class, 4)
                grids.append(make_grid(first, nrow=min(4, args.samples_per_class), padding=1, pad_value=1.0))
        # the first seed's figures at the top (its curve and grid are the ones shown), then every seed's
        if seeds:
            rows[name] = {"remedy": asdict(contender.remedies), **seeds[0], "seeds": seeds, "intervals": summary(seeds)}
    return rows, grids


def table_figures(
    args: argparse.Namespace, hierarchy: Contender, inputs: Inputs, rows: dict, grids: list, gaussian: float
) -> dict:
    """The table's figures for the record (``gaussian``: the same-data Gaussian's bits/dim), beside the grid of
    samples they save (one column per remedy)."""
    png = args.out.with_name(f"{args.out.stem}_remedy_samples.png")
    save_image(torch.stack(grids), png, nrow=len(grids), padding=4, pad_value=1.0)
    test_images = inputs.test_images.float() / 255
    return {
        "steps_per_epoch": len(data.Batches(inputs.train_images, inputs.train_labels, hierarchy.batch_size)),
        "runs_training_minutes": round(sum(s["training_minutes"] for r in rows.values() for s in r["seeds"]), 1),
        "model": asdict(hierarchy.model),
        "train": {**asdict(hierarchy.train), "batch_size": hierarchy.batch_size},
        "gaussian_bits_per_dim": round(gaussian, 4),
        "gaussian_training_images": len(inputs.all_images),  # the training split it was fitted to, as loaded
        "judge_accuracy_on_real_test_images": round(inputs.real, 4),
        "frechet_distance_real_vs_real": round(frechet_distance(inputs.judge, inputs.real_ref, test_images), 2),
        "samples_png": png.name,
        "remedies": rows,
    }


def print_table(rows: dict, gaussian: float) -> None:
    """The table in Markdown (the README's): each remedy's mean over its seeds and 95 % interval."""
    print("| remedy | seeds | bits/dim | active groups | judged |  (mean [95 % interval])")
    for name, r in rows.items():
        cells = [_mean_and_interval(r["intervals"][k]) for k in SUMMARISED]
        print(f"| {name} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    print(f"| one full-covariance Gaussian, same data | | {gaussian:.3f} | | |")


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    began, source = time.time(), start_record(args, "budget")
    inputs = load_inputs(args)
    hierarchy = contenders(args.size)["hierarchical"]  # each remedy's run replaces its remedies
    done = remedy_rows(args, hierarchy, inputs)
    if done is None:  # stopped by --max-minutes: its runs are kept in --runs, and the same command goes on
        return None
    rows, grids = done
    if args.only or args.only_seeds:  # a part of the table: its runs are kept in --runs, and the last call writes it
        print(f"trained and judged {', '.join(rows)}; run without --only to write {args.out}", flush=True)
        return None
    gaussian = gaussian_bits_per_dim(inputs.all_images, inputs.test_images)  # the yardstick on this very data
    record = finish_record(source, began, table_figures(args, hierarchy, inputs, rows, grids, gaussian))
    write_record(args.out, record)
    print(f"wrote {args.out} and {args.out.with_name(record['samples_png'])}")
    print_table(rows, gaussian)
    return record


if __name__ == "__main__":
    main()
