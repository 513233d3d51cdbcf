"""Bootstrap intervals of the audit: they contain the estimate, shrink with n, are seeded."""

import numpy as np
import pytest

from fedsim.privacy.bootstrap import bootstrap_intervals
from fedsim.privacy.membership import auc, membership_report, roc_curve


def mean_gap(members: np.ndarray, nonmembers: np.ndarray) -> np.ndarray:
    return np.array([members.mean() - nonmembers.mean()])


def test_interval_of_a_mean_difference_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(1.0, 1.0, 400), rng.normal(0.0, 1.0, 400)
    (low, high), = bootstrap_intervals(members, nonmembers, mean_gap, resamples=2000, seed=1)
    gap = members.mean() - nonmembers.mean()
    # Standard error of the gap: sqrt(1/400 + 1/400) = 0.0707, so the 95 % half-width is ~0.139.
    assert low < gap < high
    assert (high - low) / 2 == pytest.approx(1.96 * np.sqrt(2 / 400), rel=0.1)


def test_auc_interval_contains_the_estimate_and_shrinks_with_more_samples() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 200, 800):
        members, nonmembers = rng.normal(0.5, 1.0, n), rng.normal(0.0, 1.0, n)
        report = membership_report(members, nonmembers, epsilon=np.inf, delta=0.0, seed=0)
        low, high = report.auc_ci
        assert low <= auc(*roc_curve(members, nonmembers)) == report.auc <= high
        widths.append(high - low)
    # The width goes as 1/sqrt(n): quadrupling n about halves it.
    assert widths[0] > 1.6 * widths[1] > 1.6**2 * widths[2]


def test_tpr_interval_only_where_the_fpr_is_resolvable() -> None:
    rng = np.random.default_rng(3)
    members, nonmembers = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 300)
    report = membership_report(members, nonmembers, epsilon=1.0, delta=1e-5)
    one_pct, tenth_pct = report.points
    assert one_pct.tpr_ci is not None and one_pct.tpr_ci[0] <= one_pct.tpr <= one_pct.tpr_ci[1]
    assert tenth_pct.tpr is None and tenth_pct.tpr_ci is None  # 1/300 > 0.001


def test_intervals_are_reproducible_from_the_seed() -> None:
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(size=100), rng.normal(size=100)
    first = bootstrap_intervals(members, nonmembers, mean_gap, resamples=200, seed=7)
    again = bootstrap_intervals(members, nonmembers, mean_gap, resamples=200, seed=7)
    other = bootstrap_intervals(members, nonmembers, mean_gap, resamples=200, seed=8)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_intervals([1.0], [0.0], mean_gap, confidence=1.0)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_intervals([], [0.0], mean_gap)
