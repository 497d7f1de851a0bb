import math

import pytest
import torch

from cvaelib import CVAE, VAE, data
from cvaelib.evaluate import (
    active_units,
    group_figures,
    iwae_bound,
    kl_per_dim,
    mutual_information,
    negative_elbo,
    posterior_stats,
    report,
)
from cvaelib.losses import GroupStats, elbo, gaussian_kl
from cvaelib.train import fit


@pytest.fixture(scope="module")
def trained(request):
    """A small CVAE trained briefly on real MNIST, and 200 test images."""
    root = request.getfixturevalue("data_root")
    x, y = data.stratified_subset(*data.load("mnist", "train", root), 100)
    xt, yt = data.load("mnist", "test", root)
    model = CVAE(latent_dim=8)
    fit(model, elbo, data.Batches(x, y, 100), 3, device="cpu", progress=False)
    return model.eval(), data.Batches(xt[:200], yt[:200], 100, shuffle=False)


def test_iwae_bound_is_tighter_than_the_elbo_and_tightens_with_k(trained):
    model, batches = trained
    torch.manual_seed(0)
    nelbo = negative_elbo(model, batches)["nelbo"]
    bounds = {}
    for k in (1, 10, 100):
        torch.manual_seed(0)
        bounds[k] = iwae_bound(model, batches, k)
    assert bounds[1] == pytest.approx(nelbo, rel=0.02)  # K = 1 is the ELBO (up to sampling noise)
    assert bounds[100] < bounds[10] < bounds[1]
    assert bounds[100] < nelbo


def test_iwae_rejects_k_below_one(trained):
    with pytest.raises(ValueError, match="k must be at least 1"):
        iwae_bound(trained[0], trained[1], 0)


def test_active_units_counts_dimensions_whose_mean_varies():
    mu = torch.zeros(1000, 4)
    mu[:, 0] = torch.randn(1000)  # variance ~1: active
    mu[:, 1] = 0.05 * torch.randn(1000)  # variance ~0.0025: inactive
    count, variance = active_units(mu)
    assert count == 1 and variance.shape == (4,)
    assert active_units(mu, threshold=0.001)[0] == 2


def test_kl_per_dim_averages_the_gaussian_kl():
    mu, logvar = torch.randn(10, 3), torch.randn(10, 3)
    torch.testing.assert_close(kl_per_dim(mu, logvar), gaussian_kl(mu, logvar).mean(0))


def test_mutual_information_bounds():
    torch.manual_seed(0)
    # every x has the same posterior: z says nothing about x (the estimate's noise ~ 1/sqrt(N))
    assert abs(mutual_information(torch.zeros(5000, 2), torch.zeros(5000, 2))) < 0.05
    n = 2000
    # far-apart, narrow posteriors: z identifies x, I(x; z) reaches log N
    mu = torch.arange(n, dtype=torch.float32)[:, None] * 10
    assert mutual_information(mu, torch.full((n, 1), -4.0)) == pytest.approx(math.log(n), abs=0.01)
    # an autoencoder's posteriors (std 1e-6 and below) reach log N and no more (noise ~ sqrt(D/2/N) = 0.045)
    mu = torch.randn(n, 8)
    for logvar in (-28.0, -40.0):
        assert mutual_information(mu, torch.full_like(mu, logvar)) == pytest.approx(math.log(n), abs=0.2)


def test_report_has_every_figure(trained):
    model, batches = trained
    figures = report(model, batches, k=5)
    assert figures["iwae_nats"] < figures["negative_elbo_nats"]
    assert figures["bits_per_dim"] is None  # Bernoulli on grey levels is not a distribution of 8-bit values
    assert 0 <= figures["active_units"] <= 8 and len(figures["kl_per_dim"]) == 8
    assert 0 < figures["mutual_information_nats"] <= math.log(200) + 0.1
    assert sum(figures["kl_per_dim"]) == pytest.approx(figures["kl_nats"], rel=0.05)


