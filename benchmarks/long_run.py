"""Chapter 4's hierarchy trained long: its curve of test bits/dim, and the model the course ships.

    OMP_NUM_THREADS=1 python benchmarks/long_run.py --minutes 120 --epochs 20 --eval-every 15

Trains the command line's hierarchical CVAE (``--arch hierarchical``, its ``--size``) on CIFAR-10 with a cosine
learning-rate decay set for ``--epochs`` and the average of the weights (EMA), for ``--minutes`` of training or
``--epochs``, whichever ends first. After every ``--eval-every`` minutes of training it records the minutes, the
epochs, the images per second and the averaged model's bits/dim on the whole test set: a curve. Checkpoints go to
``--runs`` (outside the repository), so an interrupted run resumes: the same command again goes on, and once the
budget is spent it only collects. A run resumed with a larger ``--epochs`` goes on under the cosine of the new
length from the step it reached (the learning rate rises to that cosine's value there, a warm restart); the record's
``schedule`` lists each length planned and where it began. At the end: the IWAE bound (``--k`` samples, on the
first ``--iwae-images`` test images), the same-data full-covariance Gaussian, the diagnosis, the judge's accuracy on
prior samples (the temperature chosen on other samples), and the averaged weights shipped in 16 bits to ``--models``
with their sha256, and the record written to ``--out``.
"""

import argparse
import json
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

from common import (
    CIFAR10_DATA,
    CIFAR10_DIMS,
    JUDGING_SEED,
    Contender,
    RaceSettings,
    chosen_on_one_set,
    contenders,
    diagnosis,
    draw_and_judge,
    finish_record,
    race,
    save_sample_grid,
    shipped_provenance,
    start_record,
    write_record,
)

from cvaelib import data
from cvaelib.baselines import gaussian_bits_per_dim
from cvaelib.diagnostics import diagnose
from cvaelib.evaluate import iwae_bound, negative_elbo
from cvaelib.fitted_prior import fit_prior, sample_with
from cvaelib.judge import classifier_accuracy, load_judge
from cvaelib.losses import bits_per_dim
from cvaelib.provenance import RESULTS, as_json
from cvaelib.shipped import annotate, load_shipped, ship
from cvaelib.train import default_device, seed_everything


def settings(size: str, num_epochs: int) -> Contender:
    """The command line's hierarchy, with a cosine decay of the learning rate to 0 at the end of ``num_epochs``
    (the length the run is planned for)."""
    hierarchy = contenders(size)["hierarchical"]
    return replace(hierarchy, train=replace(hierarchy.train, cosine_decay=True))


def planned(runs: Path, num_epochs: int) -> list:
    """The lengths the run was planned for, each with where (training minutes, epochs) it took over: a resumed run
    with another ``--epochs`` adds one. Kept in ``runs/schedule.json`` beside the checkpoint."""
    path, log = runs / "schedule.json", runs / "hierarchical.json"
    plans = json.loads(path.read_text()) if path.exists() else []
    if not plans or plans[-1]["num_epochs"] != num_epochs:
        reached = json.loads(log.read_text())["curve"][-1] if plans and log.exists() else {"minutes": 0, "epochs": 0}
        plans.append({"num_epochs": num_epochs, "from_minutes": reached["minutes"], "from_epochs": reached["epochs"]})
        path.write_text(json.dumps(plans))
    return plans


def with_speed(curve: list, train_images: int) -> list:
    """Each point of the curve with the images per second of training since the one before."""
    points, last = [], {"minutes": 0.0, "epochs": 0.0}
    for point in curve:
        seconds = 60 * (point["minutes"] - last["minutes"])
        speed = (point["epochs"] - last["epochs"]) * train_images / seconds if seconds > 0 else None
        points.append({**point, "images_per_second": None if speed is None else round(speed, 1)})
        last = point
    return points


def judged(model, judge, temperatures, per_class, sample=None) -> dict:
    """A temperature chosen on one set of samples and judged on another: ``per_class`` samples per class at each
    temperature pick the best (``chosen_on_one_set``); fresh samples at that temperature give its accuracy.
    ``sample`` draws the decoded mean images of labels at a temperature (default: the model's own prior)."""
    sample = sample or (lambda y, t: model.sample(y, temperature=t, mean=True))
    choosing, best = chosen_on_one_set(judge, {t: partial(sample, t=t) for t in temperatures}, per_class)
    verdict, images = draw_and_judge(judge, partial(sample, t=best), per_class, JUDGING_SEED)
    return {"choosing_by_temperature": choosing, "temperature": best, "judged": verdict["accuracy"], "images": images}


