"""The GPU paths: each test runs where CUDA is present (`pytest -m cuda`) and is skipped, with its reason, elsewhere."""

import pytest
import torch

from cvaelib import CVAE, data
from cvaelib.evaluate import report
from cvaelib.remedies import RemedyConfig, RemedyLoss
from cvaelib.train import SpeedConfig, TrainConfig, fit

pytestmark = pytest.mark.cuda


def _batches(data_root, per_class=5, name="mnist"):
    x, y = data.stratified_subset(*data.load(name, "train", data_root), per_class)
    return data.Batches(x, y, 25, device="cuda")


@pytest.mark.parametrize(
    "remedies,likelihood",
    [
        (RemedyConfig(schedule="linear", warmup=2), "bernoulli"),
        (RemedyConfig(free_bits=0.1, kl_balance=0.8), "bernoulli"),
        (RemedyConfig(group_sizes=(2, 4), group_balance=True, schedule="linear", warmup=2), "bernoulli"),
        (RemedyConfig(optimal_sigma=True), "gaussian"),
    ],
)
def test_every_remedy_trains_on_cuda(data_root, remedies, likelihood):
    batches = _batches(data_root)
    model = CVAE(latent_dim=6, prior="learned", likelihood=likelihood)
    history = fit(
        model,
        RemedyLoss(remedies, steps_per_epoch=len(batches)),
        batches,
        2,
        device="cuda",
        test_batches=batches,
        progress=False,
    )
    assert all(torch.isfinite(torch.tensor(h["train_nelbo"])) for h in history)


def test_a_run_resumes_on_cuda_from_its_checkpoint(data_root, tmp_path):
    batches, path = _batches(data_root), tmp_path / "m.pt"
    meta = {"model": dict(latent_dim=4)}
    straight = fit(
        CVAE(latent_dim=4), RemedyLoss(), batches, 2, device="cuda", config=TrainConfig(seed=1), progress=False
    )
    fit(
        CVAE(latent_dim=4),
        RemedyLoss(),
        batches,
        1,
        device="cuda",
        config=TrainConfig(seed=1),
        checkpoint=path,
        meta=meta,
        progress=False,
    )
    resumed = fit(
        CVAE(latent_dim=4),
        RemedyLoss(),
        batches,
        2,
        device="cuda",
        config=TrainConfig(seed=1),
        checkpoint=path,
        meta=meta,
        progress=False,
    )
    assert len(resumed) == 2 and resumed[-1]["train_nelbo"] == pytest.approx(straight[-1]["train_nelbo"], rel=1e-3)


def test_bf16_and_evaluation_and_sampling_on_cuda(data_root, tmp_path):
    batches = _batches(data_root, name="cifar10")
    model = CVAE(image_shape=(3, 32, 32), arch="conv", likelihood="logistic", latent_dim=8, prior="learned")
    fit(
        model, RemedyLoss(), batches, 1, device="cuda", speed=SpeedConfig(bf16=True, channels_last=True), progress=False
    )
    figures = report(model, batches, k=4, progress=False)
    assert 0 < figures["bits_per_dim"] < 12
    samples = model.sample(torch.arange(10, device="cuda"))
    assert samples.device.type == "cuda" and samples.shape == (10, 3, 32, 32)
    with pytest.raises(ValueError, match="labels must be in"):
        model.sample(torch.tensor([10]))


def test_the_command_line_trains_a_hierarchy_on_cuda_with_its_defaults_and_resumes(data_root, tmp_path, capsys):
    import json

    from cvaelib import load_checkpoint
    from cvaelib.cli import main

    out = tmp_path / "h.pt"
    argv = ["train", "--dataset", "cifar10", "--arch", "hierarchical", "--size", "tiny", "--subset", "4"]
    argv += ["--out", str(out), "--device", "cuda", "--no-progress", "--data-root", data_root]
    main([*argv, "--epochs", "1"])
    main([*argv, "--epochs", "2"])  # the same recipe with more epochs goes on from the first
    figures = json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1])
    assert figures["epochs"] == 2 and 0 < figures["test_bits_per_dim"] < 12
    model = load_checkpoint(out, "cuda")
    assert model.meta["train"]["ema"] == 0.999 and len(model.meta["history"]) == 2
    assert model.sample(torch.arange(10, device="cuda")).device.type == "cuda"


def test_a_finished_race_is_loaded_onto_the_gpu_and_tested_there(data_root, tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "hierarchical_vs_single.py"
    spec = importlib.util.spec_from_file_location("hierarchical_vs_single", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["--minutes", "0.02", "--eval-every", "0.01", "--test-images", "50", "--per-class", "3", "--size", "tiny"]
    args += ["--only", "hierarchical", "--device", "cuda", "--runs", str(tmp_path / "runs")]
    args += ["--out", str(tmp_path / "race.json")]
    module.main(args)
    first = json.loads((tmp_path / "race.json").read_text())["models"]["hierarchical"]
    module.main(args)  # the run is finished: it is loaded (onto the GPU) and tested again, not trained
    again = json.loads((tmp_path / "race.json").read_text())["models"]["hierarchical"]
    assert again["curve"] == first["curve"]
    # the same weights, tested again on the GPU (a new draw of z for each image)
    assert again["trained_weights_test_bits_per_dim"] == pytest.approx(first["trained_weights_test_bits_per_dim"], 0.02)
