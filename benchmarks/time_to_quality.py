"""Time to a model that draws what it is asked for: the course default against a pytorch/examples loop.

    python benchmarks/time_to_quality.py --datasets mnist fashion_mnist

For each dataset, in one run: loads the course's judge (``cvaelib.judge.load_judge``), then (a) the
command line's default CVAE (``cvaelib.recipes.default_recipe``: model, batch size, learning rate, epochs) and
(b) a peer written the way pytorch/examples writes its VAE (an MLP CVAE 784+10 -> 400 -> 20, a
torchvision ``ToTensor`` dataset in a ``DataLoader``, the standard normal prior, Adam 1e-3, batch
128, binary cross-entropy summed per image). After every epoch both draw
``--samples-per-class`` prior samples per class, which the judge classifies. Only training is
timed. Prints each curve, the seconds each needs to reach the accuracy the peer ends with, their
ratio, and the seconds the default needs to reach its target: a judged accuracy within a time budget,
for MNIST 98.5 % in 120 s, for Fashion-MNIST 84 % in 300 s (on the 2-core Xeon).
Also the judge's accuracy on the test images blurred (``judge.accuracy_under_blur``): a decoder's mean image is
blurred, and these say how much blur the target leaves room for.
"""

import argparse
import time
from dataclasses import replace
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
import torch.nn.functional as F
from common import judged_accuracy, record_at_end, write_record
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cvaelib import data
from cvaelib.cli import main as cli
from cvaelib.evaluate import gather_groups, kl_split
from cvaelib.fitted_prior import fit_prior, sample_with
from cvaelib.judge import accuracy_under_blur, classifier_accuracy, load_judge, reconstructions_judged
from cvaelib.models import build_model
from cvaelib.provenance import as_json
from cvaelib.recipes import default_recipe
from cvaelib.remedies import RemedyLoss
from cvaelib.train import SpeedConfig, fit, seed_everything

# (judged accuracy, as a share of the judge's accuracy on real test images or absolute; seconds of training)
TARGETS = {"mnist": (0.985, False, 120), "fashion_mnist": (0.84, False, 300)}


