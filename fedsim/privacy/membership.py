"""Empirical membership inference, set against the bound that DP promises.

The attack is the loss-threshold test of Yeom et al. ("Privacy Risk in Machine Learning:
Analyzing the Connection to Overfitting", CSF 2018), the simplest instance of the membership
inference of Shokri et al. (S&P 2017). A score is the negative loss of the final global model:
on one example (the example-level audit) or averaged over a client's shard (:func:`client_score`,
the client-level audit). A higher score means "member". The two audits that use it are
:mod:`fedsim.privacy.audit`'s.

We report AUC and, as Carlini et al. ("Membership Inference Attacks From First Principles",
S&P 2022) argue, the TPR at a low FPR (1% and 0.1%), next to the largest TPR any test can reach
against an (epsilon, delta)-DP mechanism (Kairouz, Oh & Viswanath, "The Composition Theorem for
Differential Privacy", ICML 2015). With ``n`` non-members the FPR moves in steps of ``1/n``: an
FPR below ``1/n`` cannot be measured (the only threshold below it is FPR 0), so its TPR is
reported as None, not read at FPR 0 (:func:`resolvable`). Every figure carries a bootstrap
interval (:mod:`fedsim.privacy.bootstrap`); a point estimate a little above the bound whose
interval still reaches below it is sampling noise, not proof of a violation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.privacy.bootstrap import CONFIDENCE, RESAMPLES, bootstrap_intervals
from fedsim.report.plots import pyplot

Curve = tuple[np.ndarray, np.ndarray]  # (fpr, tpr), both rising from 0 to 1
_EXP_LIMIT = 700.0  # math.exp overflows above ~709.78; the bound is 1 long before that
LOW_FPRS = (0.01, 0.001)  # the FPRs the summary reports TPR at (Carlini et al. 2022)


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


def resolvable(fpr: float, nonmembers: int) -> bool:
    """Whether a TPR at ``fpr`` can be measured on ``nonmembers`` scores: ``fpr >= 1/n``.

    Below ``1/n`` the only threshold with FPR <= ``fpr`` is the one that lets no non-member
    through, so the "TPR at ``fpr``" would be the TPR at FPR 0, a different figure.
    """
    return fpr * nonmembers >= 1 - 1e-9  # 0.01 * 100 is 1.0000000000000002 or 0.999...


def group_guarantee(epsilon: float, delta: float, group: int) -> tuple[float, float]:
    """(epsilon, delta) for datasets ``group`` neighbouring steps apart (group privacy).

    Chaining ``P(D_0) <= e^eps P(D_1) + delta`` over ``k`` steps gives ``k * eps`` and
    ``delta * (1 + e^eps + ... + e^((k-1) eps))`` (Dwork & Roth 2014, Thm. 2.2 and its
    approximate-DP form). Delta is capped at 1, where it says nothing.
    """
    if group < 1:
        raise ValueError(f"group_guarantee: group must be >= 1, got {group}")
    if math.isinf(epsilon):
        return math.inf, min(1.0, delta)  # the bound is 1 whatever delta is
    growth = sum(math.exp(min(i * epsilon, _EXP_LIMIT)) for i in range(group))
    return group * epsilon, min(1.0, delta * growth)


@dataclass(frozen=True)
class OperatingPoint:
    """The attack at one FPR, and what DP allows there."""

    fpr: float
    tpr: float | None  # None: not resolvable with this many non-members
    tpr_ci: tuple[float, float] | None
    bound: float  # dp_tpr_bound(fpr, epsilon, delta)


@dataclass(frozen=True)
class MembershipReport:
    """Attack strength at the end of a run, its intervals, and the DP bound it is held to."""

    auc: float
    auc_ci: tuple[float, float]
    points: tuple[OperatingPoint, ...]
    members: int
    nonmembers: int
    epsilon: float  # of the bound (math.inf without DP)
    delta: float

    def within_bound(self) -> bool | None:
        """Does every resolvable TPR's interval reach down to its bound? (None: none resolvable)"""
        checked = [p for p in self.points if p.tpr_ci is not None]
        if not checked:
            return None
        return all(p.tpr_ci[0] <= p.bound for p in checked)

    def fields(self) -> dict[str, Any]:
        """The ``mia_*`` fields of ``summary.json``."""
        fields: dict[str, Any] = {"mia_auc": self.auc, "mia_auc_ci": list(self.auc_ci)}
        for p in self.points:
            key = f"fpr_{p.fpr:g}"
            fields[f"mia_tpr_at_{key}"] = p.tpr
            fields[f"mia_tpr_at_{key}_ci"] = None if p.tpr_ci is None else list(p.tpr_ci)
            fields[f"mia_tpr_bound_at_{key}"] = p.bound
        return {
            **fields,
            "mia_min_resolvable_fpr": 1 / self.nonmembers,
            "mia_within_bound": self.within_bound(),
            "mia_bound_epsilon": None if math.isinf(self.epsilon) else self.epsilon,
            "mia_bound_delta": self.delta,
            "mia_members": self.members,
            "mia_nonmembers": self.nonmembers,
        }


