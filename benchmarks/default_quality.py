"""Does the default model draw the class it is asked for? Train it, judge its samples.

    python benchmarks/default_quality.py --dataset mnist

Trains the command line's default CVAE for the dataset (or resumes it from --out),
loads the course's judge (``cvaelib.judge.load_judge``), draws --n-per-class prior
samples per class, and prints: training time, test negative ELBO, the judge's accuracy on
real test images, the judged accuracy of the samples (overall and worst class) and the
Fréchet distance on the judge's features (samples vs real test images, and real train vs
real test as the floor).
"""

import argparse
import json
import time
from pathlib import Path

from common import draw_and_judge

from cvaelib import data, load_checkpoint
from cvaelib.cli import main as cli
from cvaelib.evaluate import negative_elbo
from cvaelib.judge import classifier_accuracy, frechet_distance, load_judge


def run(dataset, out, epochs=None, subset=None, n_per_class=500, test_size=None, device="cpu"):
    args = ["train", "--dataset", dataset, "--out", str(out), "--device", device, "--no-progress"]
    args += [] if epochs is None else ["--epochs", str(epochs)]
    args += [] if subset is None else ["--subset", str(subset)]
    start = time.time()
    cli(args)
    train_seconds = time.time() - start

    x, y = data.load(dataset, "train")
    xt, yt = data.load(dataset, "test")
    xt, yt = xt[:test_size], yt[:test_size]
    if subset is not None:
        x, y = data.stratified_subset(x, y, subset)
    judge, _ = load_judge(dataset, device)

    model = load_checkpoint(out, device)
    verdict, samples = draw_and_judge(judge, lambda y: model.sample(y.to(device)), n_per_class)
    real_test = xt.float() / 255
    return {
        "dataset": dataset,
        "model": model.config,
        "epochs": model.meta["epoch"],
        "train_seconds": round(train_seconds, 1),
        "test_negative_elbo_nats": round(negative_elbo(model, data.Batches(xt, yt, 1000, shuffle=False))["nelbo"], 2),
        "judge_real_test_accuracy": round(classifier_accuracy(judge, xt, yt), 4),
        "judged_accuracy": round(verdict["accuracy"], 4),
        "worst_class": data.class_names(dataset)[int(verdict["per_class"].argmin())],
        "worst_class_accuracy": round(float(verdict["per_class"].min()), 4),
        "frechet_samples_vs_test": round(frechet_distance(judge, real_test, samples), 2),
        "frechet_train_vs_test": round(frechet_distance(judge, real_test, x[: len(xt)].float() / 255), 2),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", choices=sorted(data.DATASETS))
    p.add_argument("--out", type=Path, help="checkpoint (default runs/default_<dataset>.pt)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--subset", type=int, help="images per class (for a quick check)")
    p.add_argument("--n-per-class", type=int, default=500)
    p.add_argument("--test-size", type=int, help="judge against the first N test images (default all)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    result = run(
        a.dataset,
        a.out or Path(f"runs/default_{a.dataset}.pt"),
        a.epochs,
        a.subset,
        a.n_per_class,
        a.test_size,
        a.device,
    )
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value if not isinstance(value, dict) else json.dumps(value)}")
    return result


if __name__ == "__main__":
    main()
