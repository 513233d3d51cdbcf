"""Membership inference: ROC, AUC, low-FPR TPR, resolvable FPRs and the DP bound, by hand."""

import math

import numpy as np
import pytest
from sklearn import metrics

from fedsim.privacy.membership import (
    MembershipReport,
    OperatingPoint,
    auc,
    client_score,
    dp_tpr_bound,
    group_guarantee,
    membership_report,
    plot_roc,
    resolvable,
    roc_curve,
    tpr_at_fpr,
)

# Sorted by score: 3 (M), 2 (M) tied with 2 (N), 1 (M), 0 (N), -1 (N).
MEMBERS = np.array([3.0, 2.0, 1.0])
NONMEMBERS = np.array([2.0, 0.0, -1.0])


def test_roc_by_hand_with_a_tie() -> None:
    fpr, tpr = roc_curve(MEMBERS, NONMEMBERS)
    third = 1 / 3
    # The tie at 2 is one step: member and non-member cross the threshold together.
    np.testing.assert_allclose(fpr, [0, 0, third, third, 2 * third, 1])
    np.testing.assert_allclose(tpr, [0, third, 2 * third, 1, 1, 1])
    # Pairs won: 3 beats all (3), 2 ties one and beats two (2.5), 1 beats two (2) -> 7.5 / 9.
    assert auc(fpr, tpr) == pytest.approx(7.5 / 9)


def test_roc_and_auc_agree_with_sklearn_on_ties() -> None:
    rng = np.random.default_rng(3)
    members, nonmembers = rng.integers(0, 5, 40).astype(float), rng.integers(0, 4, 30).astype(float)
    labels = np.r_[np.ones(40), np.zeros(30)]
    scores = np.r_[members, nonmembers]
    ref_fpr, ref_tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
    fpr, tpr = roc_curve(members, nonmembers)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert auc(fpr, tpr) == pytest.approx(metrics.roc_auc_score(labels, scores))


def test_auc_of_identical_distributions_is_chance() -> None:
    rng = np.random.default_rng(0)
    fpr, tpr = roc_curve(rng.normal(size=5000), rng.normal(size=5000))
    assert auc(fpr, tpr) == pytest.approx(0.5, abs=0.03)


def test_auc_of_separated_scores() -> None:
    assert auc(*roc_curve([5.0, 6.0, 7.0], [1.0, 2.0])) == 1.0
    assert auc(*roc_curve([1.0, 2.0], [5.0, 6.0, 7.0])) == 0.0


def test_tpr_at_fpr_takes_reachable_vertices_only() -> None:
    fpr, tpr = roc_curve(MEMBERS, NONMEMBERS)
    assert tpr_at_fpr(fpr, tpr, 0.0) == pytest.approx(1 / 3)
    assert tpr_at_fpr(fpr, tpr, 0.2) == pytest.approx(1 / 3)  # interpolating would say 0.53
    assert tpr_at_fpr(fpr, tpr, 0.34) == pytest.approx(1.0)


def test_dp_bound_by_hand() -> None:
    assert dp_tpr_bound(0.01, 1.0, 0.01) == pytest.approx(math.e * 0.01 + 0.01)
    assert dp_tpr_bound(0.3, 0.0, 0.0) == pytest.approx(0.3)  # eps = 0: no better than chance
    # At high FPR the other half of the Kairouz et al. region binds: 1 - e^-1 * (1 - 0.5).
    assert dp_tpr_bound(0.5, 1.0, 0.0) == pytest.approx(1 - 0.5 / math.e)
    assert dp_tpr_bound(0.001, math.inf, 0.0) == 1.0
    np.testing.assert_allclose(
        dp_tpr_bound(np.array([0.0, 0.01, 1.0]), 2.0, 0.0), [0, 0.01 * math.e**2, 1]
    )


def test_client_score_is_negative_mean_loss() -> None:
    assert client_score(np.array([1.0, 2.0, 3.0])) == -2.0
    with pytest.raises(ValueError):
        client_score(np.array([]))


def test_membership_report_by_hand(tmp_path) -> None:
    # 3 non-members: FPR moves in steps of 1/3, so 0.5 is resolvable and 0.01 is not.
    report = membership_report(MEMBERS, NONMEMBERS, epsilon=1.0, delta=0.01, fprs=(0.5, 0.01))
    assert report.auc == pytest.approx(7.5 / 9)
    assert report.auc_ci[0] <= report.auc <= report.auc_ci[1]
    half, low = report.points
    assert half.tpr == 1.0  # vertex (1/3, 1) is the last with FPR <= 0.5
    assert half.bound == pytest.approx(1 - 0.49 / math.e)  # 1 - e^-1 (1 - 0.01 - 0.5)
    assert low.tpr is None and low.tpr_ci is None  # not read at FPR 0
    assert low.bound == pytest.approx(math.e * 0.01 + 0.01)
    fields = report.fields()
    assert fields["mia_tpr_at_fpr_0.01"] is None and fields["mia_tpr_at_fpr_0.5"] == 1.0
    assert fields["mia_min_resolvable_fpr"] == pytest.approx(1 / 3)
    assert (fields["mia_members"], fields["mia_nonmembers"]) == (3, 3)
    assert (fields["mia_bound_epsilon"], fields["mia_bound_delta"]) == (1.0, 0.01)
    path = tmp_path / "roc.png"
    plot_roc({"hand": roc_curve(MEMBERS, NONMEMBERS)}, path, bound=(1.0, 0.01))
    assert path.stat().st_size > 0


def test_an_fpr_is_resolvable_from_one_over_n_nonmembers() -> None:
    assert resolvable(0.01, 100) and not resolvable(0.01, 99)
    assert resolvable(0.001, 1000) and not resolvable(0.001, 360)
    assert resolvable(0.01, 360)  # the digits test split resolves 1 % but not 0.1 %


def test_within_bound_compares_the_intervals_lower_end() -> None:
    def report(*points: OperatingPoint) -> MembershipReport:
        return MembershipReport(0.5, (0.4, 0.6), points, 100, 100, 1.0, 0.0)

    above_but_noisy = OperatingPoint(0.01, 0.05, (0.02, 0.08), bound=0.0272)
    clearly_above = OperatingPoint(0.01, 0.20, (0.15, 0.25), bound=0.0272)
    unresolved = OperatingPoint(0.001, None, None, bound=0.00272)
    assert report(above_but_noisy, unresolved).within_bound() is True
    assert report(clearly_above, unresolved).within_bound() is False
    assert report(unresolved).within_bound() is None


def test_group_privacy_of_two_doubles_epsilon() -> None:
    # P(D0) <= e P(D1) + d <= e (e P(D2) + d) + d: (2, (1 + e) d) for eps = 1.
    assert group_guarantee(1.0, 0.01, 2) == pytest.approx((2.0, (1 + math.e) * 0.01))
    assert group_guarantee(1.0, 0.01, 1) == (1.0, 0.01)
    assert group_guarantee(900.0, 1e-5, 2) == (1800.0, 1.0)  # delta capped, no overflow
    assert group_guarantee(math.inf, 0.01, 2)[0] == math.inf


def test_dp_bound_of_a_huge_epsilon_is_one_not_an_overflow() -> None:
    # epsilon ~ 1000 is what z = 0.3 on a 10-client cohort gives after 25 rounds.
    assert dp_tpr_bound(0.01, 1016.5, 0.01) == 1.0
    assert dp_tpr_bound(np.array([0.0, 1e-6, 0.5]), 800.0, 0.0).tolist() == [0.0, 1.0, 1.0]
