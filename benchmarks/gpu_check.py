"""The GPU check: the CUDA tests, then every chapter in the full profile through nbval, on one GPU, with a record.

    python benchmarks/gpu_check.py                 # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --dry-run       # anywhere: what it would run, and how long that should take

Runs ``pytest -m cuda tests``, then each chapter (``chapters/*.md``, as nbval runs them) with ``CVAELIB_PROFILE``
set to ``--profile``, one step after the other within ``--budget-minutes`` in all: a step that would start after
the budget is spent is listed as not run, and a step still running when it ends is stopped and counted as failed.
The record (``--out``, with its provenance) gives each step's command, seconds, exit status and pytest's last line.
The estimate of a dry run comes from the last record of a GPU check where there is one, else from the recorded
full runs in ``results/`` (made on CPUs: an upper bound, not a GPU's time).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cvaelib.profile import PROFILES
from cvaelib.provenance import RESULTS, provenance

ROOT = Path(__file__).parent.parent


def steps(profile: str) -> list[dict]:
    """The check's steps in order: name, the command, and the profile its environment sets."""
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header"]
    chapters = sorted((ROOT / "chapters").glob("[0-9]*.md"))
    return [{"name": "cuda tests", "command": [*pytest, "-m", "cuda", "tests"], "profile": profile}] + [
        {"name": md.stem, "command": [*pytest, f"chapters/{md.stem}.ipynb"], "profile": profile} for md in chapters
    ]


def estimates(out: Path) -> dict:
    """Seconds per step name from the last GPU check's record, else the recorded full runs' wall time (CPUs)."""
    if out.exists():
        return {s["name"]: (s["seconds"], "the last GPU check") for s in json.loads(out.read_text())["steps"]}
    found = {}
    for path in sorted(RESULTS.glob("0*.json")):
        record = json.loads(path.read_text())
        if record.get("profile") == "full":
            found[path.stem] = (record["wall_seconds"], f"its recorded full run on {record['device']}")
    return found


def run_step(step: dict, timeout: float) -> dict:
    env = {**os.environ, "CVAELIB_PROFILE": step["profile"]}
    start = time.monotonic()
    try:
        done = subprocess.run(step["command"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        returncode, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        returncode, output = None, (e.stdout or b"").decode(errors="replace") + "\nstopped: the budget was spent"
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return {
        "name": step["name"],
        "command": " ".join(step["command"][1:]),
        "profile": step["profile"],
        "seconds": round(time.monotonic() - start, 1),
        "returncode": returncode,
        "summary": lines[-1] if lines else "",
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="full", choices=PROFILES, help="the chapters' profile")
    p.add_argument("--budget-minutes", type=float, default=8.0, help="all the steps together, at most")
    p.add_argument("--dry-run", action="store_true", help="list the steps and their estimated time; run nothing")
    p.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    args = p.parse_args(argv)
    plan, known = steps(args.profile), estimates(args.out)
    if args.dry_run:
        print(f"the GPU check would run, within {args.budget_minutes:g} minutes, with CVAELIB_PROFILE={args.profile}:")
        total = 0.0
        for step in plan:
            seconds, source = known.get(step["name"], (None, "no recorded time"))
            total += seconds or 0.0
            when = "?" if seconds is None else f"{seconds / 60:.1f} min"
            print(f"  {step['name']:24s} {when:>9s}  ({source})  {' '.join(step['command'][1:])}")
        print(f"estimated: {total / 60:.0f} minutes from the times known (steps without one not counted)")
        return 0
    import torch

    if not torch.cuda.is_available():
        p.error("no CUDA GPU here: the check needs one (--dry-run lists what it would run)")
    began, results = time.monotonic(), []
    for step in plan:
        left = 60 * args.budget_minutes - (time.monotonic() - began)
        if left <= 0:
            results.append(
                {
                    "name": step["name"],
                    "profile": step["profile"],
                    "returncode": None,
                    "seconds": 0.0,
                    "summary": "not run: the budget was spent",
                }
            )
            continue
        results.append(run_step(step, left))
        print(f"{results[-1]['name']}: {results[-1]['summary']} ({results[-1]['seconds']:.0f} s)", flush=True)
    passed = all(r["returncode"] == 0 for r in results)
    settings = {"profile": args.profile, "budget_minutes": args.budget_minutes}
    record = {**provenance(time.monotonic() - began, settings), "passed": passed, "steps": results}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{'passed' if passed else 'FAILED'}; wrote {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
