"""The course's one switch: ``CVAELIB_PROFILE=smoke`` (minutes on a laptop CPU) or ``full``."""
import os

ENV_VAR = "CVAELIB_PROFILE"
PROFILES = ("smoke", "full")


def profile():
    """The active profile: $CVAELIB_PROFILE, ``full`` when unset (every chapter)."""
    value = os.environ.get(ENV_VAR, "full").strip().lower() or "full"
    if value not in PROFILES:
        raise ValueError(f"{ENV_VAR}={value!r} is not a profile; use one of {PROFILES}")
    return value


def pick(smoke, full):
    """The smoke or the full value of a setting, by the active profile (every chapter)."""
    return smoke if profile() == "smoke" else full
