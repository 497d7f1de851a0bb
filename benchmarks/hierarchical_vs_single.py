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
from dataclasses import asdict, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch
from torchvision.utils import save_image

from cvaelib import data, plots
from cvaelib.baselines import gaussian_bits_per_dim
from cvaelib.checkpoint import read_checkpoint, refuse_another_run
from cvaelib.diagnostics import diagnose
from cvaelib.judge import classifier_accuracy, judge_samples, load_judge
from cvaelib.losses import bits_per_dim
from cvaelib.models import build_model
from cvaelib.provenance import provenance
from cvaelib.recipes import HIERARCHICAL, default_recipe
from cvaelib.remedies import RemedyLoss, group_kls
from cvaelib.train import SpeedConfig, default_device, ema_of, evaluate_loss, fit, seed_everything


def contenders(size: str = "small") -> dict:
    """name -> (model, remedy and optimisation configurations, batch size): the command line's defaults.

    The single-latent conv CVAE gets the hierarchical model's likelihood and learning-rate warm-up, so
    that only the latents differ.
    """
    single, hierarchical = default_recipe("cifar10"), default_recipe("cifar10", "hierarchical")
    single_model = replace(single.model, likelihood="logistic_mixture")
    single_optim = replace(single.train, warmup_steps=HIERARCHICAL.train.warmup_steps)
    return {
        "single_latent": (single_model, single.remedies, single_optim, single.batch_size),
        "hierarchical": (
            hierarchical.model.resized(size),
            hierarchical.remedies,
            hierarchical.train,
            hierarchical.batch_size,
        ),
    }


def start_record(args, profile: str) -> dict:
    """Make the output folders; the provenance of a run, taken before any work (the commit it starts from)."""
    args.runs.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if not isinstance(v, Path)}  # not the folders it writes
    data_note = "CIFAR-10 training split of the offline copy: 25,000 images (half of the real one), decoded from JPEG"
    return provenance(0.0, settings, profile=profile, data=data_note)


def evaluate_point(model, loss, test_batches, device) -> dict:
    """Test bits/dim (the true negative ELBO, whatever the remedy) and, for a hierarchy, the KL of each group."""
    parts = evaluate_loss(model, loss, test_batches, device)
    point = {"test_bits_per_dim": round(bits_per_dim(parts["nelbo"], 3 * 32 * 32), 4)}
    kls = group_kls(parts)
    if kls:
        point["test_kl_groups_nats"] = [round(k, 2) for k in kls]
    return point


def race(
    name,
    settings,
    train_images,
    train_labels,
    test_batches,
    minutes,
    eval_every,
    runs,
    num_epochs=10_000,
    seed=0,
    deadline=None,
    device="cpu",
):
    """Train a contender for ``minutes`` of training time (or ``num_epochs``, whichever ends first); its state
    (seconds, and a curve of test bits/dim and KL per group at every ``eval_every`` minutes) and model.

    Each ``fit`` call trains ``eval_every`` minutes and saves the checkpoint; the next one resumes from it.
    ``seed`` seeds the weights, the batches and the noise. With ``deadline`` (a ``time.monotonic()`` value),
    no new ``eval_every`` chunk starts after it: then the state has ``finished`` False and the model is None,
    and calling again goes on. Both models train with the speed switches of ``--arch hierarchical`` on
    ``device`` (they change how fast, not what).
    """
    model_config, remedies, optim, batch_size = settings
    optim = replace(optim, seed=seed)
    seed_everything(seed)
    model = build_model(model_config).to(device)  # a finished run is only loaded: fit never moves it
    batches = data.Batches(train_images, train_labels, batch_size, seed=seed)
    checkpoint, log = runs / f"{name}.pt", runs / f"{name}.json"
    meta = {"model": asdict(model_config), "remedies": asdict(remedies), "train": asdict(optim), "batch": batch_size}
    if checkpoint.exists():  # another setting's run under this name is refused, finished or not
        refuse_another_run(read_checkpoint(checkpoint), meta, checkpoint, "--runs folder")
    fresh = {"seconds": 0.0, "curve": [], "done": False, "threads": torch.get_num_threads()}
    state = {**fresh, **json.loads(log.read_text())} if log.exists() and checkpoint.exists() else fresh
    loss = RemedyLoss(remedies, steps_per_epoch=len(batches))
    ema = ema_of(model, HIERARCHICAL.ema)

    def train(max_minutes):
        history = fit(
            model,
            loss,
            batches,
            num_epochs,
            config=optim,
            checkpoint=checkpoint,
            meta=meta,
            progress=False,
            max_minutes=max_minutes,
            device=device,
            speed=SpeedConfig.default("hierarchical", device),
            ema=ema,
        )
        return len(history) >= num_epochs

    def finished():
        return state["done"] or state["seconds"] >= 60 * minutes - 1

    while not finished():
        if deadline is not None and time.monotonic() > deadline:
            return {**state, "finished": False}, None
        start = time.monotonic()
        state["done"] = train(min(eval_every, minutes - state["seconds"] / 60))
        state["seconds"] += time.monotonic() - start
        saved = torch.load(checkpoint, weights_only=True, map_location="cpu")
        epochs = saved["epoch"] + (saved["partial"]["steps"] / len(batches) if saved.get("partial") else 0.0)
        point = {"minutes": round(state["seconds"] / 60, 2), "epochs": round(epochs, 3)}
        state["curve"].append({**point, **evaluate_point(ema.module.eval(), loss, test_batches, device)})
        log.write_text(json.dumps(state))
        print(name, state["curve"][-1], flush=True)
    if checkpoint.exists():  # the weights at the end of training (also for a benchmark whose budget was spent)
        saved = torch.load(checkpoint, weights_only=True, map_location=device)
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        # updates the guard skipped for a huge gradient, in each epoch: a run that skips them all has stopped learning
        state["skipped_updates_per_epoch"] = [h.get("skipped_updates", 0) for h in saved["history"]]
    state["trained_weights"] = evaluate_point(model.eval(), loss, test_batches, device)  # without the average
    return {**state, "finished": True}, ema.module.eval()


