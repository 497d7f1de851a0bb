import math

import pytest
import torch

from cvaelib import CVAE, VAE, data
from cvaelib.diagnostics import decoder_sensitivity, diagnose
from cvaelib.evaluate import negative_elbo
from cvaelib.losses import elbo, gaussian_kl
from cvaelib.remedies import (
    RemedyConfig,
    RemedyLoss,
    balanced_kl,
    beta_schedule,
    free_bits,
    group_balance_weights,
    group_kl,
    optimal_sigma,
)
from cvaelib.train import fit


def test_beta_schedules():
    assert beta_schedule("constant", 0.0) == 1.0
    assert [beta_schedule("linear", p, warmup=2) for p in (0, 1, 2, 5)] == [0.0, 0.5, 1.0, 1.0]
    # 2 cycles over 4 epochs: each cycle of 2 epochs rises over its first half, then stays at 1
    values = [beta_schedule("cyclical", p, warmup=4, cycles=2, ratio=0.5) for p in (0, 0.5, 1, 1.5, 2, 2.5)]
    assert values == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="unknown beta schedule 'cosine'"):
        beta_schedule("cosine", 0.0)


def test_free_bits_floors_small_dimensions_and_stops_their_gradient():
    kl = torch.tensor([[0.1, 2.0], [0.3, 4.0]], requires_grad=True)  # batch means 0.2 and 3.0
    out = free_bits(kl, 0.5)
    torch.testing.assert_close(out, torch.tensor([0.5 + 2.0, 0.5 + 4.0]))
    out.sum().backward()
    torch.testing.assert_close(kl.grad, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


def test_free_bits_per_group():
    kl = torch.tensor([[0.1, 0.1, 3.0]])
    torch.testing.assert_close(free_bits(kl, 1.0, group_sizes=(2, 1)), torch.tensor([1.0 + 3.0]))


def test_group_kl_and_bad_sizes():
    kl = torch.arange(6.0).view(1, 6)
    torch.testing.assert_close(group_kl(kl, (2, 4)), torch.tensor([[1.0, 14.0]]))
    with pytest.raises(ValueError, match=r"group sizes \(2, 3\) do not add up to the latent size 6"):
        group_kl(kl, (2, 3))


def test_group_balance_weights_match_a_hand_computation():
    kl_groups = torch.tensor([[1.0, 4.0], [3.0, 8.0]], requires_grad=True)
    weights = group_balance_weights(kl_groups, (2, 4))
    # batch means 2 and 6, plus 0.01, divided by the sizes 2 and 4: 1.005 and 1.5025; mean 1.25375
    torch.testing.assert_close(weights, torch.tensor([1.005 / 1.25375, 1.5025 / 1.25375]))
    assert weights.mean().item() == pytest.approx(1.0) and not weights.requires_grad


def test_balanced_kl_has_the_plain_value_and_splits_gradients_by_alpha():
    torch.manual_seed(0)
    leaves = [torch.randn(4, 3, requires_grad=True) for _ in range(4)]
    mu, logvar, pmu, plogvar = leaves
    alpha = 0.8
    balanced = balanced_kl(mu, logvar, pmu, plogvar, alpha)
    plain = gaussian_kl(mu, logvar, pmu, plogvar)
    torch.testing.assert_close(balanced, plain)
    grads_balanced = torch.autograd.grad(balanced.sum(), leaves)
    grads_plain = torch.autograd.grad(plain.sum(), leaves)
    for g_b, g_p in zip(grads_balanced[:2], grads_plain[:2]):  # the posterior's share: 1 - alpha
        torch.testing.assert_close(g_b, (1 - alpha) * g_p)
    for g_b, g_p in zip(grads_balanced[2:], grads_plain[2:]):  # the prior's share: alpha
        torch.testing.assert_close(g_b, alpha * g_p)
    with pytest.raises(ValueError, match="needs a learned prior"):
        balanced_kl(mu, logvar, None, None)


def test_optimal_sigma_is_the_root_mean_squared_error():
    x, mean = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.3)
    assert float(optimal_sigma(x, mean)) == pytest.approx(0.3)


def test_remedy_loss_without_remedies_is_the_elbo():
    model, x, y = CVAE(latent_dim=4), torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])
    torch.manual_seed(0)
    expected = elbo(model, x, y)
    torch.manual_seed(0)
    got = RemedyLoss()(model, x, y)
    for key in ("loss", "recon", "kl", "nelbo"):
        torch.testing.assert_close(got[key], expected[key])


def test_remedy_loss_schedule_advances_with_training_steps_and_resets_each_epoch():
    model, x, y = CVAE(latent_dim=4), torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])
    loss = RemedyLoss(RemedyConfig(schedule="linear", warmup=2), steps_per_epoch=4)
    betas = [float(loss(model, x, y)["beta"]) for _ in range(3)]
    assert betas == [0.0, 0.125, 0.25]
    loss.set_epoch(1)
    assert float(loss(model, x, y)["beta"]) == 0.5
    model.eval()  # evaluation does not advance the schedule
    assert float(loss(model, x, y)["beta"]) == float(loss(model, x, y)["beta"]) == 0.625


