"""Client-level membership inference: ROC, AUC, low-FPR TPR and the DP bound, by hand."""

import math

import numpy as np
import pytest
from sklearn import metrics

from fedsim.privacy.membership import (
    MembershipReport,
    auc,
    client_score,
    dp_tpr_bound,
    membership_report,
    plot_roc,
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
    report = membership_report(MEMBERS, NONMEMBERS, epsilon=1.0, delta=0.01)
    assert report == MembershipReport(
        auc=pytest.approx(7.5 / 9),
        tpr_at_1pct=pytest.approx(1 / 3),
        tpr_at_01pct=pytest.approx(1 / 3),
        bound_at_1pct=pytest.approx(math.e * 0.01 + 0.01),
        bound_at_01pct=pytest.approx(math.e * 0.001 + 0.01),
        members=3,
        nonmembers=3,
    )
    path = tmp_path / "roc.png"
    plot_roc({"hand": roc_curve(MEMBERS, NONMEMBERS)}, path, epsilon=1.0, delta=0.01)
    assert path.stat().st_size > 0


def test_dp_bound_of_a_huge_epsilon_is_one_not_an_overflow() -> None:
    # epsilon ~ 1000 is what z = 0.3 on a 10-client cohort gives after 25 rounds.
    assert dp_tpr_bound(0.01, 1016.5, 0.01) == 1.0
    assert dp_tpr_bound(np.array([0.0, 1e-6, 0.5]), 800.0, 0.0).tolist() == [0.0, 1.0, 1.0]
