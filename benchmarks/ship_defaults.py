"""The command line's default CVAEs, trained and shipped with the course (chapters 2 and 3 show them live).

    OMP_NUM_THREADS=1 python benchmarks/ship_defaults.py --datasets mnist fashion_mnist --runs /tmp/ship

For each dataset: ``python -m cvaelib train --dataset D`` with the default recipe (its checkpoint in ``--runs``, so
an interrupted run resumes), which also fits a prior per class to the codes of the training images; then a mixture
of ``--components`` Gaussians per class is fitted too, and the judge classifies ``--samples-per-class`` samples per
class from the learned prior and from each fitted prior, and the reconstructions of the first 2,000 test images.
The model ships (``cvaelib.shipped``: 16-bit weights, the better fitted prior by judged accuracy on a first set of
samples, judged again on a second) with these figures in its manifest entry and in ``--out``.
"""

import argparse
import time
from pathlib import Path

from common import JUDGING_SEED, chosen_on_one_set, judged_accuracy, record_at_end, shipped_provenance, write_record

from cvaelib import data, load_checkpoint
from cvaelib.cli import main as cli
from cvaelib.fitted_prior import FittedPrior, fit_prior, sample_with
from cvaelib.judge import classifier_accuracy, load_judge, reconstructions_judged
from cvaelib.provenance import RESULTS, as_json, provenance
from cvaelib.shipped import ship


def ship_default(dataset: str, runs: Path, components: int, per_class: int, models: Path, quick=()) -> dict:
    """Train (or resume) the default, judge its priors, ship it; its figures. ``quick``: options for ``train``
    that make a short check of it (``--subset``, ``--epochs``)."""
    checkpoint = runs / f"{dataset}_default.pt"
    start = time.perf_counter()
    cli(["train", "--dataset", dataset, "--out", str(checkpoint), "--device", "cpu", "--no-progress", *quick])
    seconds = time.perf_counter() - start  # the whole command: training, test passes, the fitted Gaussian
    model = load_checkpoint(checkpoint)
    images, labels = data.stratified_subset(*data.load(dataset, "train"), model.meta["train"]["subset"])
    priors = {"1": FittedPrior.from_state(model.meta["fitted_prior"])}
    priors[str(components)] = fit_prior(model, data.Batches(images, labels, 2000, shuffle=False), components)
    judge, _ = load_judge(dataset)
    test_images, test_labels = data.load(dataset, "test")

    def draw(prior):
        return lambda y: sample_with(model, prior, y)

    # the prior that ships is chosen on one set of samples and judged on another
    choosing, best = chosen_on_one_set(judge, {k: draw(p) for k, p in priors.items()}, per_class)
    figures = {
        "command_seconds": seconds,
        "test_negative_elbo_nats": model.meta["history"][-1]["test_nelbo"],
        "judge_on_real_test": classifier_accuracy(judge, test_images, test_labels),
        "reconstructions_judged": reconstructions_judged(judge, model, test_images[:2000], test_labels[:2000]),
        "learned_prior_judged": judged_accuracy(judge, model.sample, per_class, JUDGING_SEED),
        "fitted_prior_choosing": choosing,
        "fitted_prior_components": int(best),
        "fitted_prior_judged": judged_accuracy(judge, draw(priors[best]), per_class, JUDGING_SEED),
        "samples_per_class": per_class,
    }
    about = shipped_provenance(provenance(0.0, {}))
    record = {"dataset": dataset, "recipe": "recipes.default_recipe", "provenance": about, "figures": as_json(figures)}
    entry = ship(model, f"{dataset}_default", record, priors[best], models)
    return {**figures, "bytes": entry["bytes"], "sha256": entry["sha256"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"], choices=["mnist", "fashion_mnist"])
    p.add_argument("--components", type=int, default=10, help="Gaussians per class of the fitted mixture")
    p.add_argument("--samples-per-class", type=int, default=500, help="per set: one chooses the prior, one judges")
    p.add_argument("--runs", type=Path, default=Path("runs/ship_defaults"), help="checkpoints (outside the repository)")
    p.add_argument("--models", type=Path, default=RESULTS / "models", help="where the models ship")
    p.add_argument("--out", type=Path, default=RESULTS / "benchmark_shipped_defaults.json")
    p.add_argument("--subset", type=int, help="train on this many images per class (a short check of this script)")
    p.add_argument("--epochs", type=int, help="train this many epochs instead of the default's (a short check)")
    args = p.parse_args(argv)
    quick = [w for flag, v in (("--subset", args.subset), ("--epochs", args.epochs)) if v for w in (flag, str(v))]
    began = time.time()
    results = {
        d: ship_default(d, args.runs, args.components, args.samples_per_class, args.models, quick)
        for d in args.datasets
    }
    write_record(args.out, as_json(record_at_end(args, began, models=results)))
    for d, r in results.items():
        print(
            f"{d}: learned prior {r['learned_prior_judged']:.1%}, fitted ({r['fitted_prior_components']} per class) "
            f"{r['fitted_prior_judged']:.1%}, reconstructions {r['reconstructions_judged']:.1%}, real "
            f"{r['judge_on_real_test']:.1%}; {r['bytes'] / 1e6:.2f} MB shipped; train took {r['command_seconds']:.0f} s"
        )


if __name__ == "__main__":
    main()
