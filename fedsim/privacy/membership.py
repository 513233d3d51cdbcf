"""Empirical client-level membership inference, set against the bound that DP promises.

The attack is the loss-threshold test of Yeom et al. ("Privacy Risk in Machine Learning:
Analyzing the Connection to Overfitting", CSF 2018), the simplest instance of the membership
inference of Shokri et al. (S&P 2017), lifted to clients: a client's score is the negative mean
loss of the final global model on its shard (:func:`client_score`). Members are clients that
trained; non-members are held-out virtual clients from the same distribution. A higher score
means "member".

We report AUC and, as Carlini et al. ("Membership Inference Attacks From First Principles",
S&P 2022) argue, the TPR at a low FPR (1% and 0.1%), next to the largest TPR any test can reach
against an (epsilon, delta)-DP mechanism (Kairouz, Oh & Viswanath, "The Composition Theorem for
Differential Privacy", ICML 2015). With ``n`` non-members the FPR moves in steps of ``1/n``, so an
FPR below ``1/n`` is measured at FPR 0; the counts travel with the report for that reason. A
point a little above the bound on a finite sample is sampling noise, not proof of a violation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.report.plots import pyplot

Curve = tuple[np.ndarray, np.ndarray]
_EXP_LIMIT = 700.0  # math.exp overflows above ~709.78; the bound is 1 long before that  # (fpr, tpr), both rising from 0 to 1


def client_score(losses: np.ndarray) -> float:
    """Membership score of one client: the negative mean per-example loss on its shard."""
    losses = np.asarray(losses, dtype=np.float64)
    if losses.size == 0:
        raise ValueError("client_score: a client needs at least one example")
    return -float(np.mean(losses))


def roc_curve(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> Curve:
    """ROC of the test "member iff score >= t" over every threshold ``t``.

    Tied scores fall on the same side of every threshold, so a run of ties is one step of the
    curve: a diagonal segment when the tie mixes members and non-members. That makes the
    trapezoidal :func:`auc` count a tied pair as 1/2, as the Mann-Whitney statistic does.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``(fpr, tpr)`` at each distinct threshold, from ``(0, 0)`` (threshold above every score)
        to ``(1, 1)``, both non-decreasing.
    """
    members = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("roc_curve: needs at least one member and one non-member score")
    scores = np.concatenate([members, nonmembers])
    if np.isnan(scores).any():
        raise ValueError("roc_curve: scores contain NaN")
    is_member = np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)])
    order = np.argsort(-scores, kind="stable")
    scores, is_member = scores[order], is_member[order]
    # Last position of each run of equal scores (`!=`, not diff: inf - inf is NaN).
    run_ends = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
    true_pos = np.cumsum(is_member)[run_ends]
    false_pos = np.cumsum(1 - is_member)[run_ends]
    fpr = np.r_[0.0, false_pos / nonmembers.size]
    tpr = np.r_[0.0, true_pos / members.size]
    return fpr, tpr


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve by the trapezoidal rule; 0.5 is chance, 1.0 perfect separation."""
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Largest TPR over the curve's vertices with FPR <= ``target``.

    No interpolation: only thresholds the attacker can actually set count. Interpolating between
    vertices would describe a randomised test and report a higher TPR than any threshold reaches.
    """
    fpr, tpr = np.asarray(fpr), np.asarray(tpr)
    reachable = fpr <= target
    return float(np.max(tpr[reachable])) if reachable.any() else 0.0


def dp_tpr_bound(fpr: np.ndarray | float, epsilon: float, delta: float) -> np.ndarray | float:
    """Largest TPR at a given FPR of any membership test against an (epsilon, delta)-DP mechanism.

    Kairouz et al. (2015): every test satisfies ``FPR + e^eps * FNR >= 1 - delta`` and
    ``e^eps * FPR + FNR >= 1 - delta``, so

        ``TPR <= min(1, e^eps * FPR + delta, 1 - e^-eps * (1 - delta - FPR))``.

    The last term binds only at high FPR (or very large epsilon); at FPR <= 1% the bound is
    ``min(1, e^eps * FPR + delta)``. ``epsilon = inf`` gives 1.
    """
    x = np.asarray(fpr, dtype=np.float64)
    if math.isinf(epsilon):
        bound = np.ones_like(x)
    else:
        # e^eps overflows above eps ~ 709.8 (z = 0.3 on small cohorts gets there): cap it; the
        # capped factor times any positive FPR still exceeds 1, and 0 * factor stays 0.
        grow = math.exp(min(epsilon, _EXP_LIMIT))
        bound = np.minimum.reduce(
            [
                np.ones_like(x),
                np.where(x > 0, grow * x, 0.0) + delta,
                1 - math.exp(-epsilon) * (1 - delta - x),
            ]
        )
    return float(bound) if np.ndim(fpr) == 0 else bound


@dataclass(frozen=True)
class MembershipReport:
    """Attack strength at the end of a run, and what DP allows at the same FPRs."""

    auc: float
    tpr_at_1pct: float
    tpr_at_01pct: float
    bound_at_1pct: float  # dp_tpr_bound(0.01, epsilon, delta)
    bound_at_01pct: float  # dp_tpr_bound(0.001, epsilon, delta)
    members: int
    nonmembers: int


def membership_report(
    member_scores: np.ndarray, nonmember_scores: np.ndarray, epsilon: float, delta: float
) -> MembershipReport:
    """Summarise the attack on per-client scores (see :func:`client_score`).

    Parameters
    ----------
    member_scores, nonmember_scores : np.ndarray
        One score per client that trained / per held-out client.
    epsilon, delta : float
        The run's guarantee (``math.inf`` without DP).
    """
    fpr, tpr = roc_curve(member_scores, nonmember_scores)
    return MembershipReport(
        auc=auc(fpr, tpr),
        tpr_at_1pct=tpr_at_fpr(fpr, tpr, 0.01),
        tpr_at_01pct=tpr_at_fpr(fpr, tpr, 0.001),
        bound_at_1pct=float(dp_tpr_bound(0.01, epsilon, delta)),
        bound_at_01pct=float(dp_tpr_bound(0.001, epsilon, delta)),
        members=int(np.size(member_scores)),
        nonmembers=int(np.size(nonmember_scores)),
    )


def plot_roc(
    curves: Mapping[str, Curve],
    path: Path | str,
    epsilon: float | None = None,
    delta: float = 0.0,
    title: str = "",
) -> None:
    """Log-log ROC of each labelled curve, with chance and (if ``epsilon``) the DP bound.

    Low FPR is where membership inference matters (Carlini et al. 2022), hence log axes; points
    at FPR 0 sit on the left edge, which is half the smallest positive FPR plotted.
    """
    positive = [f[f > 0].min() for f, _ in curves.values() if np.any(f > 0)]
    floor = min(positive) / 2 if positive else 1e-3
    grid = np.logspace(math.log10(floor), 0, 200)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    for label, (fpr, tpr) in curves.items():
        ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), label=label)
    ax.plot(grid, grid, color="grey", linestyle=":", label="chance")
    if epsilon is not None:
        bound = dp_tpr_bound(grid, epsilon, delta)
        ax.plot(grid, bound, color="black", linestyle="--", label=f"DP bound (ε={epsilon:.2g})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1.05)
    ax.set_xlabel("false positive rate (non-member clients)")
    ax.set_ylabel("true positive rate (member clients)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