def membership_report(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    epsilon: float,
    delta: float,
    fprs: Sequence[float] = LOW_FPRS,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> MembershipReport:
    """Summarise the attack on two score samples, with bootstrap intervals.

    Parameters
    ----------
    member_scores, nonmember_scores : np.ndarray
        One score per member / non-member (example or client).
    epsilon, delta : float
        The guarantee the audited model is held to (``math.inf`` without DP).
    fprs : Sequence[float]
        FPRs to report TPR at; those below ``1 / len(nonmember_scores)`` get None.
    resamples, confidence, seed : int, float, int
        Of :func:`fedsim.privacy.bootstrap.bootstrap_intervals`.
    """
    nonmembers = int(np.size(nonmember_scores))
    measured = [f for f in fprs if resolvable(f, nonmembers)]

    def statistic(members: np.ndarray, others: np.ndarray) -> np.ndarray:
        fpr, tpr = roc_curve(members, others)
        return np.array([auc(fpr, tpr), *(tpr_at_fpr(fpr, tpr, f) for f in measured)])

    point = statistic(np.asarray(member_scores), np.asarray(nonmember_scores))
    intervals = bootstrap_intervals(
        member_scores, nonmember_scores, statistic, resamples, confidence, seed
    )
    by_fpr = dict(zip(measured, zip(point[1:], intervals[1:], strict=True), strict=True))
    points = tuple(
        OperatingPoint(
            fpr=f,
            tpr=float(by_fpr[f][0]) if f in by_fpr else None,
            tpr_ci=tuple(map(float, by_fpr[f][1])) if f in by_fpr else None,
            bound=float(dp_tpr_bound(f, epsilon, delta)),
        )
        for f in fprs
    )
    return MembershipReport(
        auc=float(point[0]), auc_ci=(float(intervals[0][0]), float(intervals[0][1])),
        points=points, members=int(np.size(member_scores)), nonmembers=nonmembers,
        epsilon=epsilon, delta=delta,
    )


def plot_roc(
    curves: Mapping[str, Curve],
    path: Path | str,
    bound: tuple[float, float] | None = None,
    bound_label: str = "DP bound",
    title: str = "",
    unit: str = "clients",
) -> None:
    """Log-log ROC of each labelled curve, with chance and (if given) the DP bound.

    ``bound`` is the ``(epsilon, delta)`` the curve is held to; ``bound_label`` names it in the
    legend (whose epsilon it is). ``unit`` names what was scored (``clients`` or ``examples``).
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
    if bound is not None:
        ax.plot(grid, dp_tpr_bound(grid, *bound), color="black", linestyle="--", label=bound_label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1.05)
    ax.set_xlabel(f"false positive rate (non-member {unit})")
    ax.set_ylabel(f"true positive rate (member {unit})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