def test_report_of_a_colour_model_gives_bits_per_dim():
    model = VAE(image_shape=(3, 32, 32), arch="conv", likelihood="logistic", latent_dim=4)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    figures = report(model, data.Batches(x, torch.zeros(6, dtype=torch.int64), 3, shuffle=False), k=2)
    assert figures["bits_per_dim"] == pytest.approx(figures["negative_elbo_nats"] / (3072 * math.log(2)))
    # an untrained model is close to uniform over 256 values, about 8 bits/dim, not far from it
    assert 4 < figures["bits_per_dim"] < 12


@pytest.mark.parametrize("images_per_pass", [6, 2000])  # one sample per pass; every sample in one pass
def test_report_gives_the_same_figures_in_channels_last(images_per_pass):
    from cvaelib.evaluate import expected_seconds

    torch.manual_seed(0)
    model = CVAE(image_shape=(3, 32, 32), arch="conv", likelihood="logistic", latent_dim=4).eval()
    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    batches = data.Batches(x, torch.arange(12) % 10, 6, shuffle=False)
    torch.manual_seed(1)
    plain = report(model, batches, k=7, progress=False, images_per_pass=images_per_pass)
    assert expected_seconds(model, batches, 7, True, images_per_pass) > 0
    torch.manual_seed(1)
    fast = report(model, batches, k=7, progress=False, channels_last=True, images_per_pass=images_per_pass)
    assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    for key in ("negative_elbo_nats", "iwae_nats", "kl_nats", "bits_per_dim"):
        assert fast[key] == pytest.approx(plain[key], rel=1e-5), key


def test_posterior_stats_shapes(trained):
    mu, logvar = posterior_stats(*trained)
    assert mu.shape == logvar.shape == (200, 8)


def test_a_mean_that_moves_only_with_the_label_is_not_an_active_unit():
    # A collapsed CVAE: q(z|x,y) = p(z|y), so the posterior mean is a function of y alone.
    labels = torch.arange(10).repeat(50)
    mu = torch.randn(10, 3)[labels]  # (500, 3)
    assert active_units(mu)[0] == 3  # across classes it looks active
    count, variance = active_units(mu, labels=labels)
    assert count == 0 and float(variance.max()) < 1e-10
    mu = mu + torch.tensor([0.5, 0.0, 0.0]) * torch.randn(500, 3)  # dimension 0 also moves with x
    assert active_units(mu, labels=labels)[0] == 1


def test_conditional_mutual_information_ignores_what_the_label_says():
    labels = torch.arange(4).repeat(500)
    mu = 10.0 * torch.arange(4.0)[labels, None]  # z tells the label (log 4 nats) and nothing else
    logvar = torch.zeros(2000, 1)
    assert mutual_information(mu, logvar) == pytest.approx(math.log(4), abs=0.05)
    assert abs(mutual_information(mu, logvar, labels)) < 0.05


def test_batched_importance_samples_match_one_sample_at_a_time(trained):
    """The K samples decoded together give the bound the one-at-a-time loop gave, on the same random numbers."""
    from cvaelib.losses import LOG_2PI, gaussian_log_prob

    model, batches = trained
    torch.manual_seed(3)
    batched = iwae_bound(model, batches, k=7)
    torch.manual_seed(3)
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            mu, logvar = model.encode(x, y)
            prior_mu, prior_logvar = model.prior(y)
            eps = torch.randn(7, *mu.shape)
            z, log_q = mu + (0.5 * logvar).exp() * eps, -0.5 * (LOG_2PI + logvar + eps.pow(2)).sum(-1)
            log_w = []
            for k in range(7):  # the former implementation: one sample of every image at a time
                log_px = model.likelihood.log_prob(model.decode_params(z[k], y), x)
                log_w.append(
                    log_px
                    + gaussian_log_prob(
                        z[k],
                        prior_mu if prior_mu is not None else torch.zeros_like(mu),
                        prior_logvar if prior_logvar is not None else torch.zeros_like(mu),
                    )
                    - log_q[k]
                )
            total += float(-(torch.logsumexp(torch.stack(log_w), 0) - math.log(7)).sum())
            n += len(x)
    assert batched == pytest.approx(total / n, rel=1e-5)


