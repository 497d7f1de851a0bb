"""The comparison rule: the interval of the difference decides, not whether two intervals overlap."""

import math

import pytest
from scipy import stats

from cvaelib.comparison import difference

# Chapter 4's remedy table, test bits/dim of three seeds each (results/04_cvae_cifar10.json)
NONE = [4.8668, 4.7138, 4.9464]
FREE_BITS = [4.4542, 4.3972, 4.6365]


def own_interval(values):
    mean, sem = sum(values) / len(values), stats.sem(values)
    return stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)


def test_overlapping_intervals_whose_difference_excludes_zero():
    # each setting's own 95 % interval overlaps the other's ...
    (none_low, none_high), (fb_low, fb_high) = own_interval(NONE), own_interval(FREE_BITS)
    assert fb_low < none_high and none_low < fb_high
    # ... but Welch's interval of the difference excludes 0: free bits lowered the bits/dim
    d = difference(FREE_BITS, NONE, higher_is_better=False)
    assert d.high < 0 and d.verdict == "helped"
    assert d.mean == pytest.approx(sum(FREE_BITS) / 3 - sum(NONE) / 3)
    welch = stats.ttest_ind(FREE_BITS, NONE, equal_var=False)
    assert welch.pvalue < 0.05
    # the same figures where higher is better: the change hurt
    assert difference(FREE_BITS, NONE, higher_is_better=True).verdict == "hurt"


def test_a_difference_whose_interval_holds_zero_is_not_distinguishable_never_no_difference():
    a, b = [0.139, 0.196, 0.126], [0.184, 0.17, 0.146]  # judged accuracies of none and free bits
    d = difference(b, a)
    assert d.low < 0 < d.high
    assert d.verdict == "not distinguishable with 3 seeds"
    assert "no difference" not in str(d)


def test_pairing_by_seed_cancels_the_noise_the_seeds_share():
    # each seed moves both settings alike; the change adds about 0.1 to every seed
    baseline = [1.0, 2.0, 3.0, 4.0]
    changed = [1.11, 2.09, 3.1, 4.12]
    assert difference(changed, baseline).verdict == "not distinguishable with 4 seeds"  # as if unpaired
    paired = difference(changed, baseline, paired=True)
    assert paired.verdict == "helped" and paired.low > 0 and paired.paired
    assert paired.mean == pytest.approx(0.105)


def test_runs_without_spread_and_bad_inputs():
    assert difference([6, 6, 6], [4, 4, 4]).verdict == "helped"  # every run shows the same difference
    same = difference([5, 5], [5, 5])
    assert (same.low, same.high) == (0, 0) and same.verdict == "not distinguishable with 2 seeds"
    with pytest.raises(ValueError, match="at least two runs"):
        difference([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="share their seeds"):
        difference([1.0, 2.0, 3.0], [1.0, 2.0], paired=True)
    with pytest.raises(ValueError, match="finite"):
        difference([1.0, float("nan")], [1.0, 2.0])


def test_shares_difference_is_the_normal_interval_of_two_proportions():
    from cvaelib.comparison import shares_difference

    # chapter 3's MNIST figures: 98.48 % against 98.2 % on 5,000 samples each
    d = shares_difference(0.9848, 0.982, 5000, 5000)
    half = 1.96 * math.sqrt(0.9848 * 0.0152 / 5000 + 0.982 * 0.018 / 5000)
    assert d.mean == pytest.approx(0.0028) and d.high - d.low == pytest.approx(2 * half)
    assert d.verdict == "not distinguishable with 5,000 samples"  # half-width 0.5 points > 0.28
    assert shares_difference(0.832, 0.802, 5000, 5000).verdict == "helped"
    assert shares_difference(0.802, 0.832, 5000, 5000).verdict == "hurt"
    assert shares_difference(0.802, 0.832, 5000, 5000, higher_is_better=False).verdict == "helped"
    with pytest.raises(ValueError, match="changed must be a share"):
        shares_difference(1.2, 0.5, 100, 100)
