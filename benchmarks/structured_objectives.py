"""Chapter 5's table, the other two rows of Sohn et al. (2015): the CVAE's networks trained as a GSNN and hybrid.

    python benchmarks/structured_objectives.py                         # all six models, then the results file
    python benchmarks/structured_objectives.py --models gsnn:1 gsnn:2  # some of them (say, one process per core)

Each model is chapter 5's ``StructuredCVAE`` (latent_dim 200), trained exactly as the chapter trains its CVAE
(all training images, batches of 64, Adam 1e-3, seed 0, ``--epochs`` epochs) but with another objective:
``gsnn`` (z drawn from the prior network, as at test time) or ``hybrid`` (``--alpha`` times the -ELBO plus the
rest times the GSNN's). ``fit`` checkpoints each model in ``--runs``, so a run stopped by ``--max-minutes``
goes on where it stopped. A trained model is evaluated on the test images as the chapter's table evaluates its
CVAE (10-sample bounds, importance sampling with ``--k`` samples), plus the spread and sharpness of its samples,
and its figures go to ``--runs/<objective>_<num_given>.json``. Once all six are there, they are collected with
their provenance into ``--out``, which chapter 5 shows beside its own rows, and a grid of samples beside it.
"""

import argparse
import json
import time
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from common import write_record  # noqa: E402

from cvaelib import data, plots  # noqa: E402
from cvaelib.provenance import as_json, provenance  # noqa: E402
from cvaelib.structured import (
    StructuredCVAE,
    evaluate,
    sample_spread,
    show_input,
    split_quadrants,
    structured_loss,
)  # noqa: E402
from cvaelib.train import fit, seed_everything  # noqa: E402

OBJECTIVES = ("gsnn", "hybrid")
ALL_MODELS = [f"{objective}:{n}" for objective in OBJECTIVES for n in (1, 2, 3)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=ALL_MODELS, help="objective:num_given, e.g. gsnn:1")
    parser.add_argument("--epochs", type=int, default=30, help="as chapter 5's cvae_epochs (full profile)")
    parser.add_argument("--k", type=int, default=100, help="importance samples per test image, as chapter 5")
    parser.add_argument("--alpha", type=float, default=0.5, help="the ELBO's weight in the hybrid objective")
    parser.add_argument("--train-per-class", type=int, default=None, help="a subset, for a quick check")
    parser.add_argument("--test-per-class", type=int, default=None, help="a subset, for a quick check")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (and checkpoint) after this long")
    parser.add_argument("--runs", type=Path, default=Path("runs/structured_objectives"))
    parser.add_argument("--out", type=Path, default=Path("results/benchmark_structured_objectives.json"))
    args = parser.parse_args(argv)
    for name in args.models:  # every bad name before any work
        objective, _, n = name.partition(":")
        if objective not in OBJECTIVES or n not in ("1", "2", "3"):
            parser.error(f"--models: {name!r} is not objective:num_given with objective in {OBJECTIVES} and 1-3")
    if not 0 <= args.alpha <= 1:
        parser.error(f"--alpha must be in [0, 1], got {args.alpha}")
    return args


def settings(args) -> dict:
    """What the figures depend on; chapter 5 checks them against its full profile."""
    keys = ("train_per_class", "test_per_class", "epochs", "k", "alpha")
    return {key: getattr(args, key) for key in keys}


def profile_of(args) -> str:
    """The profile a run belongs to: full on all the images, as chapter 5's; smoke on subsets (a quick check)."""
    return "full" if args.train_per_class is None and args.test_per_class is None else "smoke"


def subset(images, labels, per_class):
    return (images, labels) if per_class is None else data.stratified_subset(images, labels, per_class, 0)


def run_files(args, name: str) -> tuple[Path, Path]:
    """Where model ``name`` ("gsnn:1") keeps its figures and its checkpoint: ``--runs/gsnn_1.json`` and ``.pt``."""
    stem = args.runs / name.replace(":", "_")
    return stem.with_suffix(".json"), stem.with_suffix(".pt")


