from dataclasses import asdict

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from cvaelib.hierarchical import HierarchicalCVAE
from cvaelib.losses import elbo_terms, gaussian_kl


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and lose much when another job shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**kwargs):
    """A tiny model whose zero-initialised last layers are perturbed: priors that depend on z_<g and y."""
    torch.manual_seed(0)
    model = HierarchicalCVAE(size="tiny", **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def batch(n=3, shape=(3, 32, 32)):
    torch.manual_seed(1)
    return torch.randint(0, 256, (n, *shape)) / 255, torch.arange(n) % 10


def test_output_shapes():
    model = tiny()
    x, y = batch()
    out = model(x, y)
    assert set(out) == {"params", "x_hat", "log_px", "groups"}
    assert out["params"].shape == (3, model.likelihood.out_channels(3), 32, 32) == (3, 100, 32, 32)
    assert out["x_hat"].shape == (3, 3, 32, 32) and 0 <= out["x_hat"].min() and out["x_hat"].max() <= 1
    assert out["log_px"].shape == (3,)
    assert [g[0].shape for g in out["groups"]] == [(3, c * h * w) for c, h, w in model.group_shapes]
    assert all(t.shape == group[0].shape for group in out["groups"] for t in group)
    assert model.latent_dim == sum(group[0].shape[1] for group in out["groups"])


def test_groups_sit_at_three_or_more_resolutions_top_down():
    model = HierarchicalCVAE(size="tiny", widths=(8, 8, 8, 8, 8), groups_per_resolution=(1, 2, 2, 1))
    assert model.resolutions == (2, 4, 8, 16)
    assert [r for _, r, _ in model.group_shapes] == [2, 4, 4, 8, 8, 16]
    out = model(*batch(2))
    assert len(out["groups"]) == 6
    small = HierarchicalCVAE(size="small")
    assert small.resolutions == (4, 8, 16) and len(small.group_shapes) == sum(small.config.groups_per_resolution)


def test_kl_of_each_group_matches_torch_distributions():
    for mu, logvar, prior_mu, prior_logvar, _ in tiny()(*batch())["groups"]:
        q, p = Normal(mu, (0.5 * logvar).exp()), Normal(prior_mu, (0.5 * prior_logvar).exp())
        torch.testing.assert_close(gaussian_kl(mu, logvar, prior_mu, prior_logvar), kl_divergence(q, p))
        assert (prior_logvar.abs() < 5).all() and (logvar.abs() < 10).all()  # soft-clamped


def test_priors_start_at_standard_normal_and_posteriors_near_them():
    model = HierarchicalCVAE(size="tiny")
    for mu, logvar, prior_mu, prior_logvar, _ in model(*batch())["groups"]:
        assert prior_mu.abs().max() == 0 and prior_logvar.abs().max() == 0  # the prior head starts at zero
        assert 0 < gaussian_kl(mu, logvar, prior_mu, prior_logvar).mean() < 1  # nats per dimension


def test_log_px_is_the_likelihood_of_the_params():
    model = tiny()
    x, y = batch()
    out = model(x, y)
    torch.testing.assert_close(out["log_px"], model.likelihood.log_prob(out["params"], x))
    torch.testing.assert_close(out["x_hat"], model.likelihood.mean(out["params"]))


def test_resample_draws_one_group_from_its_prior_and_keeps_the_others():
    model = tiny()
    x, y = batch()
    torch.manual_seed(2)
    posterior = model(x, y)
    torch.manual_seed(2)
    again = model(x, y)
    torch.manual_seed(2)
    resampled = model.resample(x, y, groups=[1])
    torch.testing.assert_close(again["params"], posterior["params"])  # the same noise gives the same output
    assert not torch.allclose(resampled["params"], posterior["params"])
    # groups 0 and 1 see the same z_0: their posteriors and priors are unchanged; group 2 sees another z_1
    for g in (0, 1):
        for a, b in zip(resampled["groups"][g], posterior["groups"][g], strict=True):
            torch.testing.assert_close(a, b)
    assert not torch.allclose(resampled["groups"][2][0], posterior["groups"][2][0])
    with pytest.raises(ValueError, match=r"groups must be group indices in \[0, 3\)"):
        model.resample(x, y, groups=[3])


def test_temperature_zero_and_labels():
    model = tiny()
    labels = torch.tensor([4, 4, 7])
    a = model.sample(labels, temperature=0.0, mean=True)
    b = model.sample(labels, temperature=0.0, mean=True)
    assert a.shape == (3, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a, b)  # temperature 0 and the mean image: deterministic
    torch.testing.assert_close(a[0], a[1])  # the same label, the same image
    assert not torch.allclose(a[0], a[2])  # another label, another image
    assert not torch.allclose(model.sample(labels, mean=True), a)  # temperature 1: other latents
    # by default the pixels are a sample of the mixture: noisy even at temperature 0, on the 256 levels
    c, d = model.sample(labels, temperature=0.0), model.sample(labels, temperature=0.0)
    assert not torch.equal(c, d)
    torch.testing.assert_close(c * 255, (c * 255).round(), atol=1e-4, rtol=0)


def test_rebuild_from_config_gives_identical_outputs():
    model = tiny()
    rebuilt = HierarchicalCVAE(**asdict(model.config))
    rebuilt.load_state_dict(model.state_dict())
    x, y = batch()
    torch.manual_seed(3)
    expected = model(x, y)
    torch.manual_seed(3)
    out = rebuilt(x, y)
    torch.testing.assert_close(out["params"], expected["params"])
    torch.testing.assert_close(out["log_px"], expected["log_px"])
    assert rebuilt.config == model.config and model.config.widths == (16, 16, 16, 16)


def test_bad_labels_and_inputs_are_rejected():
    model = tiny()
    x, _ = batch(2)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\), got values from 0 to 10"):
        model.sample(torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        model.sample(torch.tensor([-1]))
    with pytest.raises(TypeError, match=r"labels must be a 1-d tensor of ints in \[0, 10\)"):
        model.sample(torch.tensor([0.5]))
    with pytest.raises(TypeError, match=r"labels must be integers in \[0, 10\)"):
        model(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        model(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="needs labels"):
        model(x)
    with pytest.raises(TypeError, match="images must be float"):
        model((x * 255).byte(), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, 32, 32\)"):
        model(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        HierarchicalCVAE(size="huge")
    with pytest.raises(ValueError, match="widths needs one entry per latent resolution"):
        HierarchicalCVAE(size="tiny", widths=(8, 8, 8))


def test_unconditional_grey_model():
    model = HierarchicalCVAE(image_shape=(1, 28, 28), num_classes=0, size="tiny", likelihood="bernoulli")
    x = torch.rand(2, 1, 28, 28)
    out = model(x)
    assert out["params"].shape == (2, 1, 28, 28) and out["log_px"].shape == (2,)
    assert model.sample(num_samples=3).shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="unconditional"):
        model(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_samples"):
        model.sample()


def test_float64_model_keeps_its_dtype():
    model = tiny().double()
    x, y = batch(2)
    out = model(x.double(), y)
    assert out["params"].dtype == out["log_px"].dtype == out["groups"][0][0].dtype == torch.float64
    assert model.sample(y, mean=True).dtype == torch.float64


def test_small_preset_has_one_to_five_million_parameters():
    count = sum(p.numel() for p in HierarchicalCVAE(size="small").parameters())
    assert 1e6 <= count <= 5e6
    assert sum(p.numel() for p in HierarchicalCVAE(size="full").parameters()) > 2 * count


def test_one_adam_step_keeps_everything_finite():
    model = tiny()
    x, y = batch(4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        torch.manual_seed(4)  # the same noise in both steps: only the step changes the loss
        out = model(x, y)
        kl = sum(gaussian_kl(*group[:4]).sum(1) for group in out["groups"])  # (B,)
        loss = (kl - out["log_px"]).mean()
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[1] < losses[0]  # nats per image; the same batch, so one step helps


def test_log_weight_is_log_p_x_z_minus_log_q_by_torch_distributions():
    from torch.distributions import Normal

    from cvaelib.losses import log_weight

    model = tiny()
    x, y = batch()
    out = model(x, y)
    expected = out["log_px"].clone()
    for g in out["groups"]:
        z = g.mu + (0.5 * g.logvar).exp() * g.eps
        expected += Normal(g.prior_mu, (0.5 * g.prior_logvar).exp()).log_prob(z).sum(1)
        expected -= Normal(g.mu, (0.5 * g.logvar).exp()).log_prob(z).sum(1)
    torch.testing.assert_close(log_weight(out), expected, rtol=1e-5, atol=1e-3)


def test_elbo_remedies_and_report_agree_on_the_kl_of_each_group():
    from cvaelib.evaluate import report
    from cvaelib.losses import elbo
    from cvaelib.remedies import RemedyLoss, group_kls

    model = tiny().eval()
    x, y = batch(4)
    torch.manual_seed(5)
    parts = elbo(model, x, y)
    torch.manual_seed(5)
    remedy = RemedyLoss()(model, x, y)
    assert parts["kl_groups"].shape == (3,)
    torch.testing.assert_close(torch.stack(group_kls(remedy)), parts["kl_groups"])
    history_entry = {f"test_{k}": v for k, v in remedy.items()}  # as fit records the parts
    assert group_kls(history_entry, prefix="test_") == group_kls(remedy) and group_kls({"kl": 1.0}) == []
    torch.testing.assert_close(parts["kl_groups"].sum(), parts["kl"])
    torch.manual_seed(5)
    figures = report(model, [(x, y)], k=3, progress=False)
    assert [f["dims"] for f in figures["groups"]] == [c * h * w for c, h, w in model.group_shapes]
    torch.testing.assert_close(torch.tensor([f["kl_nats"] for f in figures["groups"]]), parts["kl_groups"])
    assert figures["iwae_nats"] < figures["negative_elbo_nats"] + 1.0 and figures["bits_per_dim"] > 0


@pytest.mark.parametrize("alpha, trained, untouched", [(0.0, "posterior", "prior"), (1.0, "prior", "posterior")])
def test_kl_balancing_trains_only_the_posterior_at_alpha_0_and_only_the_prior_at_alpha_1(alpha, trained, untouched):
    from cvaelib.remedies import RemedyConfig, RemedyLoss, balanced_kl

    def kl_gradients(residual):
        """The KL penalty's gradient norms on the heads of the last group top-down (no later group reads its z)."""
        model = tiny()
        if residual:  # through the loss the command line trains with
            parts = RemedyLoss(RemedyConfig(kl_balance=alpha))(model, *batch())
            (parts["loss"] - parts["recon"]).backward()  # weight 1 x the balanced KL
        else:  # the residual posterior taken as a posterior of its own: what DreamerV2's formula does unchanged
            balanced_kl(*model(*batch())["groups"][-1][:4], alpha).sum().backward()
        last = model.decoder.groups[-1][-1]
        return {
            head: sum(float(p.grad.abs().sum()) for p in getattr(last, head).parameters() if p.grad is not None)
            for head in ("prior", "posterior")
        }

    grads = kl_gradients(residual=True)
    assert grads[untouched] == 0 and grads[trained] > 0
    if alpha == 0:  # without the residual form, the posterior's path would pull the prior through q's mean
        assert kl_gradients(residual=False)["prior"] > 0


def test_free_bits_and_group_balance_act_on_the_hierarchy_s_groups():
    from cvaelib.remedies import RemedyConfig, RemedyLoss

    model = tiny()
    x, y = batch(4)
    torch.manual_seed(6)
    plain = RemedyLoss()(model, x, y)
    kl_groups = torch.stack([plain[f"kl_g{g}"] for g in range(3)])
    torch.manual_seed(6)
    floored = RemedyLoss(RemedyConfig(free_bits=1e4))(model, x, y)  # every group below the threshold
    torch.testing.assert_close(floored["loss"], plain["recon"] + 3 * 1e4)
    torch.manual_seed(6)
    balanced = RemedyLoss(RemedyConfig(group_balance=True, schedule="linear", warmup=1.0), steps_per_epoch=10)
    parts = balanced(model, x, y)  # beta = 0 at the first step: only the reconstruction counts
    torch.testing.assert_close(parts["loss"], plain["recon"])
    assert kl_groups.shape == (3,)


def test_diagnose_reports_every_group_and_which_are_switched_off():
    from cvaelib.diagnostics import diagnose

    model = tiny().eval()
    x, y = batch(40)
    d = diagnose(model, [(x[:20], y[:20]), (x[20:], y[20:])])
    assert len(d["groups"]) == 3 and 0 <= d["active_groups"] <= 3
    assert d["active_units"] == sum(g["active_units"] for g in d["groups"])
    assert abs(d["total_kl"] - sum(g["kl_nats"] for g in d["groups"])) < 1e-3
    # no total I(x; z | y) from conditionals side by side: each group's estimate is named for what it is
    assert d["mutual_information"] is None and any("I(z_g; x, z_<g | y) per group" in e for e in d["evidence"])
    off = HierarchicalCVAE(size="tiny").eval()  # untrained: every posterior equals its prior (no offset learned)
    with torch.no_grad():
        for level in off.decoder.groups:
            for group in level:
                torch.nn.init.zeros_(group.posterior.net[-1].weight)
                torch.nn.init.zeros_(group.posterior.net[-1].bias)
    d = diagnose(off, [(x, y)])
    assert d["active_groups"] == 0 and d["total_kl"] < 1e-6 and d["collapsed"]
    assert all(abs(g["mutual_information_nats"]) < 1e-6 for g in d["groups"])


def test_a_non_finite_gradient_is_skipped_and_counted_and_training_goes_on():
    from cvaelib.losses import elbo
    from cvaelib.train import TrainConfig, fit

    model = tiny()
    x, y = batch(8)
    calls = []

    def poisoned(model, x, y):  # a finite loss whose gradient is NaN at the second step
        parts = elbo(model, x, y)
        calls.append(1)
        if len(calls) == 2:
            w = next(model.parameters())
            parts["loss"] = parts["loss"] + (w.sum() - w.sum().detach()).abs().sqrt()
        return parts

    batches = [(x[:4], y[:4]), (x[4:], y[4:])] * 2
    history = fit(model, poisoned, batches, 1, device="cpu", progress=False, config=TrainConfig(skip_grad_norm=1e9))
    assert history[0]["skipped_updates"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_command_line_trains_resumes_samples_at_a_temperature_and_evaluates_per_group(data_root, tmp_path, capsys):
    import json

    import numpy as np

    from cvaelib import load_checkpoint
    from cvaelib.cli import main

    ckpt = tmp_path / "h.pt"
    args = [
        "train",
        "--dataset",
        "cifar10",
        "--arch",
        "hierarchical",
        "--size",
        "tiny",
        "--subset",
        "2",
        "--batch-size",
        "4",
        "--out",
        str(ckpt),
        "--device",
        "cpu",
        "--no-progress",
        "--data-root",
        data_root,
    ]
    main(args + ["--epochs", "1"])
    first = load_checkpoint(ckpt)
    assert isinstance(first, HierarchicalCVAE) and first.meta["epoch"] == 1
    assert first.meta["remedies"]["schedule"] == "linear" and first.meta["train"]["skip_grad_norm"] == 2e6
    main(args + ["--epochs", "2"])  # resumes from epoch 1
    figures = json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1])
    history = load_checkpoint(ckpt).meta["history"]
    assert figures["epochs"] == 2 and len(figures["test_kl_groups_nats"]) == 3
    assert figures["skipped_updates"] == sum(h["skipped_updates"] for h in history)  # both epochs, resumed or not
    assert history[0] == first.meta["history"][0]
    for temperature in ("0", "0.7"):
        main(
            [
                "sample",
                "--checkpoint",
                str(ckpt),
                "--n-per-class",
                "2",
                "--temperature",
                temperature,
                "--out",
                str(tmp_path / f"s{temperature}.npz"),
            ]
        )
        images = np.load(tmp_path / f"s{temperature}.npz")["images"]
        assert images.shape == (20, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    means = []
    for seed in ("0", "1"):  # --mean at temperature 0: the decoder's means, a function of the label alone
        out = tmp_path / f"mean{seed}.npz"
        main(
            ["sample", "--checkpoint", str(ckpt), "--n-per-class", "2", "--temperature", "0", "--mean"]
            + ["--seed", seed, "--out", str(out)]
        )
        means.append(np.load(out)["images"])
    drawn = np.load(tmp_path / "s0.npz")["images"]  # pixels drawn from the mixture: on its 256 levels
    assert np.array_equal(means[0], means[1]) and not np.allclose(means[0], drawn)
    assert np.allclose(drawn * 255, np.round(drawn * 255), atol=1e-3) and not np.allclose(
        means[0] * 255, np.round(means[0] * 255), atol=1e-3
    )
    main(["evaluate", "--checkpoint", str(ckpt), "--k", "2", "--n", "20", "--data-root", data_root])
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert len(report["groups"]) == 3  # the KL of the whole model is the sum of its groups' KLs
    assert sum(g["kl_nats"] for g in report["groups"]) == pytest.approx(report["kl_nats"], rel=1e-5)
    assert report["bits_per_dim"] > 0 and report["iwae_k"] == 2


def test_command_line_refuses_options_of_the_other_architectures(data_root, tmp_path, capsys):
    from cvaelib.cli import main

    base = ["train", "--dataset", "cifar10", "--out", str(tmp_path / "x.pt"), "--data-root", data_root]
    for extra, message in [
        (["--arch", "hierarchical", "--latent-dim", "8"], "--latent-dim: is not an option of --arch hierarchical"),
        (["--arch", "hierarchical", "--group-sizes", "4", "4"], "--group-sizes: is not an option"),
        (["--size", "tiny"], "--size: is not an option of --arch conv; it is one of --arch hierarchical"),
        (["--arch", "hierarchical", "--num-mixtures", "3", "--likelihood", "logistic"], "--num-mixtures: is the"),
        (["--group-balance"], "--group-balance: needs group_sizes"),
    ]:
        with pytest.raises(SystemExit):
            main(base + extra)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", "x.pt", "--out", "s.npz", "--temperature", "-1"])
    assert "--temperature: must be a non-negative number" in capsys.readouterr().err


def test_under_bf16_autocast_the_likelihood_and_the_kl_stay_in_float32():
    model = tiny().eval()
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    torch.manual_seed(1)
    fp32 = elbo_terms(model(x, y))["nelbo_per_image"]
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, y)
    assert out["params"].dtype == out["log_px"].dtype == torch.float32  # what the likelihood reads
    assert all(t.dtype == torch.float32 for g in out["groups"] for t in g)
    torch.testing.assert_close(elbo_terms(out)["nelbo_per_image"], fp32, rtol=0.01, atol=0)
