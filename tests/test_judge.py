import json

import pytest
import torch

from cvaelib import data
from cvaelib.judge import (
    CHECK_IMAGES,
    Classifier,
    accuracy_under_blur,
    blur,
    classifier_accuracy,
    frechet_distance,
    judge_samples,
    load_judge,
    shift_and_mirror,
    train_classifier,
)
from cvaelib.provenance import read_results

# What a judge must reach on real test images to be trusted (chapters 2-4)
TARGETS = {"mnist": 0.993, "fashion_mnist": 0.92, "cifar10": 0.80}


def test_classifier_learns_real_digits(mnist_subset):
    x, y, xt, yt = mnist_subset
    classifier, history = train_classifier(x, y, xt, yt, num_epochs=8, batch_size=20, progress=False)
    assert history[-1]["test_accuracy"] > 0.6  # 200 training images; chance is 0.1
    assert classifier_accuracy(classifier, xt, yt) == history[-1]["test_accuracy"]


def test_judge_samples_counts_requested_against_judged():
    classifier = Classifier()
    samples = torch.rand(30, 1, 28, 28)
    requested = torch.arange(10).repeat(3)
    result = judge_samples(classifier, samples, requested)
    judged = classifier(samples).argmax(1)
    assert result["confusion"].shape == (10, 10) and int(result["confusion"].sum()) == 30
    assert result["accuracy"] == float((judged == requested).float().mean())
    for r, j in zip(requested, judged):  # row: requested, column: judged
        assert result["confusion"][r, j] >= 1
    torch.testing.assert_close(result["per_class"].mean(), torch.tensor(result["accuracy"]))


def test_frechet_distance_is_small_for_the_same_distribution_and_large_otherwise(mnist_subset):
    x, y, xt, _ = mnist_subset
    torch.manual_seed(0)
    classifier = Classifier().eval()
    real = x.float() / 255
    same = frechet_distance(classifier, real[::2], real[1::2])
    noise = frechet_distance(classifier, real, torch.rand_like(real))
    assert 0 <= same < noise / 10


def test_shifts_move_whole_pixels_and_mirrors_flip_columns():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    moved = shift_and_mirror(x, max_shift=2, mirror=True)
    for a, b in zip(x, moved):  # each output is its input mirrored or not, shifted by at most 2 pixels, zeros around
        found = False
        for flipped in (a, a.flip(-1)):
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    shifted = torch.zeros_like(a)
                    src = flipped[:, max(0, -dy) : 8 - max(0, dy), max(0, -dx) : 8 - max(0, dx)]
                    shifted[:, max(0, dy) : 8 - max(0, -dy), max(0, dx) : 8 - max(0, -dx)] = src
                    found |= torch.equal(shifted, b)
        assert found
    assert not torch.equal(moved, x)
    assert torch.equal(shift_and_mirror(x, max_shift=0, mirror=False), x)


def _write_judge(folder, name, check_accuracy=None):
    torch.manual_seed(0)
    classifier = Classifier(data.image_shape(name)).eval()
    torch.save(classifier.state_dict(), folder / f"judge_{name}.pt")
    x, y = data.load(name, "test")
    measured = classifier_accuracy(classifier, x[:CHECK_IMAGES], y[:CHECK_IMAGES])
    record = {"weights": f"judge_{name}.pt", "check_accuracy": measured if check_accuracy is None else check_accuracy}
    (folder / "judges.json").write_text(json.dumps({name: record}))
    return classifier


def test_load_judge_returns_the_recorded_weights_and_refuses_others(data_root, tmp_path):
    saved = _write_judge(tmp_path, "mnist")
    judge, record = load_judge("mnist", folder=tmp_path)
    for a, b in zip(saved.state_dict().values(), judge.state_dict().values()):
        assert torch.equal(a, b)
    assert not judge.training and record["weights"] == "judge_mnist.pt"

    _write_judge(tmp_path, "mnist", check_accuracy=0.99)  # these weights do not score what the record says
    with pytest.raises(ValueError, match="judge_mnist.pt scores .* train it again with benchmarks/train_judges.py"):
        load_judge("mnist", folder=tmp_path)
    with pytest.raises(FileNotFoundError, match="no judge for 'cifar10'"):
        load_judge("cifar10", folder=tmp_path)


@pytest.mark.parametrize("name", list(TARGETS))
def test_the_shipped_judges_reach_their_targets_on_real_test_images(real_data, name):
    record = read_results("judges")[name]
    assert record["test_accuracy"] >= TARGETS[name], record["test_accuracy"]
    judge, _ = load_judge(name)  # checks its accuracy on the first real test images
    x, y = data.load(name, "test")
    assert classifier_accuracy(judge, x, y) == pytest.approx(record["test_accuracy"], abs=0.002)


def test_blur_keeps_the_mass_of_a_point_and_spreads_it_by_sigma():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 14, 14] = 1.0
    blurred = blur(x, 1.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)  # the kernel is normalised
    row = blurred[0, 0, 14, 11:18]  # the point's row, 3 pixels to each side: the kernel's 7 taps
    kernel = torch.exp(-(torch.arange(-3.0, 4.0) ** 2) / 2)  # a Gaussian of sigma 1, up to its norm
    torch.testing.assert_close(row / row[3], kernel / kernel[3])
    assert torch.equal(blur(x, 1e-3), x)  # a blur far below a pixel changes nothing


def test_the_fashion_judge_accuracy_falls_as_blur_grows(real_data):
    judge, _ = load_judge("fashion_mnist")
    x, y = data.load("fashion_mnist", "test")
    x, y = x[:2000], y[:2000]
    accuracy = accuracy_under_blur(judge, x, y, sigmas=(1e-3, 0.5, 1.0, 1.5))
    # no blur to speak of: the judge's accuracy on the images themselves
    assert accuracy[1e-3] == pytest.approx(classifier_accuracy(judge, x, y), abs=1e-6)
    assert accuracy[1e-3] > accuracy[0.5] > accuracy[1.0] > accuracy[1.5]
