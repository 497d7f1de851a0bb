import math
import warnings
from functools import partial

import pytest
import torch

from cvaelib import CVAE, data, load_checkpoint
from cvaelib.losses import elbo
from cvaelib.stopping import TrainingInterrupted
from cvaelib.train import COMPILE_PAYS_FROM_STEPS, SpeedConfig, TrainConfig, ema_of, fit, lr_factor

META = {"dataset": "mnist", "model": dict(image_shape=(1, 28, 28), num_classes=10, latent_dim=4)}


def _batches(x, y, batch_size=50):
    return data.Batches(x, y, batch_size, seed=1)


def test_loss_falls_on_real_data(mnist_subset):
    x, y, xt, yt = mnist_subset
    torch.manual_seed(0)  # the initial weights: the ratio below depends on them
    model = CVAE(latent_dim=4)
    history = fit(
        model,
        elbo,
        _batches(x, y),
        5,
        test_batches=data.Batches(xt, yt, 250, shuffle=False),
        device="cpu",
        progress=False,
    )
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"], [h["train_loss"] for h in history]
    assert history[-1]["test_nelbo"] < history[0]["test_nelbo"]
    assert {"train_recon", "train_kl", "test_recon", "test_kl"} <= set(history[0])


def test_checkpoint_round_trip_reproduces_samples(mnist_subset, tmp_path):
    x, y, _, _ = mnist_subset
    model = CVAE(**META["model"])
    fit(model, elbo, _batches(x, y), 1, device="cpu", checkpoint=tmp_path / "m.pt", meta=META, progress=False)
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.meta["dataset"] == "mnist" and loaded.meta["epoch"] == 1
    model.eval()
    torch.manual_seed(7)
    expected = model.sample(torch.arange(10))
    torch.manual_seed(7)
    torch.testing.assert_close(loaded.sample(torch.arange(10)), expected, rtol=0, atol=0)


class Interrupt(Exception):
    pass


def _interrupting(loss_fn, at_call):
    calls = {"n": 0}

    def wrapped(model, x, y):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise Interrupt  # like Ctrl-C in the middle of an epoch
        return loss_fn(model, x, y)

    return wrapped


def test_interrupted_run_resumes_exactly(mnist_subset, tmp_path):
    x, y, _, _ = mnist_subset
    batches = _batches(x, y)  # 200 images: 4 steps per epoch
    torch.manual_seed(0)
    straight = CVAE(**META["model"])
    history = fit(straight, elbo, batches, 3, device="cpu", config=TrainConfig(seed=5), progress=False)

    path = tmp_path / "run.pt"
    torch.manual_seed(0)
    interrupted = CVAE(**META["model"])
    with pytest.raises(Interrupt):  # dies in epoch 2, after epoch 1 was saved
        fit(
            interrupted,
            _interrupting(elbo, 6),
            batches,
            3,
            device="cpu",
            config=TrainConfig(seed=5),
            checkpoint=path,
            meta=META,
            progress=False,
        )
    assert torch.load(path, weights_only=True)["epoch"] == 1
    resumed = CVAE(**META["model"])  # a fresh process would start from a fresh model
    resumed_history = fit(
        resumed, elbo, batches, 3, device="cpu", config=TrainConfig(seed=5), checkpoint=path, meta=META, progress=False
    )
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert resumed_history == history


def test_ctrl_c_ends_the_step_saves_it_and_the_resumed_run_ends_as_an_uninterrupted_one(mnist_subset, tmp_path):
    import os
    import signal

    x, y, _, _ = mnist_subset
    batches = _batches(x, y)  # 200 images: 4 steps per epoch
    torch.manual_seed(0)
    straight = CVAE(**META["model"])
    history = fit(straight, elbo, batches, 3, device="cpu", config=TrainConfig(seed=5), progress=False)

    calls = {"n": 0}

    def ctrl_c_in_step_6(model, x, y):  # a real SIGINT, while the loss of epoch 2's second step is computed
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return elbo(model, x, y)

    path = tmp_path / "run.pt"
    torch.manual_seed(0)
    kwargs = dict(device="cpu", config=TrainConfig(seed=5), checkpoint=path, meta=META, progress=False)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or "ignore" in a job started in the background
    with pytest.raises(TrainingInterrupted, match=f"epoch 2, step 2 of 4; checkpoint kept: {path}") as stop:
        fit(CVAE(**META["model"]), ctrl_c_in_step_6, batches, 3, **kwargs)
    assert (stop.value.epoch, stop.value.step) == (2, 2)
    assert signal.getsignal(signal.SIGINT) is before  # fit gave Ctrl-C back as it found it
    state = torch.load(path, weights_only=True)
    assert (state["epoch"], state["partial"]["steps"], state["num_epochs"], state["steps_per_epoch"]) == (1, 2, 3, 4)
    assert load_checkpoint(path).meta["epochs_done"] == 1.5
    resumed = CVAE(**META["model"])  # the step was finished, not cut: the rest ends as if never stopped
    resumed_history = fit(resumed, elbo, batches, 3, **kwargs)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # the same figures; epoch 2's train means were summed in two parts (float32: the last digits may differ)
    assert [r.keys() for r in resumed_history] == [r.keys() for r in history]
    for got, want in zip(resumed_history, history):
        assert got == pytest.approx(want, rel=1e-6)


