"""The course's one rule for saying that a change helped: the 95 % interval of the difference (chapters 1-5).

Two settings are each run with a few seeds. Whether the second did better is a question about the *difference* of
their means, so the rule looks at that difference's interval, never at whether the two settings' own intervals
overlap: two overlapping intervals can still hold a difference whose interval excludes 0 (the spread of a
difference is less than the sum of the two spreads), and runs that share their seeds cancel much of their noise
when they are compared seed by seed.

- Runs with their own seeds: Welch's t interval of the difference of the means (no equal variances assumed).
- Runs that share seeds (seed s of one setting beside seed s of the other): the t interval of the paired differences.
- Two shares (judged accuracies) of one model each, from n independent samples: the normal interval of the
  difference of two proportions (``shares_difference``); it holds the judging noise only, not another seed's.

"Helped" or "hurt" when the interval excludes 0, else "not distinguishable with N seeds": never "no difference",
which a few seeds cannot show. scipy computes the intervals (``ttest_ind(equal_var=False)``, ``ttest_rel``).
"""

import math
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Difference:
    """The mean of ``changed - baseline``, its interval, and the verdict the course states from it."""

    mean: float
    low: float
    high: float
    seeds: int  # seeds per setting (the smaller number for Welch)
    paired: bool
    verdict: str  # "helped", "hurt" or "not distinguishable with N seeds"

    def __str__(self) -> str:
        kind = "paired by seed" if self.paired else "Welch"
        interval = f"[{self.low:+.3g}, {self.high:+.3g}]"
        return f"{self.verdict} (difference {self.mean:+.3g}, 95 % interval {interval}, {kind})"


def difference(
    changed: list[float],
    baseline: list[float],
    paired: bool = False,
    higher_is_better: bool = True,
    confidence: float = 0.95,
) -> Difference:
    """Compare the runs of a changed setting with the baseline's: the ``confidence`` interval of the difference of
    the means (Welch), or of the differences seed by seed when ``paired`` (the lists in seed order), and the verdict.

    ``higher_is_better``: whether a larger figure is better (judged accuracy) or worse (bits/dim). Needs at least
    two runs of each setting. Where every run of both settings gives the same figure, or every paired difference is
    the same, the interval is that one difference.
    """
    changed, baseline = [float(v) for v in changed], [float(v) for v in baseline]
    if min(len(changed), len(baseline)) < 2:
        raise ValueError(f"a difference needs at least two runs of each setting, got {len(changed)}, {len(baseline)}")
    if paired and len(changed) != len(baseline):
        raise ValueError(f"paired runs share their seeds: one run each, got {len(changed)} and {len(baseline)}")
    if not all(math.isfinite(v) for v in changed + baseline):
        raise ValueError("every run's figure must be finite (a diverged run has no figure to compare)")
    if paired:
        diffs = [a - b for a, b in zip(changed, baseline)]
        mean, spread = sum(diffs) / len(diffs), max(diffs) - min(diffs)
        test = stats.ttest_rel(changed, baseline) if spread > 0 else None
    else:
        mean = sum(changed) / len(changed) - sum(baseline) / len(baseline)
        spread = max(changed) - min(changed) + max(baseline) - min(baseline)
        test = stats.ttest_ind(changed, baseline, equal_var=False) if spread > 0 else None
    if test is None:  # no spread at all: the difference is what every run shows
        low = high = mean
    else:
        interval = test.confidence_interval(confidence)
        low, high = float(interval.low), float(interval.high)
    seeds = min(len(changed), len(baseline))
    verdict = _verdict(low, high, higher_is_better, f"{seeds} seeds")
    return Difference(mean, low, high, seeds, paired, verdict)


def _verdict(low: float, high: float, higher_is_better: bool, evidence: str) -> str:
    """ "helped" or "hurt" when the interval [low, high] of the difference excludes 0, else "not distinguishable
    with ``evidence``" (the runs or samples it rests on)."""
    better = low > 0 if higher_is_better else high < 0
    worse = high < 0 if higher_is_better else low > 0
    return "helped" if better else "hurt" if worse else f"not distinguishable with {evidence}"


def shares_difference(
    changed: float, baseline: float, n_changed: int, n_baseline: int, higher_is_better: bool = True
) -> Difference:
    """Compare two shares (a judged accuracy: the fraction of ``n`` independent samples the judge reads as their
    class), each of one trained model: the 95 % normal interval of ``changed - baseline``,
    +-1.96 sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2), and the verdict ("not distinguishable with N samples" when it
    holds 0, N the smaller count). ``seeds`` is 1: the interval is the judging noise of one model each."""
    for name, p, n in (("changed", changed, n_changed), ("baseline", baseline, n_baseline)):
        if not 0 <= p <= 1 or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a share in [0, 1] of a positive number of samples, got {p!r} of {n!r}")
    mean = changed - baseline
    half = 1.96 * math.sqrt(changed * (1 - changed) / n_changed + baseline * (1 - baseline) / n_baseline)
    low, high = mean - half, mean + half
    verdict = _verdict(low, high, higher_is_better, f"{min(n_changed, n_baseline):,} samples")
    return Difference(mean, low, high, 1, False, verdict)
