"""The KL split (ELBO surgery) against closed forms, and the prior fitted after training: its density against scipy,
its moments against draws from the aggregate posterior, its storage without pickle, and the command line's use of it."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from cvaelib import data, fitted_prior, load_checkpoint
from cvaelib.checkpoint import read_checkpoint
from cvaelib.cli import main
from cvaelib.evaluate import kl_split
from cvaelib.fitted_prior import FittedPrior, fit_prior, sample_with, top_group_codes
from cvaelib.hierarchical import HierarchicalConfig
from cvaelib.losses import GroupStats
from cvaelib.models import ModelConfig, build_model


def _group(mu, logvar, prior_mu=None, prior_logvar=None):
    return GroupStats(mu, logvar, prior_mu, prior_logvar, torch.zeros_like(mu))


def test_kl_split_matches_the_closed_form_of_gaussian_codes():
    # Codes q(z|x_n) = N(m_n, v I) with m_n ~ N(0, a I): as N grows the aggregate posterior is N(0, (a + v) I), so
    # I(x; z) = D/2 log((a + v) / v) and KL(q(z) || N(p, s I)) = D/2 (log(s / (a + v)) + (a + v + p^2) / s - 1).
    torch.manual_seed(0)
    n, d, a, v, p, s = 5_000, 2, 1.5, 0.3, 0.5, 0.8
    mu = torch.randn(n, d) * math.sqrt(a)
    group = _group(mu, torch.full((n, d), math.log(v)), torch.full((n, d), p), torch.full((n, d), math.log(s)))
    (split,) = kl_split(group)
    mi = d / 2 * math.log((a + v) / v)
    marginal = d / 2 * (math.log(s / (a + v)) + (a + v + p**2) / s - 1)
    # within 4 standard errors, plus the 1 % that the finite sample of m_n moves the aggregate's variance
    assert split["mutual_information_nats"] == pytest.approx(mi, abs=4 * split["mutual_information_se"] + 0.02)
    assert split["marginal_kl_nats"] == pytest.approx(marginal, abs=4 * split["marginal_kl_se"] + 0.02)
    assert split["kl_nats"] == pytest.approx(split["mutual_information_nats"] + split["marginal_kl_nats"])
    assert split["cap_nats"] == pytest.approx(math.log(n)) and not split["at_cap"]


def test_kl_split_of_identical_and_of_separated_codes():
    n, d = 300, 3
    labels = torch.arange(3).repeat_interleave(n // 3)
    # every image the same posterior: the code says nothing, I = 0, and the whole KL is the aggregate's (closed form)
    same = _group(torch.full((n, d), 0.7), torch.full((n, d), math.log(0.5)))
    for entry in kl_split(same, labels):
        assert entry["mutual_information_nats"] == pytest.approx(0.0, abs=1e-9)
        assert entry["marginal_kl_nats"] == pytest.approx(d / 2 * (0.5 + 0.49 - 1 - math.log(0.5)))
        assert entry["images"] == n // 3
    # posteriors far apart and narrow: each code names its image, so I sits at its cap, log N_y
    far = _group(torch.arange(n, dtype=torch.float64)[:, None].repeat(1, d) * 10, torch.full((n, d), -10.0))
    for entry in kl_split(far, labels):
        assert entry["mutual_information_nats"] == pytest.approx(math.log(n // 3), abs=1e-6)
        assert entry["at_cap"] and entry["class"] in (0, 1, 2)


def test_fitted_prior_log_density_matches_scipy():
    torch.manual_seed(1)
    c, k, d = 2, 3, 4
    weights = torch.softmax(torch.randn(c, k).double(), 1)
    means = torch.randn(c, k, d).double()
    a = torch.randn(c, k, d, d).double()
    trils = torch.linalg.cholesky(a @ a.transpose(-1, -2) + torch.eye(d, dtype=torch.float64))
    prior = FittedPrior(weights, means, trils)
    z, y = torch.randn(6, d).double(), torch.tensor([0, 1, 1, 0, 1, 0])
    ours = prior.log_prob(z, y)
    for i in range(len(z)):
        c_i = int(y[i])
        parts = [
            math.log(weights[c_i, j])
            + stats.multivariate_normal(means[c_i, j], trils[c_i, j] @ trils[c_i, j].T).logpdf(z[i])
            for j in range(k)
        ]
        assert float(ours[i]) == pytest.approx(logsumexp(parts), abs=1e-9)


def test_fitted_prior_refuses_bad_shapes_and_labels():
    with pytest.raises(ValueError, match="means must be"):
        FittedPrior(torch.ones(2, 1), torch.zeros(2, 2, 3), torch.eye(3).expand(2, 1, 3, 3))
    prior = FittedPrior(torch.ones(2, 1), torch.zeros(2, 1, 3), torch.eye(3).expand(2, 1, 3, 3).clone())
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        prior.sample(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="lacks"):
        FittedPrior.from_state({"weights": prior.weights})


@pytest.fixture
def tiny_cvae_and_batches(data_root):
    torch.manual_seed(0)
    images, labels = data.stratified_subset(*data.load("mnist", "train", data_root), 40)
    model = build_model(ModelConfig(latent_dim=3, prior="learned")).eval()
    return model, data.Batches(images, labels, 100, shuffle=False)


def test_one_gaussian_has_the_moments_of_draws_from_the_aggregate_posterior(tiny_cvae_and_batches):
    model, batches = tiny_cvae_and_batches
    prior = fit_prior(model, batches)
    mu, logvar, y = top_group_codes(model, batches)
    torch.manual_seed(0)
    for c in (0, 7):
        # 2,000 draws from each of the class's posteriors: a sample of its aggregate posterior
        m, std = mu[y == c], (logvar[y == c] / 2).exp()
        draws = (m + std * torch.randn(2000, *m.shape)).flatten(0, 1).double()
        cov = prior.scale_tril[c, 0].double() @ prior.scale_tril[c, 0].double().T
        assert torch.allclose(prior.means[c, 0].double(), draws.mean(0), atol=0.02)
        assert torch.allclose(cov, torch.cov(draws.T), atol=0.03)


def test_a_mixture_finds_two_clusters_of_codes(monkeypatch):
    class TwoClusters(torch.nn.Module):  # one class whose codes sit around -3 or +3 in every dimension
        num_classes = 1

        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

    torch.manual_seed(0)
    codes = torch.cat([torch.full((150, 2), -3.0), torch.full((150, 2), 3.0)]) + 0.1 * torch.randn(300, 2)
    posterior = (codes, torch.full_like(codes, -6.0), torch.zeros(300, dtype=torch.long))
    monkeypatch.setattr(fitted_prior, "top_group_codes", lambda model, batches: posterior)
    prior = fit_prior(TwoClusters(), None, components=2)
    order = prior.means[0, :, 0].argsort()
    assert torch.allclose(prior.weights[0], torch.tensor([0.5, 0.5]), atol=0.01)
    assert torch.allclose(prior.means[0, order], torch.tensor([[-3.0, -3.0], [3.0, 3.0]]), atol=0.05)


def test_samples_decode_the_given_top_codes(tiny_cvae_and_batches):
    model, batches = tiny_cvae_and_batches
    prior = fit_prior(model, batches)
    labels = torch.arange(10)
    torch.manual_seed(3)
    images = sample_with(model, prior, labels, temperature=0.0, mean=True)
    # temperature 0: each class's fitted mean, decoded
    assert torch.allclose(images, model.decode(prior.means[:, 0], labels), atol=1e-6)
    with pytest.raises(ValueError, match=r"top must hold one code per sample, \(10, 3\)"):
        model.sample(labels, top=torch.zeros(10, 4))

    hierarchy = build_model(HierarchicalConfig.from_size(size="tiny", image_shape=(1, 28, 28))).eval()
    top_prior = fit_prior(hierarchy, batches)
    assert top_prior.latent_dim == math.prod(hierarchy.group_shapes[0])
    torch.manual_seed(0)
    a = sample_with(hierarchy, top_prior, labels, temperature=0.0, mean=True)
    b = hierarchy.sample(labels, temperature=0.0, mean=True, top=top_prior.means[:, 0])
    assert torch.allclose(a, b)
    c = hierarchy.sample(labels, temperature=0.0, mean=True, top=top_prior.means[:, 0] + 5)
    assert not torch.allclose(a, c)  # the top codes are what the decoder used


def _train(ckpt, data_root, *extra):
    main(
        ["train", "--dataset", "mnist", "--epochs", "1", "--subset", "20", "--latent-dim", "3", "--out", str(ckpt)]
        + ["--device", "cpu", "--no-progress", "--data-root", data_root, *extra]
    )


def test_train_stores_a_fitted_prior_that_sample_draws_from(data_root, tmp_path, capsys):
    ckpt = tmp_path / "cvae.pt"
    _train(ckpt, data_root)
    stored = torch.load(ckpt, weights_only=True)["fitted_prior"]  # tensors only: no pickle needed to read it
    assert set(stored) == {"weights", "means", "scale_tril"} and stored["means"].shape == (10, 1, 3)
    model = load_checkpoint(ckpt)
    assert model.meta["fitted_prior"] is not None
    out = tmp_path / "s.npz"
    for prior, phrase in (([], "fitted after training"), (["--prior", "learned"], "the model's own prior")):
        capsys.readouterr()
        main(["sample", "--checkpoint", str(ckpt), "--n-per-class", "2", "--out", str(out), "--seed", "1", *prior])
        assert phrase in capsys.readouterr().out
        with np.load(out) as f:
            assert f["images"].shape == (20, 1, 28, 28)
    # sample draws z from the stored prior, so it decodes what FittedPrior.sample draws with the same seed
    torch.manual_seed(1)
    labels = torch.arange(10).repeat_interleave(2)
    expected = model.sample(labels, top=FittedPrior.from_state(stored).sample(labels))
    main(["sample", "--checkpoint", str(ckpt), "--n-per-class", "2", "--out", str(out), "--seed", "1"])
    with np.load(out) as f:
        assert np.allclose(f["images"], expected.numpy(), atol=1e-6)

    main(["fit-prior", "--checkpoint", str(ckpt), "--components", "2", "--data-root", data_root])
    assert read_checkpoint(ckpt)["fitted_prior"]["weights"].shape == (10, 2)


def test_sample_refuses_a_fitted_prior_the_checkpoint_lacks(data_root, tmp_path):
    ckpt = tmp_path / "vae.pt"
    _train(ckpt, data_root, "--model", "vae")
    assert "fitted_prior" not in read_checkpoint(ckpt)  # a VAE has no classes to fit a prior per
    with pytest.raises(SystemExit, match=f"{ckpt} holds no fitted prior"):
        main(["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "s.npz"), "--prior", "fitted"])
    assert not (tmp_path / "s.npz").exists()
