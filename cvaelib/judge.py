"""Judging generated images with a classifier trained on real data (chapters 2-4).

A CVAE asked for a "7" must draw a 7: we ask a classifier trained on real images
which class each sample looks like, and compare feature statistics of real and
generated images with a Fréchet distance computed on that classifier's features.
"""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.image.fid import FrechetInceptionDistance
from torchvision.transforms.functional import gaussian_blur

from . import data
from .data import Batches
from .provenance import RESULTS
from .train import SpeedConfig, TrainConfig, evaluate_loss, fit

CHECK_IMAGES = 1000  # load_judge scores the judge on this many real test images before it is used
CHECK_TOLERANCE = 0.05  # and refuses it if that accuracy is further than this from the recorded one
BLUR_SIGMAS = (0.5, 0.75, 1.0)  # pixels: accuracy_under_blur's default blurs


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class Classifier(nn.Module):
    """The judge: five 3x3 convolutions with batch norm, for 28x28x1 or 32x32x3 images.

    ``features`` gives its 128-d penultimate layer (the Fréchet distance's features).
    """

    def __init__(self, image_shape=(1, 28, 28), num_classes=10, width=32):
        super().__init__()
        c = image_shape[0]
        self.features = nn.Sequential(
            *_conv(c, width),
            *_conv(width, width),
            nn.MaxPool2d(2),  # (B,c,H,W) -> (B,w,H/2,W/2)
            *_conv(width, 2 * width),
            *_conv(2 * width, 2 * width),
            nn.MaxPool2d(2),  # -> (B,2w,H/4,W/4)
            *_conv(2 * width, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # -> (B,128)
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def classification_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Cross-entropy and accuracy of a batch, in the form ``fit`` expects."""
    logits = model(x)
    return {"loss": F.cross_entropy(logits, y), "accuracy": (logits.argmax(1) == y).float().mean()}


def shift_and_mirror(x: torch.Tensor, max_shift: int, mirror: bool) -> torch.Tensor:
    """Each image moved by its own whole number of pixels (at most ``max_shift``), and mirrored with
    probability 1/2 if ``mirror``: the usual crops and flips, drawn per image in one ``grid_sample``.
    """
    b, _, h, w = x.shape
    shift = torch.randint(-max_shift, max_shift + 1, (b, 2), device=x.device)  # (B,2): pixels in x and y
    theta = torch.zeros(b, 2, 3, device=x.device)  # (B,2,3): one affine map per image
    theta[:, 0, 0] = 1.0 if not mirror else torch.randint(0, 2, (b,), device=x.device) * 2.0 - 1
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2 * shift[:, 0] / w  # a pixel is 2/W wide in grid coordinates
    theta[:, 1, 2] = 2 * shift[:, 1] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode="nearest", padding_mode="zeros", align_corners=False)


class AugmentedLoss:
    """``classification_loss`` on shifted (and mirrored) copies of each training batch; plain when evaluating."""

    def __init__(self, max_shift: int = 2, mirror: bool = False):
        self.max_shift, self.mirror = max_shift, mirror

    def __call__(self, model, x, y):
        if model.training:
            x = shift_and_mirror(x, self.max_shift, self.mirror)
        return classification_loss(model, x, y)


def train_classifier(
    images,
    labels,
    test_images=None,
    test_labels=None,
    num_epochs=3,
    batch_size=128,
    device="cpu",
    seed=0,
    progress=True,
    mirror=False,
    lr=0.05,
    speed: SpeedConfig | None = None,
    checkpoint=None,
):
    """Train the judge on real uint8 images; returns (classifier, history) (``benchmarks/train_judges.py``).

    SGD with Nesterov momentum and weight decay, one epoch of learning-rate warm-up, then cosine
    decay; images shifted by up to 2 pixels, and mirrored with ``mirror`` (photos, not digits).
    """
    torch.manual_seed(seed)
    classifier = Classifier(tuple(images.shape[1:]), int(labels.max()) + 1)
    train = Batches(images, labels, batch_size, device=device, seed=seed, drop_last=True)
    test = None if test_images is None else Batches(test_images, test_labels, 1000, shuffle=False, device=device)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    history = fit(
        classifier,
        AugmentedLoss(mirror=mirror),
        train,
        num_epochs,
        test_batches=test,
        device=device,
        optimizer=optimizer,
        config=TrainConfig(seed=seed, lr=lr, warmup_steps=len(train), cosine_decay=True),
        speed=speed or SpeedConfig(),
        checkpoint=checkpoint,
        progress=progress,
    )
    return classifier.eval(), history


def load_judge(name: str, device="cpu", folder: Path = RESULTS) -> tuple[nn.Module, dict]:
    """The trained judge of dataset ``name`` and its record (``test_accuracy``, provenance), chapters 2-4.

    Reads ``<folder>/judge_<name>.pt`` with ``weights_only=True`` (a state dict: no code runs), then
    scores the judge on the first ``CHECK_IMAGES`` real test images and refuses it, with an error, if
    it is more than ``CHECK_TOLERANCE`` off the accuracy recorded when it was trained: wrong weights,
    or test images that are not the dataset's.
    """
    folder = Path(folder)
    index = folder / "judges.json"
    records = json.loads(index.read_text()) if index.exists() else {}
    if name not in records:
        raise FileNotFoundError(f"{index} has no judge for {name!r}: train one with benchmarks/train_judges.py")
    record = records[name]
    weights = folder / record["weights"]
    classifier = Classifier(data.image_shape(name), len(data.class_names(name)))
    classifier.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    classifier.to(device).eval()
    images, labels = data.load(name, "test")
    accuracy = classifier_accuracy(classifier, images[:CHECK_IMAGES], labels[:CHECK_IMAGES], device=device)
    if abs(accuracy - record["check_accuracy"]) > CHECK_TOLERANCE:
        raise ValueError(
            f"the judge {weights} scores {accuracy:.1%} on the first {CHECK_IMAGES} {name} test images, "
            f"but {record['check_accuracy']:.1%} when it was trained: the weights or the test images are not "
            "the recorded ones; train it again with benchmarks/train_judges.py"
        )
    return classifier, record


@torch.no_grad()
def classifier_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, device="cpu") -> float:
    """Accuracy of the judge on real uint8 images (it must be high to be trusted)."""
    return evaluate_loss(
        classifier, classification_loss, Batches(images, labels, 1000, shuffle=False, device=device), device
    )["accuracy"]


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Float images (N,C,H,W) blurred by a Gaussian of standard deviation ``sigma`` pixels (torchvision's
    ``gaussian_blur``; its kernel reaches 3 standard deviations to each side, 7 pixels wide at sigma 1)."""
    return gaussian_blur(x, 2 * math.ceil(3 * sigma) + 1, sigma)


@torch.no_grad()
def accuracy_under_blur(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, sigmas=BLUR_SIGMAS) -> dict:
    """The judge's accuracy on real uint8 images blurred by each ``sigma`` (pixels): {sigma: accuracy}.

    A decoder with a per-pixel likelihood draws its mean image, which is blurred where the decoder is unsure
    (chapter 3). How much blur the judge tolerates bounds the judged accuracy such samples can reach.
    """
    x, labels = next(iter(Batches(images, labels, len(images), shuffle=False)))  # uint8 -> float in [0, 1]
    return {sigma: judge_samples(classifier, blur(x, sigma), labels)["accuracy"] for sigma in sigmas}


@torch.no_grad()
def judge_samples(classifier: nn.Module, samples: torch.Tensor, requested: torch.Tensor, num_classes: int = 10) -> dict:
    """How often float samples (N,C,H,W) in [0, 1] are judged the class they were asked for.

    Returns overall accuracy, accuracy per class (num_classes,), and the confusion
    matrix (requested x judged, counts).
    """
    classifier.eval()
    device = next(classifier.parameters()).device
    judged = torch.cat([classifier(x.to(device)).argmax(1) for x in samples.split(1000)]).cpu()
    requested = torch.as_tensor(requested).cpu()
    confusion = MulticlassConfusionMatrix(num_classes)(judged, requested)  # rows: requested, columns: judged
    per_class = confusion.diag() / confusion.sum(1).clamp(min=1)
    return {
        "accuracy": float((judged == requested).float().mean()),
        "per_class": per_class,
        "confusion": confusion,
        "judged": judged,
    }


class _Features(nn.Module):
    """The judge's penultimate layer as torchmetrics' feature extractor."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = 128

    def forward(self, x):
        return self.classifier.features(x)


@torch.no_grad()
def frechet_distance(classifier: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between real and generated float images on the judge's features.

    Like FID, but with the course's own classifier instead of Inception weights, so it
    works offline and on 28x28 images. Lower is better; 0 for identical statistics.
    """
    classifier.eval()
    device = next(classifier.parameters()).device
    metric = FrechetInceptionDistance(feature=_Features(classifier)).to(device)
    for x in real.split(1000):
        metric.update(x.to(device), real=True)
    for x in fake.split(1000):
        metric.update(x.to(device), real=False)
    return float(metric.compute())


@torch.no_grad()
def reconstructions_judged(judge: nn.Module, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """How often the judge names the class of a conditional model's reconstructions of real images (uint8, with
    their labels): z at each image's posterior mean, decoded to the decoder's mean image. What its decoder draws when
    z is the image's own: a reference for its prior samples, which come from the same decoder."""
    model.eval()
    device = next(model.parameters()).device
    x, y = next(iter(Batches(images, labels, len(images), shuffle=False, device=device)))  # uint8 -> float in [0, 1]
    mu, _ = model.encode(x, y)
    return judge_samples(judge, model.decode(mu, y), y)["accuracy"]