def judged(model, judge, temperatures, per_class, out_png):
    """Judged accuracy of ``per_class`` prior samples per class at each temperature; a grid at the best."""
    labels = torch.arange(10).repeat_interleave(per_class)
    scores, grids = {}, {}
    for t in temperatures:
        seed_everything(0)
        samples = model.sample(labels, temperature=t, mean=True)  # the decoded image, as every chapter shows
        scores[t] = judge_samples(judge, samples, labels)
        grids[t] = samples.view(10, per_class, *samples.shape[1:])[:, :8].flatten(0, 1)
    best = max(scores, key=lambda t: scores[t]["accuracy"])
    save_image(grids[best], out_png, nrow=8, padding=1, pad_value=1.0)
    return {
        "accuracy_by_temperature": {str(t): round(s["accuracy"], 4) for t, s in scores.items()},
        "best_temperature": best,
        "per_class_at_best": [round(a, 4) for a in scores[best]["per_class"].tolist()],
        "samples_png": out_png.name,
    }


def diagnosis(model, d, test_batches, out_png) -> dict:
    """The ``diagnose`` report in figures, and for a hierarchy the figure that draws one group at a time from
    its prior (``plots.group_resampling``, on the first 8 test images), saved to ``out_png``."""
    record = {
        "images": test_batches.images.shape[0],
        "group_shapes": getattr(model, "group_shapes", None),  # (channels, height, width) of each group
        "verdict": d["verdict"],
        "evidence": d["evidence"],
        "active_units": d["active_units"],
        "latent_dim": d["latent_dim"],
        "decoder_sensitivity": round(d["decoder_sensitivity"], 4),
        # I(x; z | y) for one group; None for a hierarchy, whose groups give I(z_g; x, z_<g | y) each
        "mutual_information_nats": None if d["mutual_information"] is None else round(d["mutual_information"], 3),
        "groups": [{k: round(v, 3) if isinstance(v, float) else v for k, v in g.items()} for g in d["groups"]],
    }
    if len(d["groups"]) > 1:
        x, y = (t[:8] for t in next(iter(test_batches)))
        fig = plots.group_resampling(model, x, y)
        fig.savefig(out_png, bbox_inches="tight", dpi=120)
        plt.close(fig)
        record["resampling_png"] = out_png.name
    return record


def main(argv=None):
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
    args = p.parse_args(argv)
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
    for name, settings in contenders(args.size).items():
        if args.only and name not in args.only:
            continue
        state, model = race(
            name,
            settings,
            train_images,
            train_labels,
            test_batches,
            args.minutes,
            args.eval_every,
            args.runs,
            device=args.device,
        )
        d = diagnose(model, test_batches)  # on all the race's test images: the cap is log of the images per class
        model_config, remedies, optim, batch_size = settings
        figures["models"][name] = {
            "settings": {
                "model": asdict(model_config),
                "remedies": asdict(remedies),
                "train": asdict(optim),
                "batch_size": batch_size,
            },
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
            "diagnosis": diagnosis(model, d, test_batches, args.out.with_name(f"{args.out.stem}_{name}_groups.png")),
            "judged": judged(
                model, judge, args.temperatures, args.per_class, args.out.with_name(f"{args.out.stem}_{name}.png")
            ),
        }
        print(name, json.dumps(figures["models"][name]["judged"]), flush=True)
    record = {**source, "wall_seconds": round(time.time() - began, 1), **figures}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    print("| model | minutes | test bits/dim | judged (best temperature) |")
    for name, m in figures["models"].items():
        best = m["judged"]["best_temperature"]
        accuracy = m["judged"]["accuracy_by_temperature"][str(best)]
        print(f"| {name} | {m['training_minutes']} | {m['test_bits_per_dim']:.3f} | {accuracy:.1%} (T={best}) |")
    print(f"| one full-covariance Gaussian, same data | | {gaussian:.3f} | |")
    if math.isfinite(real):
        print(f"| real test images | | | {real:.1%} |")


if __name__ == "__main__":
    main()