def test_report_reads_shuffled_batches_once_and_keeps_labels_with_their_images(trained):
    model, batches = trained
    shuffled = data.Batches(batches.images, batches.labels, 50, shuffle=True, seed=4)
    reads = {"n": 0}

    class Counting:
        def __iter__(self):
            for batch in shuffled:
                reads["n"] += 1
                yield batch

        def __len__(self):
            return len(shuffled)

    torch.manual_seed(0)
    figures = report(model, Counting(), k=3, progress=False)
    assert reads["n"] == len(shuffled)  # each batch read once
    torch.manual_seed(0)
    in_order = report(model, batches, k=3, progress=False)
    assert figures["active_units"] == in_order["active_units"]  # within-class statistics need the right labels
    assert figures["mutual_information_nats"] == pytest.approx(in_order["mutual_information_nats"], abs=0.3)


def test_mutual_information_reaches_its_cap_when_every_image_has_a_code_of_its_own():
    from cvaelib.evaluate import mutual_information_cap

    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    assert mutual_information_cap(8) == pytest.approx(math.log(8))
    # p(c) log N_c: a quarter each at log 2 and a half at log 4
    assert mutual_information_cap(8, labels) == pytest.approx(0.25 * math.log(2) * 2 + 0.5 * math.log(4))
    mu, logvar = torch.arange(8.0)[:, None] * 100, torch.full((8, 1), -10.0)  # far apart, narrow: all told apart
    assert mutual_information(mu, logvar) == pytest.approx(mutual_information_cap(8), abs=1e-3)
    assert mutual_information(mu, logvar, labels) == pytest.approx(mutual_information_cap(8, labels), abs=1e-3)
    group = GroupStats(mu, logvar, None, None, torch.zeros_like(mu))
    assert group_figures([group], labels)[0]["mutual_information_cap_nats"] == mutual_information_cap(8, labels)


def _three_models():
    """One model of each kind that implements the interface, with inputs: CVAE, hierarchy, structured output."""
    from cvaelib.hierarchical import HierarchicalCVAE
    from cvaelib.structured import StructuredCVAE, split_quadrants

    torch.manual_seed(0)
    digits = torch.randint(0, 256, (4, 1, 28, 28)) / 255
    yield CVAE(arch="conv", image_shape=(3, 32, 32)), torch.rand(4, 3, 32, 32), torch.arange(4)
    yield HierarchicalCVAE(size="tiny"), torch.rand(4, 3, 32, 32), torch.arange(4)
    yield StructuredCVAE(latent_dim=4, hidden=32), *split_quadrants(digits, 1)[:2]


@pytest.mark.parametrize("model, x, y", list(_three_models()), ids=["cvae", "hierarchical", "structured"])
def test_forward_with_samples_is_the_repeated_batch_encoded_once(model, x, y):
    """``forward(x, y, samples=K)`` gives what ``forward`` gives on the batch K times over, on the same noise."""
    from cvaelib.interface import repeat_batch

    model.eval()
    with torch.no_grad():
        torch.manual_seed(5)
        once = model(x, y, samples=3)
        torch.manual_seed(5)
        repeated = model(repeat_batch(x, 3), repeat_batch(y, 3))
    assert once["log_px"].shape == (3 * len(x),)
    torch.testing.assert_close(once["log_px"], repeated["log_px"], rtol=1e-4, atol=1e-3)
    for a, b in zip(once["groups"], repeated["groups"], strict=True):
        for field in ("mu", "logvar", "prior_mu", "prior_logvar", "eps"):
            torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        model(x, y, samples=0)