def collect(args, state, model, source, began, train_images, train_labels, test_images, test_labels) -> dict:
    """The long run's record: its curve, the bounds, the diagnosis, judged samples from the learned and the fitted
    top prior, and the shipped model with its own check figure."""
    first = data.Batches(test_images[: args.iwae_images], test_labels[: args.iwae_images], 250, shuffle=False)
    seed_everything(0)
    iwae = bits_per_dim(iwae_bound(model, first, k=args.k), CIFAR10_DIMS)
    elbo_first = bits_per_dim(negative_elbo(model, first)["nelbo"], CIFAR10_DIMS)
    gaussian = gaussian_bits_per_dim(train_images, test_images)
    stats_batches = data.Batches(test_images[:2000], test_labels[:2000], 250, shuffle=False)
    groups_png = args.out.with_name(f"{args.out.stem}_groups.png")
    report = diagnosis(model, diagnose(model, stats_batches), stats_batches, groups_png)
    judge, _ = load_judge("cifar10")
    real = classifier_accuracy(judge, *(t[5000:] for t in data.load("cifar10", "test")))  # as the race's record
    learned = judged(model, judge, args.temperatures, args.per_class)
    # the top group's prior fitted to the codes of args.fit_per_class training images per class (fitted_prior)
    fit_x, fit_y = data.stratified_subset(train_images, train_labels, args.fit_per_class, seed=0)
    prior = fit_prior(model, data.Batches(fit_x, fit_y, 250, shuffle=False))
    fitted = judged(
        model,
        judge,
        args.temperatures,
        args.per_class,
        lambda y, t: sample_with(model, prior, y, temperature=t, mean=True),
    )
    for name, result in (("learned", learned), ("fitted", fitted)):
        save_sample_grid(result.pop("images"), args.per_class, args.out.with_name(f"{args.out.stem}_{name}_prior.png"))
    curve = with_speed(state["curve"], len(train_labels))
    figures = {
        "data": CIFAR10_DATA,
        "training_minutes": round(state["seconds"] / 60, 2),
        "training_threads": state["threads"],
        "speed_switches": state["speed"],  # the last process's: bfloat16, channels-last, torch.compile
        "schedule": planned(args.runs, args.epochs),
        "curve": curve,
        "test_bits_per_dim": curve[-1]["test_bits_per_dim"],
        "test_images": len(test_labels),
        "gaussian_bits_per_dim": gaussian,
        "iwae": {"k": args.k, "images": args.iwae_images, "bits_per_dim": iwae, "elbo_bits_per_dim": elbo_first},
        "judge_accuracy_on_real_test_images": real,
        "diagnosis": report,
        "judged_learned_prior": learned,
        "judged_fitted_top_prior": {**fitted, "fit_images_per_class": args.fit_per_class},
    }
    record = finish_record(source, began, figures)
    about = {
        "dataset": "cifar10",
        "data": CIFAR10_DATA,
        "record": args.out.name,
        "provenance": shipped_provenance(source),
    }
    entry = ship(model, args.ship_as, {**about, "test_bits_per_dim": record["test_bits_per_dim"]}, prior, args.models)
    # the figure a test checks the shipped file against: its float16 weights' bits/dim on the first 500 test images
    shipped = load_shipped(args.ship_as, folder=args.models)
    seed_everything(0)
    check = data.Batches(test_images[:500], test_labels[:500], 250, shuffle=False)
    check_bits = bits_per_dim(negative_elbo(shipped, check)["nelbo"], CIFAR10_DIMS)
    annotate(args.ship_as, args.models, check_bits_per_dim_500=check_bits)
    record["shipped"] = {"name": args.ship_as, "bytes": entry["bytes"], "check_bits_per_dim_500": check_bits}
    return as_json(record)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=120.0, help="training minutes at most")
    p.add_argument("--epochs", type=int, default=20, help="epochs at most; the cosine decay ends with the last")
    p.add_argument("--eval-every", type=float, default=15.0, help="minutes of training between two test points")
    p.add_argument("--size", default="small", help="the hierarchical model's size preset")
    p.add_argument("--test-images", type=int, help="test images of the curve and the bound (default: all)")
    p.add_argument("--k", type=int, default=20, help="importance samples of the IWAE bound")
    p.add_argument("--iwae-images", type=int, default=2000, help="test images of the IWAE bound (its cost: K passes)")
    p.add_argument("--per-class", type=int, default=100, help="prior samples per class, per set, for the judge")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.6, 0.8, 1.0])
    p.add_argument("--fit-per-class", type=int, default=1000, help="training images per class to fit the top prior to")
    p.add_argument("--device", default=str(default_device()), help="where to train (default: a GPU if there is one)")
    p.add_argument("--runs", type=Path, default=Path("runs/long_run"), help="checkpoints (outside the repository)")
    p.add_argument("--out", type=Path, default=RESULTS / "04_long_run.json")
    p.add_argument("--models", type=Path, default=RESULTS / "models", help="where the trained model ships")
    p.add_argument("--ship-as", default="cifar10_hierarchy", help="the shipped model's name")
    args = p.parse_args(argv)
    began, source = time.time(), start_record(args, "benchmark")
    train_images, train_labels = data.load("cifar10", "train")
    test_images, test_labels = (t[: args.test_images] for t in data.load("cifar10", "test"))
    test_batches = data.Batches(test_images, test_labels, 500, shuffle=False)
    planned(args.runs, args.epochs)  # before training: a new length takes over where the run stands
    budget = RaceSettings(args.minutes, args.eval_every, args.runs, num_epochs=args.epochs, device=args.device)
    state, model = race(
        "hierarchical", settings(args.size, args.epochs), train_images, train_labels, test_batches, budget
    )
    record = collect(args, state, model.cpu(), source, began, train_images, train_labels, test_images, test_labels)
    write_record(args.out, record)
    print(f"wrote {args.out}; the curve (training minutes, epochs, images/s, test bits/dim):")
    for point in record["curve"]:
        speed, bits = point["images_per_second"], point["test_bits_per_dim"]
        print(f"  {point['minutes']:7.1f} {point['epochs']:7.2f} {speed} {bits:.4f}")
    print(
        f"same-data full-covariance Gaussian: {record['gaussian_bits_per_dim']:.4f} bits/dim; IWAE (K={args.k}, "
        f"first {args.iwae_images} images): {record['iwae']['bits_per_dim']:.4f}"
    )
    for name in ("judged_learned_prior", "judged_fitted_top_prior"):
        r = record[name]
        print(f"{name}: {r['judged']:.1%} at temperature {r['temperature']} (chosen on other samples)")


if __name__ == "__main__":
    main()
