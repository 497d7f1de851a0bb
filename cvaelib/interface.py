"""What every model shares around its ``forward`` and ``sample``: the checks of what it is given, and how
a sample's images are read off its likelihood (``models.CVAE``, ``hierarchical.HierarchicalCVAE``).

The model interface itself is ``forward(x, y, samples=1)`` -> ``{"log_px": (S*B,), "groups": [GroupStats, ...],
"params": the likelihood's parameters, "x_hat": its mean}`` (``samples`` z per image from one encoding, sample-major
as ``repeat_batch``), and ``sample(labels | num_samples, temperature, mean)``; training, evaluation and the
diagnostics read only ``log_px`` and ``groups``, a reconstruction ``x_hat`` and the sigma-VAE ``params``.
Values are checked where no accelerator waits for them: on the CPU, in ``sample`` and once per dataset
(``data.load``); a training step on a GPU checks only dtypes and shapes.
"""

import math

import torch

LABEL_DTYPES = (torch.int64, torch.int32, torch.uint8)


def labels_for(model, y: torch.Tensor | None) -> torch.Tensor | None:
    """The labels to hand ``model``: ``y`` for a conditional model, None for an unconditional one, so that one
    training or evaluation loop over labelled batches serves both."""
    return y if model.num_classes else None


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if autocast made it bfloat16 (or float16); a float32 or float64 tensor as it is, so
    that every model's likelihood and KL keep their digits under autocast."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def repeat_batch(t: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """(B, ...) -> (k*B, ...): the batch k times over, sample-major, so ``.view(k, B)`` undoes it."""
    return None if t is None else t.expand(k, *t.shape).flatten(0, 1)


def check_samples(samples: int) -> None:
    """``forward``'s number of z per image must be a positive integer."""
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer (z drawn per image), got {samples!r}")


def check_images(x: torch.Tensor, image_shape: tuple[int, int, int]) -> None:
    """Images must be float (B, C, H, W) of the model's shape, with values in [0, 1] (checked on a CPU)."""
    if not torch.is_floating_point(x):
        raise TypeError(f"images must be float in [0, 1], got {x.dtype}; divide uint8 images by 255")
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(f"images must have shape (B, {', '.join(map(str, image_shape))}), got {tuple(x.shape)}")
    if x.device.type == "cpu" and x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"image values must be in [0, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]")


def check_labels(y: torch.Tensor | None, num_classes: int, batch_size: int) -> None:
    """No labels for an unconditional model (``num_classes=0``); else integer labels, one per image, in
    [0, num_classes) (the values checked on a CPU: a clear error instead of an embedding's index crash)."""
    if num_classes == 0:
        if y is not None:
            raise ValueError("this is an unconditional model (num_classes=0): pass no labels")
        return
    if y is None:
        raise ValueError(f"this model needs labels: pass y, a (B,) tensor of ints in [0, {num_classes})")
    if y.dtype not in LABEL_DTYPES:
        raise TypeError(f"labels must be integers in [0, {num_classes}) (torch.int64), got {y.dtype}")
    if tuple(y.shape) != (batch_size,):
        raise ValueError(f"labels must have shape ({batch_size},), one per image, got {tuple(y.shape)}")
    if y.device.type == "cpu":
        check_label_values(y, num_classes)


def check_label_values(y: torch.Tensor, num_classes: int) -> None:
    """Labels must lie in [0, num_classes)."""
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got values from {int(y.min())} to {int(y.max())}")


def check_temperature(temperature: float) -> None:
    """A sampling temperature must be a finite number >= 0 (0: the prior's mean)."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a non-negative number, got {temperature!r}")


def check_top(top: torch.Tensor | None, num_samples: int, dims: int) -> None:
    """Codes handed to ``sample`` for its top latent group must be (N, D_top), one per sample."""
    if top is not None and tuple(top.shape) != (num_samples, dims):
        raise ValueError(f"top must hold one code per sample, ({num_samples}, {dims}), got {tuple(top.shape)}")


def sample_request(num_classes: int, labels, num_samples, temperature: float, device) -> tuple:
    """What a model is asked to sample, checked: (labels on ``device``, or None, and how many images).

    A conditional model takes ``labels``, an unconditional one ``num_samples``; every model's ``sample`` calls this.
    """
    check_temperature(temperature)
    if num_classes:
        if labels is None:
            raise ValueError("a conditional model samples per label: pass labels, e.g. torch.arange(10)")
        labels = torch.as_tensor(labels)
        if labels.dtype not in LABEL_DTYPES or labels.dim() != 1:
            raise TypeError(
                f"labels must be a 1-d tensor of ints in [0, {num_classes}), "
                f"got {labels.dtype} of shape {tuple(labels.shape)}"
            )
        check_label_values(labels, num_classes)
        return labels.to(device), len(labels)
    if labels is not None or num_samples is None:
        raise ValueError("an unconditional model (num_classes=0) has no labels: pass num_samples")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    return None, num_samples


def decoded_images(likelihood, params: torch.Tensor, mean: bool) -> torch.Tensor:
    """The images of a sample: drawn from the likelihood when it has a ``sample``, else (or with ``mean``) its mean."""
    if mean or not hasattr(likelihood, "sample"):
        return likelihood.mean(params)
    return likelihood.sample(params)
