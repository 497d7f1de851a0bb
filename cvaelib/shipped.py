"""Trained models that ship with the course, so that a CPU shows a full-scale model in seconds (chapters 1-5).

Each model is one file in ``results/models/``: its weights in 16 bits (half the bytes of float32; loaded back as
float32) and, for a conditional model, the prior fitted to its codes after training (``fitted_prior``), tensors
only. ``results/models/manifest.json`` lists every model by name: its file, the file's sha256, the configuration
that rebuilds it, the dataset, the provenance of the run that trained it and the figures recorded with it.
``load_shipped(name)`` refuses a file whose checksum differs from the manifest's, naming it, and reads the file
with ``torch.load(weights_only=True)``: no code in it can run.
"""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError
from .fitted_prior import FittedPrior
from .models import build_model
from .provenance import RESULTS

MODELS = RESULTS / "models"
MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def manifest(folder: Path = MODELS) -> dict:
    """name -> the manifest's entry of every shipped model (an empty dict where there is no manifest)."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def ship(
    model: nn.Module,
    name: str,
    record: dict,
    fitted_prior: FittedPrior | None = None,
    folder: Path = MODELS,
) -> dict:
    """Write ``model``'s weights in float16 to ``<folder>/<name>.pt`` with its fitted prior, and its manifest entry:
    file, sha256, bytes, configuration and ``record`` (the dataset, the provenance and the figures of its run,
    measured with its float32 weights; ``annotate`` adds figures measured on the shipped file afterwards). Returns
    the entry."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    if not all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()):
        raise ValueError(f"{name}: a weight is beyond float16's range; it cannot ship in 16 bits")
    contents = {"model": weights}
    if fitted_prior is not None:
        contents["fitted_prior"] = {k: t.cpu() for k, t in fitted_prior.state().items()}
    path = folder / f"{name}.pt"
    torch.save(contents, path)
    entry = {
        "file": path.name,
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "config": asdict(model.config),
        **record,
    }
    _write_manifest(folder, {**manifest(folder), name: entry})
    return entry


def annotate(name: str, folder: Path = MODELS, **figures) -> None:
    """Add ``figures`` to a shipped model's manifest entry (its file, and so its checksum, stays as it is)."""
    entries = manifest(folder)
    _write_manifest(folder, {**entries, name: {**entries[name], **figures}})


def _write_manifest(folder: Path, entries: dict) -> None:
    (Path(folder) / MANIFEST).write_text(json.dumps(entries, indent=1) + "\n")


def load_shipped(name: str, device: torch.device | str = "cpu", folder: Path = MODELS) -> nn.Module:
    """The shipped model ``name``, in float32 on ``device``, in eval mode, with ``model.shipped`` (its manifest
    entry) and ``model.fitted_prior`` (a ``FittedPrior`` or None). Refuses, naming the file, a model the manifest
    does not list, a missing file, and a file whose sha256 is not the manifest's."""
    folder = Path(folder)
    entries = manifest(folder)
    if name not in entries:
        raise KeyError(f"no shipped model {name!r} in {folder / MANIFEST}; shipped: {sorted(entries) or 'none'}")
    entry = entries[name]
    path = folder / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the shipped model {name!r} lives there (a fresh clone has it)")
    if sha256(path) != entry["sha256"]:
        raise ValueError(
            f"{path} does not match its sha256 in {folder / MANIFEST}: the file changed since it was shipped; "
            "restore it from the repository (git checkout -- results/models)"
        )
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
    except Exception as e:
        raise CheckpointError(
            f"{path} holds more than tensors and plain values; refused ({type(e).__name__})"
        ) from None
    model = build_model(entry["config"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in contents["model"].items()})
    prior = contents.get("fitted_prior")
    model.fitted_prior = None if prior is None else FittedPrior.from_state(prior).to(device)
    model.shipped = entry
    return model.to(device).eval()


def judged_line(model: nn.Module) -> str:
    """One sentence from a shipped default's manifest entry (``benchmarks/ship_defaults.py``): how often the judge
    named the requested class of its samples from the learned and the fitted prior, and of its reconstructions."""
    f, about = model.shipped["figures"], model.shipped["provenance"]
    n = 10 * f["samples_per_class"]
    k = f["fitted_prior_components"]
    fitted = "one full-covariance Gaussian" if k == 1 else f"a mixture of {k} full-covariance Gaussians"
    return (
        f"Judged on {n:,} samples each when it shipped ({about['date']}, {about['device']}): the learned prior's "
        f"samples {f['learned_prior_judged']:.1%}, samples from {fitted} per class fitted to its codes "
        f"{f['fitted_prior_judged']:.1%} (chosen among the fitted priors on another {n:,}), its reconstructions of "
        f"test images {f['reconstructions_judged']:.1%}, real test images {f['judge_on_real_test']:.1%}."
    )
