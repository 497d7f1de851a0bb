"""Judging generated images with a classifier trained on real data (chapters 2-4).

A CVAE asked for a "7" must draw a 7: we ask a classifier trained on real images
which class each sample looks like, and compare feature statistics of real and
generated images with a Fréchet distance computed on that classifier's features.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.image.fid import FrechetInceptionDistance

from .data import Batches
from .train import TrainConfig, evaluate_loss, fit


class Classifier(nn.Module):
    """A small CNN for 28x28x1 or 32x32x3 images; ``features`` gives its 128-d penultimate layer."""

    def __init__(self, image_shape=(1, 28, 28), num_classes=10):
        super().__init__()
        c, h, _ = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B,c,H,W) -> (B,32,H/2,W/2)
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> (B,64,H/4,W/4)
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(64 * (h // 4) ** 2, 128),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(128, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def classification_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Cross-entropy and accuracy of a batch, in the form ``fit`` expects."""
    logits = model(x)
    return {"loss": F.cross_entropy(logits, y), "accuracy": (logits.argmax(1) == y).float().mean()}


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
):
    """Train the judge on real uint8 images; returns (classifier, history) (chapter 2)."""
    classifier = Classifier(tuple(images.shape[1:]), int(labels.max()) + 1)
    train = Batches(images, labels, batch_size, device=device, seed=seed)
    test = None if test_images is None else Batches(test_images, test_labels, 1000, shuffle=False, device=device)
    history = fit(
        classifier,
        classification_loss,
        train,
        num_epochs,
        test_batches=test,
        device=device,
        config=TrainConfig(seed=seed),
        progress=progress,
    )
    return classifier.eval(), history


@torch.no_grad()
def classifier_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, device="cpu") -> float:
    """Accuracy of the judge on real uint8 images (it must be high to be trusted)."""
    return evaluate_loss(
        classifier, classification_loss, Batches(images, labels, 1000, shuffle=False, device=device), device
    )["accuracy"]


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
