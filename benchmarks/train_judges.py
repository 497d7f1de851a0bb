"""Train the judges: one classifier per dataset, trained on its real training images (chapters 2-4).

    python benchmarks/train_judges.py                          # all three datasets (about 30 minutes on 2 cores)
    python benchmarks/train_judges.py --datasets mnist --epochs 1 --out /tmp/judges   # a quick look

A generated "7" counts as a 7 when a classifier that knows real digits well says so. Each judge is
``cvaelib.judge.Classifier`` (five 3x3 convolutions with batch norm) trained by
``judge.train_classifier`` (shifts by up to 2 pixels, mirrors for Fashion-MNIST and CIFAR-10, SGD
with warm-up and cosine decay). Its weights go to ``<out>/judge_<dataset>.pt`` (a state dict, read
with ``weights_only=True``) and its accuracy on the real test images, with provenance, to
``<out>/judges.json``, which ``judge.load_judge`` checks on every load. Each training is
checkpointed in ``--runs``: an interrupted run resumes.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from common import write_record

from cvaelib import data
from cvaelib.judge import CHECK_IMAGES, classifier_accuracy, train_classifier
from cvaelib.provenance import as_json, provenance
from cvaelib.train import SpeedConfig, bf16_is_fast

EPOCHS = {"mnist": 8, "fashion_mnist": 20, "cifar10": 40}
MIRROR = {"mnist": False, "fashion_mnist": True, "cifar10": True}  # a mirrored digit is another glyph


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(EPOCHS), choices=list(EPOCHS))
    p.add_argument("--epochs", type=int, help="epochs for every dataset (default: " + str(EPOCHS) + ")")
    p.add_argument("--per-class", type=int, help="train on this many images per class (default: all)")
    p.add_argument("--runs", type=Path, default=Path("runs/judges"))
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be positive")
    speed = SpeedConfig(bf16=bf16_is_fast("cpu"), channels_last=True)  # measured 1.9x faster where bf16 is native
    args.out.mkdir(parents=True, exist_ok=True)
    index_path = args.out / "judges.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for name in args.datasets:
        began = time.time()
        num_epochs = args.epochs or EPOCHS[name]
        settings = {"epochs": num_epochs, "per_class": args.per_class, "mirror": MIRROR[name], **as_json(vars(speed))}
        images, labels = data.load(name, "train")
        if args.per_class is not None:
            images, labels = data.stratified_subset(images, labels, args.per_class)
        test_images, test_labels = data.load(name, "test")
        source = provenance(0.0, settings, profile="benchmark", data=f"{name}: {len(images)} training images")
        judge, history = train_classifier(
            images,
            labels,
            test_images,
            test_labels,
            num_epochs=num_epochs,
            mirror=MIRROR[name],
            speed=speed,
            checkpoint=args.runs / f"judge_{name}.pt",
        )
        judge = judge.float().to(memory_format=torch.contiguous_format)
        weights = args.out / f"judge_{name}.pt"
        torch.save(judge.state_dict(), weights)
        test_accuracy = classifier_accuracy(judge, test_images, test_labels)
        check = classifier_accuracy(judge, test_images[:CHECK_IMAGES], test_labels[:CHECK_IMAGES])
        index[name] = {
            **source,
            "wall_seconds": round(time.time() - began, 1),
            "weights": weights.name,
            "test_accuracy": round(test_accuracy, 4),
            "check_accuracy": round(check, 4),  # on the first CHECK_IMAGES test images, what load_judge checks
            "history": as_json(history),
        }
        seconds = index[name]["wall_seconds"]
        print(f"{name}: {test_accuracy:.2%} on {len(test_images)} real test images, {seconds:.0f} s")
        write_record(index_path, index)
    return index


if __name__ == "__main__":
    main()
