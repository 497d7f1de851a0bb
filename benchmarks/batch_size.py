"""Chapter 4's hierarchy at two batch sizes on one budget of training minutes, with several seeds: test bits/dim.

    python benchmarks/batch_size.py --minutes 20 --seeds 0 1 2

Batch 64 trains more images per second than batch 32 (``training_speed.py``) but takes half the updates per
image; only the test curve says which ends lower within the same minutes. Each run is chapter 4's race for the
hierarchy (``common.race``: the command line's model, remedies, learning rate and warm-up, the speed switches, the
average of the weights, a checkpoint per run in ``--runs`` so that an interrupted call resumes) with only the batch
size changed. Seed s of one batch size starts from the same weights as seed s of the other, so the runs are
compared seed by seed: the 95 % interval of the paired differences of the final test bits/dim
(``cvaelib.comparison.difference``). ``--only`` trains one batch size per call, so that two calls can share the
cores (one thread each: each pair of runs then meets the same contention); the call that finds every run finished
writes the record, with its provenance, to ``--out``.
"""

import argparse
import time
from dataclasses import replace
from pathlib import Path

from common import RaceSettings, contenders, finish_record, race, start_record, write_record

from cvaelib import data
from cvaelib.comparison import difference
from cvaelib.train import default_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options (``--help`` lists them)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs=2, default=[32, 64], help="the baseline's, then the changed one's")
    p.add_argument("--only", type=int, help="train only this batch size in this call (the record waits for both)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minutes", type=float, default=20.0, help="training minutes per run")
    p.add_argument("--eval-every", type=float, default=10.0, help="minutes of training between two test points")
    p.add_argument("--test-images", type=int, default=2000, help="test images of the curve")
    p.add_argument("--size", default="small", help="the hierarchical model's size preset")
    p.add_argument("--device", default=str(default_device()), help="where to train (default: a GPU if there is one)")
    p.add_argument("--runs", type=Path, default=Path("runs/batch_size"), help="checkpoints (outside the repository)")
    p.add_argument("--out", type=Path, default=Path("results/benchmark_batch_size.json"))
    args = p.parse_args(argv)
    if args.only is not None and args.only not in args.batch_sizes:
        p.error(f"--only {args.only} is not one of --batch-sizes {args.batch_sizes}")
    if len(set(args.seeds)) < 2:
        p.error("--seeds needs at least two different seeds: the comparison's interval rests on them")
    return args


def main(argv: list[str] | None = None) -> dict | None:
    """Train the runs asked for; the record once every run has finished (else None)."""
    args = parse_args(argv)
    began, source = time.time(), start_record(args, "benchmark")
    train_images, train_labels = data.load("cifar10", "train")
    test_images, test_labels = data.load("cifar10", "test")
    test_batches = data.Batches(test_images[: args.test_images], test_labels[: args.test_images], 250, shuffle=False)
    hierarchy = contenders(args.size)["hierarchical"]
    names = {(b, seed): f"batch{b}_seed{seed}" for b in args.batch_sizes for seed in args.seeds}
    runs = {}
    # this call's own runs first, then the other batch size's, looked at but not trained (a deadline already passed):
    # so the call that ends last finds every run finished
    for b, seed in sorted(names, key=lambda key: key[0] != args.only):
        deadline = -1.0 if args.only not in (None, b) else None
        settings = RaceSettings(
            args.minutes, args.eval_every, args.runs, seed=seed, deadline=deadline, device=args.device
        )
        hierarchy_at_b = replace(hierarchy, batch_size=b)
        runs[names[b, seed]], _ = race(
            names[b, seed], hierarchy_at_b, train_images, train_labels, test_batches, settings
        )
    unfinished = [name for name in names.values() if not runs[name]["finished"]]
    if unfinished:
        print(f"the record waits for {', '.join(unfinished)}")
        return None
    figures = {"runs": {}, "final_test_bits_per_dim": {str(b): [] for b in args.batch_sizes}}
    for (b, _), name in names.items():
        last = runs[name]["curve"][-1]
        figures["runs"][name] = {
            "curve": runs[name]["curve"],
            "training_threads": runs[name]["threads"],
            "images_per_second": round(last["epochs"] * len(train_images) / (60 * last["minutes"]), 1),
        }
        figures["final_test_bits_per_dim"][str(b)].append(last["test_bits_per_dim"])
    baseline, changed = (figures["final_test_bits_per_dim"][str(b)] for b in args.batch_sizes)
    d = difference(changed, baseline, paired=True, higher_is_better=False)
    figures["difference"] = {"mean": round(d.mean, 4), "low": round(d.low, 4), "high": round(d.high, 4)}
    figures["verdict"] = f"batch {args.batch_sizes[1]} against {args.batch_sizes[0]}: {d}"
    record = finish_record(source, began, figures)
    write_record(args.out, record)
    print(f"wrote {args.out}\n{figures['verdict']}")
    return record


if __name__ == "__main__":
    main()
