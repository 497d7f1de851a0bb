"""How long ``python -m cvaelib evaluate`` takes with its defaults on the whole CIFAR-10 test set.

    python benchmarks/evaluate_speed.py                 # the whole test set (target: within 3 minutes on 2 cores)
    python benchmarks/evaluate_speed.py --n 1000        # a quick look

Trains the CIFAR-10 default model (the conv CVAE) for one epoch into ``--checkpoint`` if it is not there,
then times the command line's ``evaluate`` on it, as a user runs it, in a fresh process, and prints its wall
time with the figures it printed (bits/dim and the IWAE bound with its K). Run it alone: a second job on
the same cores measures contention.
"""

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path


def cvaelib(*args: str) -> tuple[float, str]:
    """Run ``python -m cvaelib ARGS`` in a fresh process: its wall time in seconds and its standard output."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cvaelib", *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, done.stdout


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("runs/evaluate_speed/cvae_cifar10.pt"))
    p.add_argument("--n", type=int, help="evaluate on the first N test images (default: all, as evaluate does)")
    p.add_argument("--target-minutes", type=float, default=3.0)
    p.add_argument("--subset", type=int, help="train the checkpoint on this many images per class (a quick check)")
    args = p.parse_args(argv)
    if not args.checkpoint.exists():
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        subset = ["--subset", str(args.subset)] if args.subset else []
        seconds, _ = cvaelib("train", "--dataset", "cifar10", "--epochs", "1", "--out", str(args.checkpoint),
                             "--no-progress", *subset)  # fmt: skip
        print(f"trained the CIFAR-10 default model for one epoch in {seconds:.0f} s: {args.checkpoint}")
    seconds, out = cvaelib("evaluate", "--checkpoint", str(args.checkpoint), *(["--n", str(args.n)] if args.n else []))
    figures = json.loads(out)
    verdict = "within" if seconds <= 60 * args.target_minutes else "over"
    print(
        f"evaluate, defaults (K = {figures['iwae_k']}), {'all' if args.n is None else args.n} test images: "
        f"{seconds:.0f} s, {verdict} the {args.target_minutes:g}-minute target; "
        f"bits/dim {figures['bits_per_dim']:.4f}, IWAE {figures['iwae_nats']:.2f} nats/image "
        f"({figures['iwae_nats'] / (3 * 32 * 32 * math.log(2)):.4f} bits/dim)"
    )
    return {"seconds": seconds, **figures}


if __name__ == "__main__":
    main()
