import copy
import math
from functools import partial

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

from cvaelib import data, plots
from cvaelib.structured import (
    HIDDEN,
    BaselineNet,
    StructuredCVAE,
    baseline_nll,
    evaluate,
    importance_nll,
    masked_log_prob,
    negative_elbo,
    negative_gsnn,
    negative_hybrid,
    per_missing_pixel,
    prior_nll,
    quadrant_mask,
    sample_spread,
    split_quadrants,
    structured_loss,
)
from cvaelib.train import fit


def random_images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g)


@pytest.mark.parametrize("num_given", [1, 2, 3])
def test_split_reconstructs_the_image_exactly(num_given):
    images = random_images()
    x, y, mask = split_quadrants(images, num_given)
    assert x.shape == y.shape == mask.shape == images.shape
    assert torch.equal(x * (1 - mask) + y * mask, images)
    # hidden pixels of x are exactly the masked ones, and y is empty where x is given
    assert torch.equal(x == HIDDEN, mask.bool())
    assert torch.all(y[mask == 0] == 0)
    # the given and the missing pixels are complementary and cover the image once
    given = 1 - mask
    assert torch.all((given + mask) == 1) and torch.all(given * mask == 0)
    assert torch.all(mask.sum(dim=(1, 2, 3)) == 784 - 196 * num_given)


def test_quadrant_convention_follows_pyro():
    missing = {n: quadrant_mask(n)[0, 0] for n in (1, 2, 3)}
    top_left, top_right = (slice(0, 14), slice(0, 14)), (slice(0, 14), slice(14, 28))
    bottom_left, bottom_right = (slice(14, 28), slice(0, 14)), (slice(14, 28), slice(14, 28))

    def is_given(m, quadrant):
        return bool(torch.all(m[quadrant] == 0))

    assert [q for q in (top_left, top_right, bottom_left, bottom_right) if is_given(missing[1], q)] == [bottom_left]
    assert [q for q in (top_left, top_right, bottom_left, bottom_right) if is_given(missing[2], q)] == [
        top_left,
        bottom_left,
    ]
    assert bool(torch.all(missing[3][bottom_right] == 1)) and int(missing[3].sum()) == 196


@pytest.mark.parametrize("bad", [0, 4, -1, 2.5, "2"])
def test_bad_quadrant_counts_are_rejected(bad):
    with pytest.raises(ValueError, match=r"num_given .* must be 1, 2 or 3"):
        split_quadrants(random_images(), bad)


def test_bad_image_shape_is_rejected():
    with pytest.raises(ValueError, match=r"shape \(B, 1, H, H\)"):
        split_quadrants(torch.rand(2, 3, 28, 28), 2)


def test_shapes():
    torch.manual_seed(0)
    images = random_images(5)
    x, y, mask = split_quadrants(images, 2)
    baseline, cvae = BaselineNet(hidden=32), StructuredCVAE(latent_dim=4, hidden=32)
    assert baseline(x).shape == (5, 1, 28, 28)
    with torch.no_grad():  # logits from -8 to 8: a prediction that clipped or rescaled them would show
        baseline.net[-1].bias.copy_(torch.linspace(-8, 8, 784))
    torch.testing.assert_close(baseline.predict(x), torch.sigmoid(baseline(x)))  # the pixel means of its logits
    assert baseline.predict(x).min() < 0.001 and baseline.predict(x).max() > 0.999
    for mu, logvar in (cvae.prior(x), cvae.encode(x, y)):
        assert mu.shape == logvar.shape == (5, 4)
    assert cvae.decode_params(torch.randn(5, 4), x).shape == (5, 1, 28, 28)
    assert cvae.predict(x, num_samples=3).shape == (3, 5, 1, 28, 28)
    with torch.random.fork_rng():  # predict decodes z drawn from the prior network p(z|x), with its noise
        torch.manual_seed(1)
        predicted = cvae.predict(x, num_samples=2)
        torch.manual_seed(1)
        mu, logvar = cvae.prior(x)
        z = mu + (logvar / 2).exp() * torch.randn(2, *mu.shape)
        expected = torch.sigmoid(cvae.decode_params(z.flatten(0, 1), x.repeat(2, 1, 1, 1))).view(2, 5, 1, 28, 28)
    torch.testing.assert_close(predicted, expected)
    parts = negative_elbo(cvae, x, y, num_samples=10)
    assert parts["nelbo_per_image"].shape == (5,) and parts["loss"].dim() == 0
    assert torch.allclose(parts["nelbo"], parts["recon"] + parts["kl"])
    assert importance_nll(cvae, x, y, k=7, chunk=3).shape == (5,)
    assert baseline_nll(baseline, x, y, mask)["nll_per_image"].shape == (5,)
    with pytest.raises(ValueError, match="k must be at least 1"):
        importance_nll(cvae, x, y, k=0)