class PeerCVAE(nn.Module):
    """pytorch/examples' VAE with the one-hot label concatenated to the encoder's and decoder's inputs."""

    def __init__(self, num_classes=10, hidden=400, latent_dim=20):
        super().__init__()
        self.num_classes, self.latent_dim = num_classes, latent_dim
        self.fc1 = nn.Linear(784 + num_classes, hidden)
        self.fc21, self.fc22 = nn.Linear(hidden, latent_dim), nn.Linear(hidden, latent_dim)
        self.fc3 = nn.Linear(latent_dim + num_classes, hidden)
        self.fc4 = nn.Linear(hidden, 784)

    def decode(self, z, c):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(torch.cat([z, c], 1)))))

    def forward(self, x, c):
        h = F.relu(self.fc1(torch.cat([x.view(-1, 784), c], 1)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z, c), mu, logvar

    @torch.no_grad()
    def sample(self, labels):
        c = F.one_hot(labels, self.num_classes).float()
        return self.decode(torch.randn(len(labels), self.latent_dim), c).view(-1, 1, 28, 28)


class ToTensorDataset(Dataset):
    """What torchvision's MNIST with ``transforms.ToTensor()`` gives: a PIL image per item, made a tensor."""

    def __init__(self, images, labels):
        from torchvision.transforms.functional import to_pil_image, to_tensor

        self.images, self.labels, self.to_pil, self.to_tensor = images, labels, to_pil_image, to_tensor

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.to_tensor(self.to_pil(self.images[i])), int(self.labels[i])


def _weights(model: nn.Module) -> dict:
    """A copy of the weights: ``state_dict()`` shares its tensors with the model, which later loads overwrite."""
    return {k: v.clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def fitted_prior_judged(judge, model, images, labels, samples_per_class, components) -> dict:
    """For each number of ``components``: the seconds that fitting a prior per class to the codes of ``images``
    takes (``cvaelib.fitted_prior.fit_prior``: one Gaussian with the aggregate posterior's moments, or a mixture
    fitted by EM), and how often the judge names the class of samples drawn from it through the same decoder.
    The learned prior p(z|y) is diagonal; between its samples and the reconstructions, this measures what putting
    the prior where the codes are gains."""
    batches = data.Batches(images, labels, 2000, shuffle=False)
    figures = {}
    for k in components:
        start = time.perf_counter()
        prior = fit_prior(model.eval(), batches, components=k)
        seconds = time.perf_counter() - start
        accuracy = judged_accuracy(judge, lambda y, prior=prior: sample_with(model, prior, y), samples_per_class)
        figures[k] = {"fit_seconds": seconds, "judged": accuracy}
    return figures


@torch.no_grad()
def kl_split_of(model, images, labels) -> list:
    """The KL split (``cvaelib.evaluate.kl_split``) of the model's codes of ``images``, per class."""
    groups, y = gather_groups(model.eval(), data.Batches(images, labels, 2000, shuffle=False))
    return kl_split(groups[0], y)


def peer_curve(dataset, judge, epochs, samples_per_class, train_size=None):
    """(training seconds so far, judged accuracy) after each epoch of the pytorch/examples-style loop."""
    x, y = data.load(dataset, "train")
    x, y = x[:train_size], y[:train_size]
    torch.manual_seed(0)
    model = PeerCVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(ToTensorDataset(x, y), batch_size=128, shuffle=True)
    curve, seconds = [], 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for images, labels in loader:
            x_hat, mu, logvar = model(images, F.one_hot(labels, 10).float())
            bce = F.binary_cross_entropy(x_hat, images.view(-1, 784), reduction="sum")
            loss = bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            optimizer.zero_grad()
            (loss / len(images)).backward()
            optimizer.step()
        seconds += time.perf_counter() - start
        model.eval()
        curve.append((seconds, judged_accuracy(judge, model.sample, samples_per_class)))
    return curve


def varied_recipe(dataset, latent_dim=None, beta=None):
    """The command line's default recipe for ``dataset``, with another latent size or KL weight where given."""
    recipe = default_recipe(dataset)
    if latent_dim is not None:
        recipe = replace(recipe, model=replace(recipe.model, latent_dim=latent_dim))
    if beta is not None:
        recipe = replace(recipe, remedies=replace(recipe.remedies, beta=beta))
    return recipe


def default_curve(recipe, dataset, judge, epochs, samples_per_class, train_size, test, components=(1,)):
    """The same for ``recipe``, the command line's default or a variant (``varied_recipe``): one ``fit`` call with
    its configuration and speed switches, learning-rate schedule included, whose weights are copied at the end of
    every epoch (the clock stops there) and judged afterwards. The test pass is left out. Also, of the final model:
    the judged accuracy of its reconstructions of ``test`` (images, labels), of its samples from priors fitted to
    the training images' codes (``fitted_prior_judged``), and the KL split of those codes."""
    x, y = data.load(dataset, "train")
    x, y = x[:train_size], y[:train_size]
    seed_everything(0)
    model = build_model(recipe.model)
    batches = data.Batches(x, y, recipe.batch_size, seed=0)
    loss = RemedyLoss(recipe.remedies, steps_per_epoch=len(batches))
    snapshots, start = [], time.perf_counter()

    def copying(model, x, y):  # at the first step of every epoch after the first, the previous one is done
        if len(snapshots) < loss.epoch:  # fit set the epoch before this step
            snapshots.append((time.perf_counter() - start, _weights(model)))
        return loss(model, x, y)

    copying.set_epoch = loss.set_epoch  # fit tells the loss its epoch (KL schedules) through this
    fit(
        model,
        copying,
        batches,
        epochs or recipe.num_epochs,
        config=recipe.train,
        speed=SpeedConfig.default(recipe.model.arch, "cpu"),
        device="cpu",
        progress=False,
    )
    snapshots.append((time.perf_counter() - start, _weights(model)))
    curve = []
    for seconds, weights in snapshots:
        model.load_state_dict(weights)
        curve.append((seconds, judged_accuracy(judge, model.eval().sample, samples_per_class)))
    return (
        curve,
        reconstructions_judged(judge, model, *test),
        fitted_prior_judged(judge, model, x, y, samples_per_class, components),
        kl_split_of(model, x, y),
    )


def command_seconds(dataset):
    """Wall time of ``python -m cvaelib train --dataset D`` itself: training, test passes, the final figures."""
    with TemporaryDirectory() as runs:
        start = time.perf_counter()
        cli(["train", "--dataset", dataset, "--out", str(Path(runs) / "m.pt"), "--device", "cpu", "--no-progress"])
        return time.perf_counter() - start


def seconds_to(curve, accuracy):
    return next((s for s, a in curve if a >= accuracy), None)


def run(
    dataset, recipe, peer_epochs, default_epochs, samples_per_class, with_command=True, train_size=None, components=(1,)
):
    xt, yt = data.load(dataset, "test")
    judge, _ = load_judge(dataset)
    real = classifier_accuracy(judge, xt, yt)
    blurred = accuracy_under_blur(judge, xt, yt)  # how much blur the judge tolerates
    share, relative, budget = TARGETS[dataset]
    target = share * real if relative else share
    test = xt[:2000], yt[:2000]
    ours, ceiling, fitted, split = default_curve(
        recipe, dataset, judge, default_epochs, samples_per_class, train_size, test, components
    )
    peer = peer_curve(dataset, judge, peer_epochs, samples_per_class, train_size)
    peer_final = peer[-1][1]
    return {
        "dataset": dataset,
        "judge_on_real_test": real,
        "judge_on_blurred_test": blurred,
        "default": ours,
        "default_reconstructions_judged": ceiling,
        "default_fitted_prior": fitted,
        "default_kl_split": split,
        "peer": peer,
        "peer_final": peer_final,
        "default_to_peer_final": seconds_to(ours, peer_final),
        "peer_to_peer_final": seconds_to(peer, peer_final),
        "target": target,
        "budget_seconds": budget,
        "default_to_target": seconds_to(ours, target),
        # the fitted prior's samples are judged once, after the last epoch, and fitting adds its seconds
        "fitted_to_target": {
            k: ours[-1][0] + f["fit_seconds"] if f["judged"] >= target else None for k, f in fitted.items()
        },
        "command_seconds": command_seconds(dataset) if with_command else None,
    }


def _seconds(value):
    return "not reached" if value is None else f"{value:.0f} s"


def changes(a: argparse.Namespace) -> str:
    """What ``--latent-dim`` and ``--beta`` change in the default recipe, in words ("" for the default itself)."""
    return ", ".join(f"{k} {v:g}" for k, v in [("latent_dim", a.latent_dim), ("beta", a.beta)] if v is not None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options (``--help`` lists them); a changed default without ``--no-command`` is refused
    before any work, as the command would time the unchanged one."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"], choices=sorted(TARGETS))
    p.add_argument("--peer-epochs", type=int, default=20, help="pytorch/examples trains 10; 20 gives it time")
    p.add_argument("--default-epochs", type=int, help="default: the command line's epochs for the dataset")
    # 5,000 samples judge an accuracy near 98 % to about 0.2 points (one standard error); 1,000 left 0.45 points
    p.add_argument("--samples-per-class", type=int, default=500)
    p.add_argument("--no-command", action="store_true", help="skip timing the whole default command")
    p.add_argument("--train-size", type=int, help="train on the first N images only (a quick check)")
    p.add_argument("--latent-dim", type=int, help="train the default with this latent size instead (with --no-command)")
    p.add_argument("--beta", type=float, help="train the default with this KL weight instead (with --no-command)")
    p.add_argument("--components", type=int, nargs="+", default=[1, 10], help="Gaussians per class of fitted priors")
    p.add_argument("--out", type=Path, help="also write the figures, with their provenance, to this JSON file")
    a = p.parse_args(argv)
    if changes(a) and not a.no_command:
        p.error("--latent-dim and --beta change the default; the command times the unchanged one: add --no-command")
    return a


def print_default_model(r: dict) -> None:
    """What the default's final model draws: its reconstructions, its samples from the fitted priors, its KL split."""
    reconstructed = r["default_reconstructions_judged"]
    print(
        f"  the default's reconstructions of 2,000 real test images: judged {100 * reconstructed:.1f} % (the same"
        " decoder, given each image's own z: its prior samples are not sharper)"
    )
    for k, f in r["default_fitted_prior"].items():
        kind = "one Gaussian" if k == 1 else f"a mixture of {k} Gaussians"
        print(
            f"  its samples with z from {kind} per class fitted to the training images' codes: judged "
            f"{100 * f['judged']:.1f} % (fitted in {f['fit_seconds']:.1f} s; its learned prior is diagonal)"
        )
    split = r["default_kl_split"]
    print(
        "  its average KL on the training images, per class: "
        + ", ".join(f"{e['kl_nats']:.2f}" for e in split)
        + " nats = I(x; z | y) "
        + ", ".join(f"{e['mutual_information_nats']:.2f}{'*' if e['at_cap'] else ''}" for e in split)
        + " + KL(q(z|y) || p(z|y)) "
        + ", ".join(f"{e['marginal_kl_nats']:.2f}" for e in split)
        + " (* at the cap, log of the images per class)"
    )


def print_times(r: dict) -> None:
    """The seconds each reaches the peer's final accuracy and the target in, and the whole command's."""
    ratio = (r["peer_to_peer_final"] / r["default_to_peer_final"]) if r["default_to_peer_final"] else None
    print(
        f"  time to the peer's final {100 * r['peer_final']:.1f} %: default {_seconds(r['default_to_peer_final'])},"
        f" peer {_seconds(r['peer_to_peer_final'])}" + (f" (the default {ratio:.1f}x as fast)" if ratio else "")
    )
    met = r["default_to_target"] is not None and r["default_to_target"] <= r["budget_seconds"]
    print(
        f"  time to {100 * r['target']:.1f} %: default {_seconds(r['default_to_target'])} "
        f"(target: within {r['budget_seconds']} s; {'met' if met else 'not met'})"
    )
    for k, seconds in r["fitted_to_target"].items():
        print(f"  time to {100 * r['target']:.1f} % with {k} fitted Gaussian(s) per class: {_seconds(seconds)}")
    if r["command_seconds"] is not None:
        print(f"  python -m cvaelib train --dataset {r['dataset']}: {r['command_seconds']:.0f} s in all")


def print_result(r: dict, samples_per_class: int, changed: str) -> None:
    """One dataset's figures in words: the judge, both curves, the default's final model, the times."""
    print(
        f"\n{r['dataset']}: judge {100 * r['judge_on_real_test']:.1f} % on real test images; "
        f"{samples_per_class} prior samples per class judged after every epoch"
        + (f"; 'default' below is the default trained with {changed}" if changed else "")
    )
    blurred = r["judge_on_blurred_test"]
    print(
        "  the judge on the same images blurred by a Gaussian of "
        + " / ".join(f"{s:g}" for s in blurred)
        + " pixels: "
        + " / ".join(f"{100 * acc:.1f} %" for acc in blurred.values())
        + " (how much blur its target leaves room for)"
    )
    for name in ("default", "peer"):
        print(f"  {name:8s} " + "  ".join(f"{s:.0f}s:{100 * acc:.1f}%" for s, acc in r[name]))
    print_default_model(r)
    print_times(r)


def main(argv: list[str] | None = None) -> list[dict]:
    a = parse_args(argv)
    began, changed = time.time(), changes(a)
    results = []
    for dataset in a.datasets:
        r = run(
            dataset,
            varied_recipe(dataset, a.latent_dim, a.beta),
            a.peer_epochs,
            a.default_epochs,
            a.samples_per_class,
            not a.no_command,
            a.train_size,
            a.components,
        )
        results.append(r)
        print_result(r, a.samples_per_class, changed)
    if a.out is not None:
        write_record(a.out, as_json(record_at_end(a, began, results=results)))
        print(f"wrote {a.out}")
    return results


if __name__ == "__main__":
    main()