def test_max_minutes_stops_mid_epoch_and_the_resumed_run_ends_as_an_uninterrupted_one(
    mnist_subset, tmp_path, monkeypatch
):
    import cvaelib.stopping
    from cvaelib.remedies import RemedyConfig, RemedyLoss

    x, y, _, _ = mnist_subset
    batches = _batches(x, y, batch_size=10)  # 200 images: 20 steps per epoch
    # a learning-rate warm-up and decay, too: both schedules must go on from the step the run stopped at
    speed, config = SpeedConfig(sync_every=3), TrainConfig(seed=5, warmup_steps=7, cosine_decay=True)

    def loss():  # a KL warm-up
        return RemedyLoss(RemedyConfig(schedule="linear", warmup=1.5), steps_per_epoch=len(batches))

    torch.manual_seed(0)
    straight = CVAE(**META["model"])
    straight_ema = ema_of(straight, 0.9)  # the average of the weights goes on from the step too
    history = fit(
        straight, loss(), batches, 2, device="cpu", config=config, speed=speed, progress=False, ema=straight_ema
    )

    clock = iter(range(0, 10_000))  # every call to the clock: one more second
    monkeypatch.setattr(cvaelib.stopping.time, "monotonic", lambda: next(clock))
    path = tmp_path / "run.pt"
    torch.manual_seed(0)
    stopped = CVAE(**META["model"])
    kwargs = dict(device="cpu", config=config, speed=speed, checkpoint=path, meta=META, progress=False)
    assert fit(stopped, loss(), batches, 2, max_minutes=4 / 60, ema=ema_of(stopped, 0.9), **kwargs) == []  # 4 s
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 0 and 0 < state["partial"]["steps"] < len(batches)
    monkeypatch.undo()
    resumed = CVAE(**META["model"])
    resumed_ema = ema_of(resumed, 0.9)
    resumed_history = fit(resumed, loss(), batches, 2, ema=resumed_ema, **kwargs)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for (name, a), b in zip(straight_ema.state_dict().items(), resumed_ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"ema {name}")
    assert resumed_history == history


def test_the_ema_averages_the_weights_after_each_update_and_checkpoints_sample_with_it(mnist_subset, tmp_path):
    x, y, _, _ = mnist_subset
    batches = _batches(x, y, batch_size=40)  # 5 steps
    torch.manual_seed(0)
    model = CVAE(**META["model"])
    seen = []  # the weights each step starts from: those after the update before it

    def recording(model, x, y):
        seen.append([p.detach().clone() for p in model.parameters()])
        return elbo(model, x, y)

    decay, path, config = 0.3, tmp_path / "run.pt", TrainConfig(lr=1e-2)  # steps that move the weights visibly
    ema = ema_of(model, decay)
    fit(model, recording, batches, 1, device="cpu", config=config, checkpoint=path, meta=META, progress=False, ema=ema)
    updates = seen[1:] + [list(model.parameters())]  # the weights after each of the 5 updates
    expected = [p.clone() for p in updates[0]]  # the first update is copied, as AveragedModel does
    for n, weights in enumerate(updates[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))  # 2/11, 3/12, then the full decay 0.3 from the 3rd average on
        expected = [d * e + (1 - d) * w for e, w in zip(expected, weights)]
    for e, got in zip(expected, ema.module.parameters()):  # a fixed decay from the start is 1e-4 away, rounding 1e-7
        torch.testing.assert_close(got, e, rtol=0, atol=1e-6)
    assert not torch.equal(expected[0], updates[-1][0])  # the average is not the last weights
    # the model a checkpoint gives for sampling and evaluation carries the average
    loaded = load_checkpoint(path)
    for e, got in zip(expected, loaded.parameters()):
        torch.testing.assert_close(got, e)
    # resuming with and without an average do not mix
    with pytest.raises(ValueError, match="saved with an average of the weights"):
        fit(CVAE(**META["model"]), elbo, batches, 2, device="cpu", checkpoint=path, meta=META, progress=False)
    with pytest.raises(ValueError, match="the EMA's decay must lie in"):
        ema_of(model, 1.0)


