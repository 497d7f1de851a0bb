import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from cvaelib import CVAE, VAE
from cvaelib.losses import (
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    GaussianLikelihood,
    bits_per_dim,
    elbo,
    gaussian_kl,
    make_likelihood,
    reparameterize,
)


def test_kl_to_standard_normal_matches_torch_distributions():
    mu, logvar = torch.randn(5, 4), torch.randn(5, 4)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)


def test_kl_to_learned_prior_matches_torch_distributions():
    mu, logvar, pmu, plogvar = (torch.randn(5, 4) for _ in range(4))
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(pmu, (0.5 * plogvar).exp()))
    torch.testing.assert_close(gaussian_kl(mu, logvar, pmu, plogvar), expected)


def test_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.tensor([0.7, -1.2]), torch.tensor([-0.5, 0.3])
    q = Normal(mu, (0.5 * logvar).exp())
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).mean(0)
    torch.testing.assert_close(gaussian_kl(mu, logvar), mc, atol=0.01, rtol=0.01)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    assert gaussian_kl(torch.zeros(3, 2), torch.zeros(3, 2)).abs().max() == 0
    assert (gaussian_kl(torch.randn(3, 2) + 0.1, torch.randn(3, 2)) > 0).all()


def test_reparameterisation_has_the_right_moments_and_gradients():
    torch.manual_seed(0)
    mu = torch.tensor([1.5, -2.0], requires_grad=True)
    logvar = torch.tensor([0.0, math.log(0.25)], requires_grad=True)
    z = reparameterize(mu.expand(100_000, 2), logvar.expand(100_000, 2))
    torch.testing.assert_close(z.mean(0), mu.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 0.5]), atol=0.02, rtol=0)
    z.sum().backward()
    # d(sum z)/d mu = the number of samples; d(sum z)/d logvar = sum eps * sigma / 2, whose mean over eps is 0
    torch.testing.assert_close(mu.grad, torch.full((2,), 100_000.0))
    eps = (z.detach() - mu.detach()) / torch.tensor([1.0, 0.5])
    torch.testing.assert_close(logvar.grad, (eps * torch.tensor([1.0, 0.5]) / 2).sum(0), rtol=1e-4, atol=1e-2)


def test_bernoulli_log_prob_matches_torch_distributions():
    logits, x = torch.randn(3, 1, 28, 28), torch.randint(0, 2, (3, 1, 28, 28)).float()
    expected = Bernoulli(logits=logits).log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(make_likelihood("bernoulli").log_prob(logits, x), expected)


def test_gaussian_log_prob_matches_torch_distributions():
    mean, x = torch.rand(3, 1, 28, 28), torch.rand(3, 1, 28, 28)
    sigma = math.sqrt(0.5)
    expected = Normal(mean, sigma).log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(GaussianLikelihood(sigma).log_prob(mean, x), expected)


def test_learned_sigma_is_a_parameter_that_gets_a_gradient():
    lik = make_likelihood("sigma")
    assert [n for n, _ in lik.named_parameters()] == ["log_sigma"]
    mean, x = torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28)
    lik.log_prob(mean, x).sum().backward()
    # log N(x; mean, s^2) summed over N pixels: d/d log s = -N + sum (x - mean)^2 / s^2, at s = 1
    expected = -mean.numel() + ((x - mean) ** 2).sum()
    torch.testing.assert_close(lik.log_sigma.grad, expected.reshape(lik.log_sigma.shape))
    assert list(GaussianLikelihood(0.5).parameters()) == []


def test_discretized_logistic_is_a_distribution_over_256_values():
    lik = DiscretizedLogistic()
    values = torch.arange(256).float().div(255).view(256, 1, 1, 1)  # every pixel value, one per "image"
    for mean_logit, log_scale in [(0.0, -2.0), (2.5, -4.0), (-3.0, 0.5), (0.3, -6.5)]:
        params = torch.tensor([mean_logit, log_scale]).view(1, 2, 1, 1).expand(256, 2, 1, 1)
        total = lik.log_prob(params, values).exp().sum()
        torch.testing.assert_close(total, torch.tensor(1.0), atol=2e-3, rtol=0)


