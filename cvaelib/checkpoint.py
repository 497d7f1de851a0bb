"""Loading models saved by ``fit`` or ``python -m cvaelib train`` (chapters 2-4)."""
from pathlib import Path

import torch

from .models import build_model


def load_checkpoint(path, device="cpu"):
    """Rebuild the model saved in ``path`` (its architecture is in the file), ready to ``sample``.

    The returned model has ``model.meta``: the dataset, training settings and history.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; train one with `python -m cvaelib train --out {path}`")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        config = state["meta"]["model"]
    except Exception as e:
        raise ValueError(f"{path} is not a cvaelib checkpoint ({type(e).__name__}: {e})") from e
    model = build_model(**config)
    model.load_state_dict(state["model"])
    model.meta = {**state["meta"], "history": state["history"], "epoch": state["epoch"]}
    return model.to(device).eval()
