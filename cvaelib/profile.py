"""The course's one switch: ``CVAELIB_PROFILE=smoke`` (minutes on a laptop CPU) or ``full``.

Unset, it depends on the machine: the full profile where a CUDA GPU is present, the smoke profile
elsewhere, so that running the book on a laptop takes minutes rather than hours.
"""

import os

import torch

ENV_VAR = "CVAELIB_PROFILE"
PROFILES = ("smoke", "full")
EXERCISES_VAR = "CVAELIB_EXERCISES"


def profile() -> str:
    """The active profile: $CVAELIB_PROFILE, else ``full`` with a CUDA GPU and ``smoke`` without (every chapter)."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return "full" if torch.cuda.is_available() else "smoke"
    if value not in PROFILES:
        raise ValueError(f"{ENV_VAR}={value!r} is not a profile; use one of {PROFILES}")
    return value


def describe() -> str:
    """Which profile runs and why, in one line for the top of a chapter."""
    active = profile()
    if os.environ.get(ENV_VAR, "").strip():
        why = f"set by {ENV_VAR}"
    elif active == "full":
        why = "a CUDA GPU is present"
    else:
        why = (
            f"no CUDA GPU found, so the quick profile runs; {ENV_VAR}=full runs the full one "
            "(hours on a CPU: each chapter states its cost)"
        )
    return f"profile: {active} ({why})"


def pick(smoke, full):
    """The smoke or the full value of a setting, by the active profile (every chapter)."""
    return smoke if profile() == "smoke" else full


def train_exercises() -> bool:
    """Whether exercise solutions that train models run: only with ``CVAELIB_EXERCISES=1`` (chapter 1).

    "Run all" in JupyterLab then never trains a model a learner did not ask for. The tests, the book
    build (``_ext/course_build.py``) and the recorded runs set it, so every solution still runs and is checked.
    """
    return os.environ.get(EXERCISES_VAR, "").strip() == "1"