def test_masked_log_prob_counts_only_the_missing_pixels():
    torch.manual_seed(0)
    images = random_images(4)
    x, y, mask = split_quadrants(images, 1)
    logits = torch.randn_like(images)
    changed = logits + 10 * (1 - mask) * torch.randn_like(images)  # only the given pixels change
    assert torch.allclose(masked_log_prob(logits, y, mask), masked_log_prob(changed, y, mask))
    by_hand = -(F.binary_cross_entropy_with_logits(logits, images, reduction="none") * mask).sum(dim=(1, 2, 3))
    assert torch.allclose(masked_log_prob(logits, y, mask), by_hand)


def test_generation_network_reads_x():
    torch.manual_seed(0)
    cvae = StructuredCVAE(latent_dim=4, hidden=32)
    x1, _, _ = split_quadrants(random_images(3, seed=1), 2)
    x2, _, _ = split_quadrants(random_images(3, seed=2), 2)
    z = torch.randn(3, 4)
    assert not torch.allclose(cvae.decode_params(z, x1), cvae.decode_params(z, x2))


def test_recognition_network_sees_the_whole_image():
    torch.manual_seed(0)
    cvae = StructuredCVAE(latent_dim=4, hidden=32)
    x, y, mask = split_quadrants(random_images(3), 2)
    _, y_other, _ = split_quadrants(random_images(3, seed=5), 2)
    assert not torch.allclose(cvae.encode(x, y)[0], cvae.encode(x, y_other)[0])


@pytest.mark.parametrize("kind", ["NN", "elbo", "gsnn", "hybrid"])
def test_structured_loss_trains_every_model_and_objective_with_fit(mnist_subset, kind):
    images, labels, _, _ = mnist_subset
    batches = data.Batches(images, labels, 50, seed=0)
    torch.manual_seed(0)
    model = BaselineNet(hidden=64) if kind == "NN" else StructuredCVAE(latent_dim=8, hidden=64)
    objective = "elbo" if kind == "NN" else kind
    loss_fn = partial(structured_loss, num_given=2, objective=objective)
    history = fit(model, loss_fn, batches, 3, device="cpu", progress=False)
    assert all(math.isfinite(r["train_loss"]) for r in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"], kind


def test_unknown_objective_and_alpha_are_rejected():
    model = StructuredCVAE(latent_dim=2, hidden=8)
    with pytest.raises(ValueError, match="objective must be one of"):
        structured_loss(model, random_images(2), objective="gnsn")
    with pytest.raises(ValueError, match="objective must be one of"):
        evaluate(model, [(random_images(2), None)], 1, objective="GSNN")
    x, y, _ = split_quadrants(random_images(2), 1)
    with pytest.raises(ValueError, match="alpha"):
        negative_hybrid(model, x, y, alpha=1.5)
    with pytest.raises(ValueError, match="k must be"):
        prior_nll(model, x, y, k=0)


def test_gsnn_trains_the_prior_network_and_never_reads_y_through_q():
    torch.manual_seed(0)
    model = StructuredCVAE(latent_dim=4, hidden=16)
    x, y, _ = split_quadrants(random_images(5), 1)
    negative_gsnn(model, x, y)["loss"].backward()
    assert all(p.grad is None for p in model.recognition_net.parameters())  # q(z|x,y) is not used
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prior_net.parameters())
    model.zero_grad(set_to_none=True)
    negative_hybrid(model, x, y, alpha=0.5)["loss"].backward()  # the hybrid trains both
    assert all(p.grad is not None for p in (*model.recognition_net.parameters(), *model.prior_net.parameters()))


