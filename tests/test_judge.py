import torch

from cvaelib.judge import Classifier, classifier_accuracy, frechet_distance, judge_samples, train_classifier


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