def test_remedy_loss_options_are_checked():
    with pytest.raises(ValueError, match="group balancing needs several latent groups"):  # one group, no split
        loss = RemedyLoss(RemedyConfig(group_balance=True, schedule="linear"), steps_per_epoch=4)
        loss(CVAE(latent_dim=2), torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown beta schedule"):
        RemedyConfig(schedule="step")
    with pytest.raises(ValueError, match="needs a fixed-sigma Gaussian decoder"):
        RemedyLoss(RemedyConfig(optimal_sigma=True))(CVAE(latent_dim=2), torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))
    for bad, message in [
        (dict(beta=-1.0), "beta must be a non-negative"),
        (dict(warmup=0.0), "warmup must be a positive"),
        (dict(free_bits=-0.5), "free_bits must be a non-negative"),
        (dict(kl_balance=1.5), r"in \[0, 1\]"),
        (dict(group_sizes=(4, 0)), "group_sizes must be positive"),
        (dict(cycles=0), "cycles must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            RemedyConfig(**bad)
    config = RemedyConfig(group_sizes=[2, 4], kl_balance=0.5, optimal_sigma=True)
    assert config.group_sizes == (2, 4)  # a list (JSON, the command line) is kept as a tuple


def test_remedy_loss_with_every_remedy_trains(mnist_subset):
    x, y, _, _ = mnist_subset
    batches = data.Batches(x, y, 50)
    for model, loss in [
        (CVAE(latent_dim=6, prior="learned"), RemedyLoss(RemedyConfig(kl_balance=0.8, free_bits=0.1))),
        (
            CVAE(latent_dim=6),
            RemedyLoss(
                RemedyConfig(schedule="cyclical", group_sizes=(2, 4), group_balance=True, warmup=2),
                steps_per_epoch=len(batches),
            ),
        ),
        (CVAE(latent_dim=6, likelihood="gaussian"), RemedyLoss(RemedyConfig(optimal_sigma=True))),
    ]:
        history = fit(model, loss, batches, 2, device="cpu", progress=False)
        # each trains: the true negative ELBO (whatever the remedy weighs) falls by a tenth or more from the first
        # epoch to the second (20-50 % on MNIST; a loss without the reconstruction term leaves it where it was)
        assert history[1]["train_nelbo"] < 0.9 * history[0]["train_nelbo"], (loss.config, history)


def test_diagnose_recognises_a_collapsed_posterior():
    model = VAE(latent_dim=4)
    head = model.encoder.head
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)  # q(z|x) = N(0, I) for every x: the posterior is the prior
    last = model.decoder.net[-3]
    torch.nn.init.zeros_(last.weight)  # and the decoder's output no longer depends on z
    batches = data.Batches(
        torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8), torch.zeros(64, dtype=torch.int64), 32, shuffle=False
    )
    report = diagnose(model, batches)
    assert report["collapsed"] and report["active_units"] == 0 and report["total_kl"] == pytest.approx(0, abs=1e-6)
    assert report["decoder_sensitivity"] == pytest.approx(0, abs=1e-6)
    assert "0 of 4 latent dimensions active" in report["evidence"][0]


def test_diagnose_calls_a_trained_model_healthy(mnist_subset):
    x, y, xt, yt = mnist_subset
    model = CVAE(latent_dim=2)
    fit(model, elbo, data.Batches(x, y, 50), 5, device="cpu", progress=False)
    report = diagnose(model, data.Batches(xt, yt, 250, shuffle=False))
    assert not report["collapsed"] and report["active_units"] >= 1
    assert report["decoder_sensitivity"] > 0.01 and report["mutual_information"] > 0.1
    assert decoder_sensitivity(model) == report["decoder_sensitivity"]


def test_the_sigma_vae_stores_the_sigma_fitted_on_training_data_and_tests_with_it(mnist_subset):
    x, y, xt, yt = mnist_subset
    torch.manual_seed(0)
    model = CVAE(latent_dim=4, likelihood="gaussian")
    loss = RemedyLoss(RemedyConfig(optimal_sigma=True))
    history = fit(
        model,
        loss,
        data.Batches(x, y, 50, shuffle=False),
        1,
        device="cpu",
        progress=False,
        test_batches=data.Batches(xt, yt, 250, shuffle=False),
    )
    model.eval()
    # The stored sigma is the root mean squared error over the epoch's training batches (the loss's running sums) ...
    rmse = math.sqrt(loss._squared_error / loss._count)
    assert loss._count == 200 * 784 and 0.05 < rmse < 0.5  # every pixel of the 200 training images, once
    assert float(model.likelihood.log_sigma.exp()) == pytest.approx(rmse, rel=1e-5)
    # ... and test figures use it, whatever the test batch: training's test figure and evaluate agree.
    torch.manual_seed(1)
    ours = loss(model, xt[:250].float() / 255, yt[:250])["nelbo"]
    torch.manual_seed(1)
    theirs = elbo(model, xt[:250].float() / 255, yt[:250])["nelbo"]
    torch.testing.assert_close(ours, theirs)
    assert history[0]["test_nelbo"] == pytest.approx(
        negative_elbo(model, data.Batches(xt, yt, 250, shuffle=False))["nelbo"], rel=0.02
    )