def test_gsnn_bound_and_prior_estimate_are_exact_when_the_decoder_ignores_z():
    """With p(y|x,z) = p(y|x), both equal -log p(y|x), the Bernoulli NLL of the decoder at any z, for every K."""
    torch.manual_seed(0)
    model = StructuredCVAE(latent_dim=4, hidden=16).eval()
    with torch.no_grad():
        model.generation_net[0].weight[:, 784:] = 0  # the columns that read z
        x, y, mask = split_quadrants(random_images(6), 2)
        logits = model.decode_params(torch.zeros(6, 4), x)
        exact = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mul(mask).sum(dim=(1, 2, 3))
        gsnn = negative_gsnn(model, x, y, num_samples=3)["gsnn_bound_per_image"]
        assert torch.allclose(gsnn, exact, atol=1e-4)
        for k in (1, 7):
            assert torch.allclose(prior_nll(model, x, y, k=k), exact, atol=1e-4)


def test_one_sample_prior_estimate_is_the_one_sample_gsnn_bound(uses_z):
    model, x, y, _ = uses_z
    with torch.no_grad():
        torch.manual_seed(5)
        gsnn = negative_gsnn(model, x, y, num_samples=1)["gsnn_bound_per_image"]
        torch.manual_seed(5)
        assert torch.allclose(prior_nll(model, x, y, k=1), gsnn)


def test_prior_estimate_tightens_with_k_below_the_gsnn_bound(uses_z):
    model, x, y, _ = uses_z
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.generation_net[0].weight[:, 784:] *= 20  # p(y|x,z) varies strongly with z ~ p(z|x)
        torch.manual_seed(0)
        bound = float(negative_gsnn(model, x, y, num_samples=200)["gsnn_bound"])
        estimates = {}
        for k in (10, 100):
            torch.manual_seed(k)
            estimates[k] = float(prior_nll(model, x, y, k=k).mean())
    assert bound > estimates[10] > estimates[100], (estimates, bound)


def test_hybrid_is_the_weighted_sum_of_the_two_objectives():
    model = StructuredCVAE(latent_dim=4, hidden=16)
    x, y, _ = split_quadrants(random_images(5), 3)
    for alpha in (0.0, 0.3, 1.0):
        torch.manual_seed(1)
        elbo = negative_elbo(model, x, y)["loss"]  # the hybrid draws q's noise first, then the prior's
        gsnn = negative_gsnn(model, x, y)["loss"]
        torch.manual_seed(1)
        hybrid = negative_hybrid(model, x, y, alpha=alpha)
        assert torch.allclose(hybrid["loss"], alpha * elbo + (1 - alpha) * gsnn)
        assert torch.allclose(hybrid["nelbo"], elbo) and torch.allclose(hybrid["gsnn_bound"], gsnn)


@pytest.fixture(scope="module")
def uses_z():
    """An untrained CVAE whose q(z|x,y) is far from its prior and whose p(y|x,z) depends strongly on z.

    A briefly trained CVAE barely uses z (KL near 0), so every estimate would coincide; here
    q = N(1, e^-1) per dimension against p(z|x) = N(0, I), a KL of about 5.5 nats, so the
    importance weights vary and the estimates for different K differ measurably.
    """
    torch.manual_seed(0)
    model = StructuredCVAE(latent_dim=8, hidden=64).eval()
    with torch.no_grad():
        model.prior_net[-1].weight.zero_()  # p(z|x) = N(0, I)
        model.prior_net[-1].bias.zero_()
        model.recognition_net[-1].weight.mul_(0.1)
        model.recognition_net[-1].bias[:8] = 1.0  # mu of q near 1
        model.recognition_net[-1].bias[8:] = -1.0  # logvar of q near -1
        model.generation_net[0].weight[:, 784:] *= 5  # the columns that read z
    x, y, mask = split_quadrants(random_images(200, seed=3), 1)
    return model, x, y, mask


def test_importance_estimate_is_below_the_elbo_and_decreases_with_k(uses_z):
    model, x, y, mask = uses_z
    torch.manual_seed(0)
    with torch.no_grad():
        nelbo = float(negative_elbo(model, x, y, num_samples=100)["nelbo"])
    estimates = {}
    for k in (1, 10, 100, 1000):
        torch.manual_seed(k)
        estimates[k] = float(importance_nll(model, x, y, k=k).mean())
    assert all(math.isfinite(v) for v in estimates.values())
    assert estimates[100] <= nelbo and estimates[1000] <= nelbo, (estimates, nelbo)
    # larger K: a tighter (lower) estimate, and the steps shrink as it converges
    assert estimates[1] > estimates[10] > estimates[100] > estimates[1000] - 0.05, estimates
    assert estimates[100] - estimates[1000] < estimates[1] - estimates[10], estimates