def test_bits_per_dim_converts_nats():
    assert bits_per_dim(3072 * math.log(2), 3072) == pytest.approx(1.0)
    # a uniform distribution over 256 values costs exactly 8 bits per dimension
    assert bits_per_dim(3072 * math.log(256), 3072) == pytest.approx(8.0)


def test_unknown_likelihood_is_rejected():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        make_likelihood("poisson")
    with pytest.raises(ValueError, match="sigma must be positive"):
        GaussianLikelihood(0.0)


def test_elbo_parts_are_sums_per_image_and_beta_weighs_the_kl():
    torch.manual_seed(0)
    model, x, y = CVAE(), torch.rand(4, 1, 28, 28), torch.arange(4)
    torch.manual_seed(1)
    parts = elbo(model, x, y, beta=3.0)
    torch.manual_seed(1)
    out = model(x, y)
    recon = -Bernoulli(logits=out["params"], validate_args=False).log_prob(x).sum(dim=(1, 2, 3))
    q = out["groups"][0]
    kl = kl_divergence(Normal(q.mu, (0.5 * q.logvar).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(parts["recon"], recon.mean())
    torch.testing.assert_close(parts["kl"], kl.mean())
    torch.testing.assert_close(parts["loss"], (recon + 3.0 * kl).mean())
    torch.testing.assert_close(parts["nelbo"], (recon + kl).mean())
    torch.testing.assert_close(parts["kl_per_dim"].sum(), kl.mean())
    assert parts["recon"] > 784 * 0.3  # nats per image, not per pixel


def test_elbo_of_a_vae_ignores_labels():
    model, x = VAE(), torch.rand(2, 1, 28, 28)
    torch.manual_seed(0)
    with_labels = elbo(model, x, torch.tensor([3, 4]))
    torch.manual_seed(0)
    other_labels = elbo(model, x, torch.tensor([0, 9]))
    torch.manual_seed(0)
    no_labels = elbo(model, x, None)
    for key in ("loss", "recon", "kl"):  # the same draws give the same figures, whatever the labels
        assert torch.equal(with_labels[key], other_labels[key]) and torch.equal(with_labels[key], no_labels[key])


def test_latent_gaussian_log_prob_matches_torch_distributions():
    from cvaelib.losses import gaussian_log_prob

    z, mu, logvar = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    expected = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(z, mu, logvar), expected)


def test_log_weight_takes_log_q_from_the_noise_exact_at_any_variance():
    from cvaelib.losses import GroupStats, log_weight

    torch.manual_seed(0)
    mu, logvar, eps = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    z = mu + (0.5 * logvar).exp() * eps
    out = {"log_px": torch.zeros(4), "groups": [GroupStats(mu, logvar, None, None, eps)]}
    expected = Normal(0.0, 1.0).log_prob(z).sum(-1) - Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(log_weight(out), expected, rtol=1e-5, atol=1e-4)
    # an autoencoder's posterior (sigma ~ 1e-9, below float32's rounding of mu): the mean of log q
    # is still the negative entropy -0.5 * D * (log 2 pi + 1 + logvar), not a floored or garbled value
    mu, logvar = torch.zeros(20_000, 8), torch.full((20_000, 8), -40.0)
    group = GroupStats(mu, logvar, mu, torch.zeros_like(mu), torch.randn_like(mu))
    log_w = log_weight({"log_px": torch.zeros(20_000), "groups": [group]})
    log_p = 8 * -0.5 * math.log(2 * math.pi)  # z = mu = 0 to within 1e-9: log N(z; 0, 1) per dimension
    neg_entropy = -0.5 * 8 * (math.log(2 * math.pi) + 1 - 40.0)
    assert log_p - float(log_w.mean()) == pytest.approx(neg_entropy, abs=0.1)  # the mean of log q


# The mixture of discretized logistics (PixelCNN++'s output layer) of the hierarchical VAE.

LEVELS = torch.arange(256, dtype=torch.float32) / 255  # the 256 pixel values


def _mixture_params(num_mixtures=10, channels=3, seed=0):
    """Random raw parameters of one pixel, (1, P, 1, 1), with log-scales in [-5, -1]."""
    generator = torch.Generator().manual_seed(seed)
    lik = DiscretizedLogisticMixture(num_mixtures)
    params = torch.randn(1, lik.out_channels(channels), 1, 1, generator=generator) * 2
    K, C = num_mixtures, channels
    params[:, K + C * K : K + 2 * C * K] = torch.rand(1, C * K, 1, 1, generator=generator) * 4 - 5
    return lik, params


@pytest.mark.parametrize("seed", range(3))
def test_logistic_mixture_channels_are_distributions_over_256_values(seed):
    lik, params = _mixture_params(seed=seed)
    many = params.expand(256, -1, -1, -1)  # the same pixel 256 times, one per value
    # first channel: sum over its 256 values of sum_k pi_k P(x_0 | k) is 1, whatever x_1, x_2
    x = torch.rand(256, 3, 1, 1)
    x[:, 0, 0, 0] = LEVELS
    log_weights, log_p = lik.channel_log_probs(many, x)
    p_first = torch.logsumexp(log_weights + log_p[:, 0], dim=1).exp()  # (256,1,1)
    torch.testing.assert_close(p_first.sum(), torch.tensor(1.0), atol=1e-4, rtol=0)
    # second channel given a fixed first one: p(x_1 | x_0) = p(x_0, x_1) / p(x_0) sums to 1 over x_1
    x0 = LEVELS[[37 + 50 * seed]]
    x = torch.rand(256, 3, 1, 1)
    x[:, 0, 0, 0], x[:, 1, 0, 0] = x0, LEVELS
    log_weights, log_p = lik.channel_log_probs(many, x)
    log_joint = torch.logsumexp(log_weights + log_p[:, 0] + log_p[:, 1], dim=1)  # log p(x_0, x_1)
    log_first = torch.logsumexp(log_weights + log_p[:, 0], dim=1)  # log p(x_0), the same in every row
    torch.testing.assert_close((log_joint - log_first).exp().sum(), torch.tensor(1.0), atol=1e-4, rtol=0)
    # and the public log_prob: summed over all 65536 (x_1, x_2), p(x_0, x_1, x_2) gives back p(x_0)
    x1, x2 = torch.meshgrid(LEVELS, LEVELS, indexing="ij")
    x = torch.stack([x0.expand(65536), x1.flatten(), x2.flatten()], dim=1).view(65536, 3, 1, 1)
    log_p = lik.log_prob(params.expand(65536, -1, -1, -1), x)  # (65536,)
    torch.testing.assert_close((log_p - log_first[0, 0, 0]).exp().sum(), torch.tensor(1.0), atol=1e-4, rtol=0)


def test_grey_logistic_mixture_is_a_distribution_over_256_values():
    lik, params = _mixture_params(num_mixtures=4, channels=1)
    total = lik.log_prob(params.expand(256, -1, -1, -1), LEVELS.view(256, 1, 1, 1)).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0), atol=1e-4, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_one_component_mixture_without_channel_coefficients_is_the_discretized_logistic(channels):
    torch.manual_seed(0)
    mean_logit, log_scale = torch.randn(4, channels, 8, 8) * 2, torch.rand(4, channels, 8, 8) * 6 - 7
    pairs = channels * (channels - 1) // 2
    params = torch.cat([torch.randn(4, 1, 8, 8), mean_logit, log_scale, torch.zeros(4, pairs, 8, 8)], dim=1)
    x = torch.randint(0, 256, (4, channels, 8, 8)) / 255
    mixture, single = DiscretizedLogisticMixture(num_mixtures=1), DiscretizedLogistic()
    # float64: the per-image sums are ~1e4 nats, whose float32 rounding differs with the summation order
    expected = single.log_prob(torch.cat([mean_logit, log_scale], dim=1).double(), x.double())
    torch.testing.assert_close(mixture.log_prob(params.double(), x.double()), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(mixture.mean(params), single.mean(torch.cat([mean_logit, log_scale], dim=1)))


@pytest.mark.parametrize("channels,num_mixtures,out_channels", [(3, 10, 100), (1, 10, 30), (3, 5, 50), (1, 2, 6)])
def test_logistic_mixture_shapes_and_out_channels(channels, num_mixtures, out_channels):
    lik = make_likelihood("logistic_mixture", num_mixtures=num_mixtures)
    assert lik.discrete and lik.out_channels(channels) == out_channels
    params, x = torch.randn(2, out_channels, 5, 6), torch.rand(2, channels, 5, 6)
    assert lik.log_prob(params, x).shape == (2,)
    mean = lik.mean(params)
    assert mean.shape == (2, channels, 5, 6) and mean.min() >= 0 and mean.max() <= 1
    assert lik.sample(params).shape == (2, channels, 5, 6)
    with pytest.raises(ValueError, match="needs K\\(C\\+1\\)\\(C\\+2\\)/2 channels"):
        lik.mean(torch.randn(2, out_channels + 1, 5, 6))


def test_likelihood_out_channels_default_and_cvae_decoder():
    assert DiscretizedLogistic().out_channels(3) == 6 and make_likelihood("bernoulli").out_channels(1) == 1
    model = CVAE((3, 32, 32), 10, 8, "conv", "logistic_mixture")
    out = model(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
    assert out["params"].shape == (2, 100, 32, 32) and out["x_hat"].shape == (2, 3, 32, 32)
    assert torch.isfinite(elbo(model, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))["loss"])


@pytest.mark.parametrize("channels", [1, 3])
def test_logistic_mixture_samples_lie_on_the_256_levels(channels):
    lik = make_likelihood("logistic_mixture", num_mixtures=3)
    sample = lik.sample(torch.randn(4, lik.out_channels(channels), 8, 8) * 3)
    assert sample.min() >= 0 and sample.max() <= 1
    torch.testing.assert_close(sample * 255, (sample * 255).round(), atol=1e-4, rtol=0)


def test_logistic_mixture_samples_follow_its_probabilities():
    torch.manual_seed(0)
    lik, params = _mixture_params(num_mixtures=3, channels=1, seed=1)
    params[:, 3:6] = 0.0  # mean logits: all components centred on 0.5
    params[:, 6:9] = torch.tensor([-1.0, -2.0, -3.0]).view(1, 3, 1, 1)  # broad log-scales
    probs = lik.log_prob(params.expand(256, -1, -1, -1), LEVELS.view(256, 1, 1, 1)).exp()
    sample = lik.sample(params.expand(200_000, -1, -1, -1)).flatten()
    frequencies = torch.bincount((sample * 255).round().long(), minlength=256) / len(sample)
    assert 0.5 * (frequencies - probs).abs().sum() < 0.03  # total variation; sampling noise ~0.012


def test_gaussian_baseline_matches_the_closed_form_log_density():
    import numpy as np

    from cvaelib.baselines import dequantise, gaussian_bits_per_dim

    torch.manual_seed(0)
    base = torch.randint(60, 200, (500, 1, 1, 1))  # 3 correlated pixels: a shared brightness plus noise
    train = (base + torch.randint(-40, 40, (500, 1, 1, 3))).clamp(0, 255).to(torch.uint8)
    test = (base[:200] + torch.randint(-40, 40, (200, 1, 1, 3))).clamp(0, 255).to(torch.uint8)
    generator = torch.Generator().manual_seed(7)
    x, t = dequantise(train, generator).numpy(), dequantise(test, generator).numpy()  # the draws the function makes
    mean, cov = x.mean(0), np.cov(x.T, bias=True)
    d = t - mean
    # log N(t; mean, cov) = -(D log 2 pi + log det cov + d' cov^-1 d) / 2, written out
    log_density = -0.5 * (3 * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1] + (d @ np.linalg.inv(cov) * d).sum(1))
    expected = -log_density.mean() / (3 * math.log(2))
    assert gaussian_bits_per_dim(train, test, seed=7) == pytest.approx(expected, rel=1e-10)
    assert 4 < expected < 8  # pixels spread over about 100 of 256 levels, and correlated
    with pytest.raises(ValueError, match="uint8"):
        gaussian_bits_per_dim(train.float(), test)
    with pytest.raises(ValueError, match="differ in shape"):
        gaussian_bits_per_dim(train, test[..., :2])


def test_log_mean_exp_is_the_log_of_the_mean_and_does_not_overflow():
    from cvaelib.losses import log_mean_exp

    x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])  # (K=3, B=2)
    torch.testing.assert_close(log_mean_exp(x, 0), x.exp().mean(0).log())
    torch.testing.assert_close(log_mean_exp(x, 1), x.exp().mean(1).log())
    big = torch.tensor([1000.0, 1000.0 + math.log(3.0)])  # exp overflows float32; the mean of e^1000 (1, 3) is 2 e^1000
    assert log_mean_exp(big, 0).item() == pytest.approx(1000.0 + math.log(2.0))
