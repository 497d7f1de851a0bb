import pytest
import torch

from cvaelib import CVAE, VAE
from cvaelib.losses import elbo

CASES = [
    (shape, arch, conditioning, prior)
    for shape in [(1, 28, 28), (3, 32, 32)]
    for arch in ["mlp", "conv"]
    for conditioning in ["concat", "add"]
    for prior in ["standard", "learned"]
]


@pytest.mark.parametrize("shape,arch,conditioning,prior", CASES)
def test_shapes_for_every_architecture_and_conditioning(shape, arch, conditioning, prior):
    likelihood = "logistic" if shape[0] == 3 else "bernoulli"
    model = CVAE(shape, 10, 8, arch, likelihood, conditioning, prior)
    x, y = torch.rand(3, *shape), torch.tensor([0, 5, 9])
    mu, logvar = model.encode(x, y)
    assert mu.shape == logvar.shape == (3, 8)
    out = model(x, y)
    assert out["params"].shape == (3, shape[0] * model.likelihood.num_params, *shape[1:])
    assert out["x_hat"].shape == (3, *shape)
    assert model.sample(y).shape == (3, *shape)
    # at temperature 0 a sample is the decoded prior mean: z = 0 under N(0, I), mu_y under the learned prior
    prior_mu = model.prior(y)[0]
    z = torch.zeros(3, 8) if prior_mu is None else prior_mu
    torch.testing.assert_close(model.sample(y, temperature=0.0, mean=True), model.decode(z, y))
    assert torch.isfinite(elbo(model, x, y)["loss"])


@pytest.mark.parametrize("shape,arch", [((1, 28, 28), "mlp"), ((1, 28, 28), "conv"), ((3, 32, 32), "conv")])
def test_vae_is_a_cvae_without_labels(shape, arch):
    model = VAE(image_shape=shape, arch=arch, latent_dim=2)
    assert model.num_classes == 0
    assert model(torch.rand(2, *shape))["x_hat"].shape == (2, *shape)
    assert model.sample(num_samples=4).shape == (4, *shape)


def test_decoder_uses_the_label():
    model = CVAE(conditioning="add")
    z = torch.randn(1, 16).repeat(2, 1)
    a, b = model.decode(z, torch.tensor([1, 7]))
    assert not torch.equal(a, b)


def test_learned_prior_starts_at_standard_normal_and_depends_on_label():
    model = CVAE(prior="learned")
    mu, logvar = model.prior(torch.tensor([0, 1]))
    assert mu.abs().max() == 0 and logvar.abs().max() == 0
    assert model.prior(torch.tensor([0]))[0].shape == (1, 16)
    assert CVAE().prior(torch.tensor([0])) == (None, None)


def test_labels_out_of_range_are_rejected():
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\), got values from 0 to 10"):
        CVAE().encode(torch.rand(2, 1, 28, 28), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        CVAE().sample(torch.tensor([-1]))


def test_labels_must_be_integers():
    with pytest.raises(TypeError, match="labels must be integers"):
        CVAE().encode(torch.rand(2, 1, 28, 28), torch.tensor([0.0, 1.0]))


def test_wrong_image_shape_dtype_and_range_are_rejected():
    model = CVAE()
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"images must have shape \(B, 1, 28, 28\), got \(2, 3, 32, 32\)"):
        model.encode(torch.rand(2, 3, 32, 32), y)
    with pytest.raises(TypeError, match="images must be float in \\[0, 1\\], got torch.uint8"):
        model.encode(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), y)
    with pytest.raises(ValueError, match="image values must be in \\[0, 1\\]"):
        model.encode(torch.rand(2, 1, 28, 28) * 255, y)


def test_labels_required_exactly_when_conditional():
    with pytest.raises(ValueError, match="this model needs labels"):
        CVAE().encode(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="unconditional model"):
        VAE().encode(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="pass labels"):
        CVAE().sample()
    with pytest.raises(ValueError, match="pass num_samples"):
        VAE().sample()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(image_shape=(1, 32, 32)), "image_shape must be"),
        (dict(arch="resnet"), "unknown arch 'resnet'"),
        (dict(conditioning="film"), "unknown conditioning 'film'"),
        (dict(prior="vamp"), "unknown prior 'vamp'"),
        (dict(num_classes=0, prior="learned"), "prior 'learned' is p\\(z\\|y\\): it needs labels"),
        (dict(latent_dim=0), "latent_dim must be a positive integer, got 0"),
        (dict(sigma=0.5), "sigma is a Gaussian likelihood.s"),
        (dict(likelihood="gaussian", sigma=-1.0), "sigma must be positive"),
        (dict(likelihood="mixture"), "unknown likelihood"),
    ],
)
def test_bad_model_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CVAE(**kwargs)


def test_sample_refuses_labels_out_of_range_before_the_embedding():
    model = CVAE(latent_dim=2, prior="learned")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\), got values from 0 to 12"):
        model.sample(torch.tensor([0, 12]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\), got values from -1"):
        model.sample(torch.tensor([-1]))
    with pytest.raises(TypeError, match="labels must be a 1-d tensor of ints"):
        model.sample(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        CVAE(num_classes=0, latent_dim=2).sample(num_samples=-1)


def test_forward_keeps_float64_and_lifts_bfloat16_to_float32():
    """The likelihood and the KL are computed in at least float32: a float64 model stays float64 (it is not
    cut to float32), and under bfloat16 autocast the outputs are float32 (``interface.at_least_float32``)."""
    torch.manual_seed(0)
    model = CVAE(arch="conv", image_shape=(1, 28, 28))
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    out = model.double()(x.double(), y)
    assert out["log_px"].dtype == out["groups"][0].mu.dtype == out["params"].dtype == torch.float64
    model.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, y)
    assert out["log_px"].dtype == out["groups"][0].mu.dtype == out["params"].dtype == torch.float32


def test_build_model_rebuilds_every_kind_from_its_config_or_the_dict_a_checkpoint_stores():
    from dataclasses import asdict

    from cvaelib.hierarchical import HierarchicalConfig, HierarchicalCVAE
    from cvaelib.models import ModelConfig, build_model

    for config, kind in [
        (ModelConfig(latent_dim=3), CVAE),
        (ModelConfig(arch="conv", latent_dim=3), CVAE),
        (HierarchicalConfig.from_size(size="tiny"), HierarchicalCVAE),
    ]:
        for given in (config, asdict(config)):
            model = build_model(given)
            assert type(model) is kind and model.config == config
    with pytest.raises(ValueError, match="unknown arch 'resnet'"):
        build_model({**asdict(ModelConfig()), "arch": "resnet"})