def test_one_sample_importance_estimate_is_the_elbo_in_expectation(uses_z):
    model, x, y, mask = uses_z
    torch.manual_seed(0)
    with torch.no_grad():
        nelbo = negative_elbo(model, x, y, num_samples=500)["nelbo_per_image"]  # (B,), near exact
    draws = torch.stack([importance_nll(model, x, y, k=1) for _ in range(50)])  # (50, B)
    diff = draws - nelbo  # noise of the 1-sample estimate (with a sampled, not exact, KL)
    standard_error = float(diff.std() / math.sqrt(diff.numel()))
    assert abs(float(diff.mean())) < 4 * standard_error + 0.05, (float(diff.mean()), standard_error)


def test_importance_estimate_is_below_the_elbo_for_an_untrained_model():
    torch.manual_seed(0)
    model = StructuredCVAE(latent_dim=8, hidden=64).eval()
    x, y, mask = split_quadrants(random_images(50), 2)
    with torch.no_grad():
        nelbo = float(negative_elbo(model, x, y, num_samples=100)["nelbo"])
    assert float(importance_nll(model, x, y, k=200).mean()) <= nelbo


def test_evaluate_reports_exact_baseline_nll_and_cvae_bounds():
    torch.manual_seed(0)
    images = random_images(8)
    batches = [(images[:5], torch.zeros(5)), (images[5:], torch.zeros(3))]
    baseline = BaselineNet(hidden=32).eval()
    x, y, mask = split_quadrants(images, 3)
    with torch.no_grad():
        expected = float(baseline_nll(baseline, x, y, mask)["nll"])
    assert evaluate(baseline, batches, 3) == pytest.approx({"nll": expected}, rel=1e-5)
    cvae = StructuredCVAE(latent_dim=4, hidden=32)
    keys = {
        "elbo": {"nelbo", "nll"},
        "gsnn": {"gsnn_bound", "nll_prior"},
        "hybrid": {"nelbo", "nll", "gsnn_bound", "nll_prior"},
    }
    for objective, expected_keys in keys.items():
        figures = evaluate(cvae, batches, 3, num_samples=10, k=50, objective=objective)
        assert set(figures) == expected_keys and all(math.isfinite(v) for v in figures.values())


def test_completion_figure_has_one_row_per_kind():
    torch.manual_seed(0)
    fig = plots.completion_figure(
        random_images(4),
        1,
        BaselineNet(hidden=16).eval(),
        StructuredCVAE(latent_dim=2, hidden=16).eval(),
        num_samples=2,
    )
    assert len(fig.axes) == (3 + 2) * 4
    assert [fig.axes[4 * r].get_ylabel() for r in range(5)] == [
        "Inputs",
        "Truth",
        "NN",
        "CVAE sample 1",
        "CVAE sample 2",
    ]
    plt.close(fig)


def test_spread_and_sharpness_count_only_the_missing_pixels():
    x, _, mask = split_quadrants(random_images(4), 3)  # 196 missing pixels per image
    t = torch.where(mask.bool(), torch.full_like(mask, 0.25), torch.full_like(mask, 9.0))  # 9 on given pixels
    assert per_missing_pixel(t, mask) == pytest.approx(0.25)
    assert per_missing_pixel(t.expand(3, *t.shape), mask) == pytest.approx(0.25)  # (S, B, ...) as well
    torch.manual_seed(0)
    model = StructuredCVAE(latent_dim=4, hidden=16).eval()
    with torch.no_grad():
        model.generation_net[0].weight[:, 784:] = 0  # every z decodes to the same completion
    figures = sample_spread(model, x, num_samples=5)
    completion = torch.sigmoid(model.decode_params(torch.zeros(4, 4), x)).detach()
    assert figures["spread"] == pytest.approx(0.0, abs=1e-6)
    assert figures["sharpness"] == pytest.approx(per_missing_pixel((completion - 0.5).abs(), mask), rel=1e-5)


def test_chapter_5s_models_rebuild_from_their_configuration():
    from dataclasses import asdict

    from cvaelib.models import build_model

    for model in (BaselineNet(hidden=8), StructuredCVAE(latent_dim=3, hidden=8)):
        again = build_model(asdict(model.config))
        assert type(again) is type(model) and again.config == model.config
        assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]
    with pytest.raises(ValueError, match="arch must be 'structured_cvae'"):
        StructuredCVAE(arch="structured_nn")
