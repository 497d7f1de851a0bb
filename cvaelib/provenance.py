"""Where a recorded figure comes from: commit, date, device, wall time and settings (``results/``)."""

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from .profile import profile

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"  # the recorded runs the chapters read
# A folder: a chapter run with it set writes its figures there (benchmarks/record_chapter.py).
RECORD_VAR = "CVAELIB_RECORD"


def _commit() -> str:
    """The repository's commit, with ``+changes`` when the working tree differs from it ("unknown" outside git)."""
    try:
        run = dict(cwd=ROOT, capture_output=True, text=True, check=True, timeout=10)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


# The commit the run started from: taken when the module loads (a chapter's first cell, a benchmark's imports),
# not when the figures are written at the end, by when the working tree may have moved on.
STARTED_AT = _commit()


def device_description() -> str:
    """The machine in words: the GPU's name, else the CPU's model and the threads torch uses."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        model = names[0] if names else model
    threads = torch.get_num_threads()
    return f"CPU: {model}, {threads} thread{'s' * (threads != 1)} of {os.cpu_count()} cores"


def provenance(wall_seconds: float, settings: dict, **extra) -> dict:
    """The provenance block of a results file: profile, commit, date, device, wall time, settings (and ``extra``)."""
    return {
        "profile": profile(),
        "commit": STARTED_AT,
        "date": datetime.date.today().isoformat(),
        "device": device_description(),
        "torch": torch.__version__,
        "wall_seconds": round(wall_seconds, 1),
        "settings": settings,
        **extra,
    }


def read_results(name: str, missing_ok: bool = False) -> dict | None:
    """A recorded run, ``results/<name>.json``, as a dict (chapters read their measured figures from it).

    With ``missing_ok``, None when there is none yet (a chapter being recorded for the first time).
    """
    path = RESULTS / f"{name}.json"
    if not path.exists():
        if missing_ok:
            return None
        raise FileNotFoundError(f"no recorded run {path}; results/README.md gives the command that makes it")
    return json.loads(path.read_text())


def as_json(value):
    """``value`` as JSON gives it back: tuples become lists, tensors numbers or lists, floats 6 significant digits."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def record_chapter(
    name: str, figures: dict, settings: dict, wall_seconds: float, images: dict | None = None
) -> Path | None:
    """Write a chapter's measured figures with their provenance to ``$CVAELIB_RECORD/<name>.json``.

    ``images`` maps a key to a matplotlib figure, saved small beside it as ``<name>_<key>.png``.
    Does nothing unless $CVAELIB_RECORD names a folder, so that running a chapter never overwrites
    the recorded run by accident; ``benchmarks/record_chapter.py`` sets it.
    """
    folder = os.environ.get(RECORD_VAR, "").strip()
    if not folder:
        return None
    path = Path(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = {}
    for key, fig in (images or {}).items():
        saved[key] = f"{name}_{key}.png"
        fig.savefig(path.parent / saved[key], dpi=60, bbox_inches="tight")
    record = provenance(wall_seconds, as_json(settings), figures=as_json(figures), images=saved)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def check_recorded_run(name: str, full_settings: dict, check=None) -> dict:
    """The recorded run ``results/<name>.json``, once it is shown to be a full-profile run made with
    ``full_settings`` whose figures pass ``check(figures)``, the checks a chapter applies to its live run.
    """
    record = read_results(name)
    if record["profile"] != "full" or record["settings"] != as_json(full_settings):
        raise ValueError(
            f"results/{name}.json is a {record['profile']} run with settings {record['settings']}, not the "
            f"full settings {as_json(full_settings)}: record it again (results/README.md)"
        )
    if check is not None:
        check(record["figures"])
    return record


def source_line(record: dict) -> str:
    """Where a recorded run comes from, in one line for a chapter: device, date, commit, profile, wall time,
    and the data it was made on where the record names it (its figures hold for that data)."""
    minutes = record["wall_seconds"] / 60
    # A record collected from runs trained by earlier calls (resumed, side by side) says what they took.
    runs = record.get("runs_training_minutes")
    runs = "" if runs is None else f" to collect runs that trained for {runs:.0f} minutes in all"
    data = f"; data: {record['data']}" if record.get("data") else ""
    return (
        f"recorded run: {record['device']}, {record['date']}, commit {record['commit']}, "
        f"profile {record['profile']}, {minutes:.0f} minutes of wall time{runs}{data}"
    )