def train_and_evaluate(name, args, train, test, out_of_time):
    """Train (or resume) one model; its figures in ``--runs/<name>.json``, or None when stopped by the clock."""
    objective, num_given = name.split(":")[0], int(name.split(":")[1])
    figures_path, checkpoint = run_files(args, name)
    if figures_path.exists():
        return json.loads(figures_path.read_text())
    resumed = checkpoint.exists()
    seed_everything(0)
    model = StructuredCVAE()
    loss_fn = partial(structured_loss, num_given=num_given, objective=objective, alpha=args.alpha)
    start = time.perf_counter()
    history = fit(
        model,
        loss_fn,
        train,
        args.epochs,
        test_batches=test,
        checkpoint=checkpoint,
        meta={"model": checkpoint.stem, **settings(args)},  # "gsnn_1"
        max_minutes=out_of_time(),
    )
    train_seconds = time.perf_counter() - start
    if len(history) < args.epochs:
        return None
    start = time.perf_counter()
    torch.manual_seed(0)
    figures = evaluate(model, test, num_given, num_samples=10, k=args.k, objective=objective)
    x_test, device = test.images, next(model.parameters()).device  # the GPU where there is one (fit's default)
    x, _, _ = split_quadrants(x_test[:200].to(device).float().div(255), num_given)  # as chapter 5 measures it
    torch.manual_seed(0)
    figures.update(sample_spread(model, x))
    if num_given == 1:  # what its samples look like, where the answer is most open
        x, _, mask = split_quadrants(x_test[:10].to(device).float().div(255), 1)
        torch.manual_seed(0)
        samples = model.predict(x, 3)  # (3, 10, 1, 28, 28)
        rows = torch.cat([show_input(x), *(x * (1 - mask) + s * mask for s in samples)])  # (40, 1, 28, 28)
        fig = plots.image_grid(rows, nrow=10, title=f"{objective}, 1 quadrant given: inputs, then 3 samples")
        fig.savefig(figures_path.with_suffix(".png"), dpi=60, bbox_inches="tight")
        plt.close(fig)
    record = provenance(
        train_seconds + time.perf_counter() - start,
        settings(args),
        profile=profile_of(args),
        figures=as_json(figures),
        train_seconds=round(train_seconds, 1),
        resumed=resumed,
        last_epoch=as_json(history[-1]),
    )
    write_record(figures_path, record)
    return record


def collect(records: dict, args) -> dict:
    """The results file from six finished models, which must come from one commit and one setting."""
    commits = {r["commit"] for r in records.values()}
    if len(commits) != 1 or any(r["settings"] != as_json(settings(args)) for r in records.values()):
        raise SystemExit(
            f"the models in {args.runs} come from different commits or settings ({commits}): "
            "train them again in an empty --runs folder"
        )
    figures = {objective: {} for objective in OBJECTIVES}
    for name, record in records.items():
        objective, n = name.split(":")
        figures[objective][n] = {**record["figures"], "train_seconds": record["train_seconds"]}
    result = provenance(
        sum(r["wall_seconds"] for r in records.values()),
        as_json(settings(args)),
        profile=profile_of(args),
        figures=figures,
        resumed=sorted(name for name, r in records.items() if r["resumed"]),
    )
    result["commit"], result["date"] = commits.pop(), max(r["date"] for r in records.values())
    result["device"] = " / ".join(sorted({r["device"] for r in records.values()}))  # where the models trained
    images = {}
    for objective in OBJECTIVES:
        png = run_files(args, f"{objective}:1")[0].with_suffix(".png")
        images[objective] = f"{args.out.stem}_{objective}.png"
        (args.out.parent / images[objective]).write_bytes(png.read_bytes())
    result["images"] = images
    return result


def main(argv=None):
    args = parse_args(argv)
    args.runs.mkdir(parents=True, exist_ok=True)
    train = data.Batches(*subset(*data.load("mnist", "train"), args.train_per_class), 64, shuffle=True, seed=0)
    test = data.Batches(*subset(*data.load("mnist", "test"), args.test_per_class), 500, shuffle=False)
    started = time.monotonic()

    def out_of_time():  # the minutes left for the next model, or None without --max-minutes
        if args.max_minutes is None:
            return None
        return max(args.max_minutes - (time.monotonic() - started) / 60, 1e-6)  # fit needs a positive budget

    for name in args.models:
        record = train_and_evaluate(name, args, train, test, out_of_time)
        if record is None:
            print(f"{name}: stopped after --max-minutes; run the same command again to go on")
            return
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in record["figures"].items()))
    done = {name: run_files(args, name)[0] for name in ALL_MODELS}
    records = {name: json.loads(path.read_text()) for name, path in done.items() if path.exists()}
    if len(records) < len(ALL_MODELS):
        print(f"{len(records)} of {len(ALL_MODELS)} models done; {args.out} is written once all are")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_record(args.out, collect(records, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
