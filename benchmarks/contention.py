"""A machine that is not alone: the course's commands beside one busy single-thread process.

    python benchmarks/contention.py --checkpoint runs/contention_mnist.pt            # evaluate only
    python benchmarks/contention.py --checkpoint runs/contention_mnist.pt --chapter  # and chapter 1 (smoke)

Classroom laptops and shared servers are never idle. torch starts one OpenMP thread per core, and
each thread spins on its core for a while when it waits for work; with another process on the
cores, every parallel region waits for the thread that shares its core, and the spinning takes that
core from it too. ``cvaelib`` therefore looks at the machine when it is imported
(``cvaelib/threads.py``): if other processes keep it busy, torch uses the free cores and waits
passively; on an idle machine nothing changes. This script times, each in a fresh process, on an
idle machine and beside one competing process that spins on one core:

- ``before``: torch's own choice (one thread per core, libgomp's default spin ``GOMP_SPINCOUNT=300000``;
  a variable the user sets turns the course's choice off);
- ``course``: what the course chooses on that machine;
- ``passive``: passive waiting always (``OMP_WAIT_POLICY=PASSIVE``);
- ``1 thread``: ``OMP_NUM_THREADS=1``.

It times ``python -m cvaelib evaluate --n 3000`` on an MNIST checkpoint (trained for 3 epochs
first if ``--checkpoint`` does not exist), and with ``--chapter`` chapter 1 in the smoke profile
(through nbclient, as the book build runs it). Each figure is the median of ``--repeats`` runs; a
run longer than ``--timeout`` seconds is stopped and shown as ``>T``. Run it on an otherwise idle
machine: the only competitor should be the one this script starts.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "before": {"GOMP_SPINCOUNT": "300000"},
    "course": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}
# One core kept busy by a process that never waits, as a second learner's training run would.
SPINNER = [sys.executable, "-c", "while True: pass"]
RUN_CHAPTER = (
    "import sys, jupytext, nbclient; "
    "nb = jupytext.read(sys.argv[1]); "
    "nbclient.NotebookClient(nb, timeout=3600, kernel_name='python3').execute()"
)


def timed(command: list[str], env: dict, timeout: float) -> float:
    """Wall seconds of ``command`` in a fresh process with ``env`` added; ``inf`` if it ran past ``timeout``."""
    start = time.monotonic()
    try:
        subprocess.run(command, env={**os.environ, **env}, cwd=ROOT, check=True, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return float("inf")
    return time.monotonic() - start


def measure(name: str, command: list[str], variants: list[str], repeats: int, timeout: float) -> dict:
    """{(variant, load): median seconds} for ``command`` idle and beside one spinning process."""
    figures = {}
    for load in ("idle", "busy"):
        spinner = subprocess.Popen(SPINNER) if load == "busy" else None
        try:
            time.sleep(1 if spinner else 0)
            for variant in variants:
                runs = []
                for _ in range(repeats):
                    runs.append(timed(command, VARIANTS[variant], timeout))
                    if runs[-1] == float("inf"):
                        break  # one run past the timeout says enough
                figures[variant, load] = statistics.median(runs)
                print(f"{name}, {variant}, {load}: {_seconds(figures[variant, load], timeout)}", flush=True)
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
    return figures


def _seconds(value: float, timeout: float) -> str:
    return f">{timeout:.0f} s" if value == float("inf") else f"{value:.1f} s"


def table(name: str, figures: dict, variants: list[str], timeout: float) -> str:
    rows = [f"| {name} | idle | beside one busy process | busy / idle |", "|---|---|---|---|"]
    for variant in variants:
        idle, busy = figures[variant, "idle"], figures[variant, "busy"]
        ratio = "-" if busy == float("inf") else f"{busy / idle:.2f}x"
        rows.append(f"| {variant} | {_seconds(idle, timeout)} | {_seconds(busy, timeout)} | {ratio} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "contention_mnist.pt")
    p.add_argument("--n", type=int, default=3000, help="test images that evaluate reads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=600, help="seconds after which one run is stopped")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--chapter", action="store_true", help="also chapter 1 in the smoke profile (minutes per run)")
    p.add_argument("--chapter-variants", nargs="+", default=["before", "course"], choices=list(VARIANTS))
    args = p.parse_args(argv)
    if args.repeats < 1 or args.n < 1:
        p.error("--repeats and --n must be positive")

    cvaelib = [sys.executable, "-m", "cvaelib"]
    if not args.checkpoint.exists():
        print(f"training {args.checkpoint} (3 epochs of the MNIST default)", flush=True)
        train = ["train", "--dataset", "mnist", "--epochs", "3", "--out", str(args.checkpoint), "--no-progress"]
        subprocess.run(cvaelib + train, cwd=ROOT, check=True, capture_output=True)
    evaluate = cvaelib + ["evaluate", "--checkpoint", str(args.checkpoint), "--n", str(args.n)]
    results = [("evaluate", measure("evaluate", evaluate, args.variants, args.repeats, args.timeout), args.variants)]
    if args.chapter:
        chapter = [sys.executable, "-c", RUN_CHAPTER, str(ROOT / "chapters" / "01_vae_mnist.md")]
        os.environ.setdefault("CVAELIB_PROFILE", "smoke")
        figures = measure("chapter 1 (smoke)", chapter, args.chapter_variants, 1, args.timeout)
        results.append(("chapter 1 (smoke)", figures, args.chapter_variants))

    print(f"\ncompetitor: {' '.join(SPINNER[1:])!r} on one core; {os.cpu_count()} logical CPUs; medians")
    for name, figures, variants in results:
        print()
        print(table(f"`{name}`", figures, variants, args.timeout))


if __name__ == "__main__":
    main()