def test_the_learning_rate_warms_up_linearly_then_decays_along_a_cosine(mnist_subset):
    config = TrainConfig(lr=1e-3, warmup_steps=4, cosine_decay=True)
    total = 20
    expected = [min(1, (s + 1) / 4) * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(total)]
    assert [lr_factor(s, total, config) for s in range(total)] == pytest.approx(expected)
    assert lr_factor(0, total, TrainConfig()) == lr_factor(total - 1, total, TrainConfig()) == 1.0

    x, y, _, _ = mnist_subset
    model = CVAE(latent_dim=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    seen = []

    def recording(model, x, y):  # the learning rate each step's update will use
        seen.append(optimizer.param_groups[0]["lr"])
        return elbo(model, x, y)

    fit(model, recording, _batches(x, y, batch_size=20), 2, optimizer=optimizer, config=config, progress=False)
    assert seen == pytest.approx([1e-3 * f for f in expected])


def test_a_checkpoint_of_another_model_is_refused_not_overwritten(mnist_subset, tmp_path):
    x, y, _, _ = mnist_subset
    path = tmp_path / "run.pt"
    fit(CVAE(**META["model"]), elbo, _batches(x, y), 1, device="cpu", checkpoint=path, meta=META, progress=False)
    saved = path.read_bytes()
    other = {**META, "model": {**META["model"], "latent_dim": 8}}
    with pytest.raises(ValueError, match="another model or setting.*delete it to start over"):
        fit(CVAE(**other["model"]), elbo, _batches(x, y), 2, device="cpu", checkpoint=path, meta=other, progress=False)
    assert path.read_bytes() == saved


def test_nan_stops_training_naming_step_and_part(mnist_subset):
    x, y, _, _ = mnist_subset

    def bad_kl(model, x, y):
        parts = elbo(model, x, y)
        parts["kl"] = parts["kl"] * math.nan
        return parts

    with pytest.raises(FloatingPointError, match=r"non-finite loss at epoch 1, step 1: kl=nan"):
        fit(CVAE(latent_dim=2), bad_kl, _batches(x, y), 1, device="cpu", progress=False)


def test_beta_is_passed_through(mnist_subset):
    x, y, _, _ = mnist_subset
    history = fit(CVAE(latent_dim=2), partial(elbo, beta=0.0), _batches(x, y), 1, device="cpu", progress=False)
    assert history[0]["train_loss"] == pytest.approx(history[0]["train_recon"], rel=1e-5)


def test_bf16_elbo_agrees_with_fp32(mnist_subset):
    """Mixed precision must not change the numbers a learner reads: within 1 % per image."""
    x, y, _, _ = mnist_subset
    torch.manual_seed(0)
    model = CVAE(arch="conv", prior="learned").eval()
    x, y = x[:100].float() / 255, y[:100]
    torch.manual_seed(1)
    fp32 = elbo(model, x, y)["nelbo_per_image"]
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = elbo(model, x, y)
        assert parts["recon"].dtype == parts["kl"].dtype == torch.float32  # the likelihood and KL stay in float32
        bf16 = parts["nelbo_per_image"]
    torch.testing.assert_close(bf16, fp32, rtol=0.01, atol=0)


def test_speed_switches_train_the_same_model(mnist_subset):
    x, y, _, _ = mnist_subset
    runs = {}
    for name, speed in {
        "plain": SpeedConfig(),
        "bf16": SpeedConfig(bf16=True),
        "channels_last": SpeedConfig(channels_last=True),
    }.items():
        torch.manual_seed(0)
        model = CVAE(arch="conv", latent_dim=4)
        runs[name] = fit(model, elbo, _batches(x, y), 2, device="cpu", progress=False, speed=speed)[-1]["train_nelbo"]
    assert runs["channels_last"] == pytest.approx(runs["plain"], rel=1e-3)
    assert runs["bf16"] == pytest.approx(runs["plain"], rel=0.02)


def test_compiled_model_trains_like_the_eager_one(mnist_subset):
    x, y, _, _ = mnist_subset
    runs = []
    for compile in (False, True):
        torch.manual_seed(0)
        runs.append(
            fit(
                CVAE(latent_dim=4),
                elbo,
                _batches(x, y),
                1,
                device="cpu",
                progress=False,
                speed=SpeedConfig(compile=compile),
            )[-1]["train_nelbo"]
        )
    # Compiled code draws its random eps differently, so the runs agree closely, not bit for bit.
    assert runs[1] == pytest.approx(runs[0], rel=0.01)


def test_the_default_compiles_a_measured_model_planned_long_enough_where_a_compiler_is(monkeypatch):
    import sys

    long = COMPILE_PAYS_FROM_STEPS["hierarchical"]
    monkeypatch.setenv("CXX", sys.executable)  # an executable that is there: the C++ compiler, as far as it can tell
    assert SpeedConfig.default("hierarchical", "cpu", long).compile
    assert SpeedConfig.default("hierarchical", "cpu", long, max_minutes=60).compile
    assert not SpeedConfig.default("hierarchical", "cpu", long - 1).compile  # too short to win the compilation back
    assert not SpeedConfig.default("hierarchical", "cpu", long, max_minutes=30).compile  # stopped before it pays
    assert not SpeedConfig.default("hierarchical", "cpu").compile  # a length nobody planned
    assert not SpeedConfig.default("conv", "cpu", 100 * long).compile  # not measured: never by default
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    assert not SpeedConfig.default("hierarchical", "cpu", long).compile


class BreaksAfter(torch.optim.Adam):
    """Adam whose n-th step leaves the parameters NaN while every loss stays finite."""

    def __init__(self, params, n):
        super().__init__(params)
        self.calls, self.n = 0, n

    def step(self, closure=None):
        super().step(closure)
        self.calls += 1
        if self.calls >= self.n:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(math.nan)


def test_nan_parameters_stop_training_and_the_last_good_checkpoint_stays(mnist_subset, tmp_path):
    x, y, _, _ = mnist_subset
    path, batches = tmp_path / "run.pt", _batches(x, y)  # 4 steps per epoch
    fit(CVAE(**META["model"]), elbo, batches, 1, device="cpu", checkpoint=path, meta=META, progress=False)
    saved = path.read_bytes()
    model = CVAE(**META["model"])
    # The last step of epoch 2 breaks the weights: a finite loss, then NaN parameters, then the epoch's save.
    with pytest.raises(
        FloatingPointError,
        match=r"diverged.*epoch 2, step 4: the parameters are no longer finite.*"
        r"last good checkpoint.*run.pt, is kept",
    ):
        fit(
            model,
            elbo,
            batches,
            2,
            device="cpu",
            checkpoint=path,
            meta=META,
            progress=False,
            optimizer=BreaksAfter(model.parameters(), 4),
        )
    assert path.read_bytes() == saved


def test_updates_with_a_huge_gradient_are_skipped_and_counted(mnist_subset):
    x, y, _, _ = mnist_subset
    torch.manual_seed(0)
    model = CVAE(latent_dim=2)
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings():  # a skipped update is counted, not warned about (torch's LambdaLR would warn)
        warnings.simplefilter("error")
        history = fit(
            model, elbo, _batches(x, y), 1, device="cpu", progress=False, config=TrainConfig(skip_grad_norm=1e-6)
        )  # every gradient is larger: every update skipped
    assert history[0]["skipped_updates"] == 4
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    history = fit(model, elbo, _batches(x, y), 1, device="cpu", progress=False, config=TrainConfig(skip_grad_norm=1e9))
    assert history[0]["skipped_updates"] == 0


def test_bad_fit_arguments_are_refused(mnist_subset):
    x, y, _, _ = mnist_subset
    with pytest.raises(ValueError, match="num_epochs must be a positive integer, got 0"):
        fit(CVAE(latent_dim=2), elbo, _batches(x, y), 0, device="cpu", progress=False)
    with pytest.raises(ValueError, match="gives no batches"):
        fit(CVAE(latent_dim=2), elbo, data.Batches(x[:10], y[:10], 50, drop_last=True), 1, device="cpu")
    with pytest.raises(ValueError, match="Batches got no images"):
        data.Batches(x[:0], y[:0])
    for bad, message in [
        (dict(lr=0), "lr must be a positive"),
        (dict(seed=-1), "seed must be a non-negative"),
        (dict(clip_grad=-1.0), "clip_grad must be a positive"),
        (dict(warmup_steps=-1), "warmup_steps must be a non-negative integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad)
