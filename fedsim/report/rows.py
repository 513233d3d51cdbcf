"""A sweep's settings as rows: each summary.json figure as mean and sample std over seeds.

One :class:`Row` per setting (:mod:`fedsim.report.sweep`). Every figure in :data:`METRICS`
that the setting's jobs report becomes a :class:`Stat` over the seeds that report it; an
audit's confidence intervals (``<figure>_ci: [lo, hi]``) are averaged bound by bound. Nothing
here reads a file or draws: the rows are the single source of the CSV, the markdown table and
the plot (:mod:`fedsim.report.table`, :mod:`fedsim.report.tradeoff_plot`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.report.deployment import PrivacyDeployment, deployment_of
from fedsim.report.sweep import Job, common_overrides, varying_label

# summary.json figures averaged over seeds, in table order. ``epsilon_simulated`` is the epsilon
# of the mechanism the simulated phones got; without ``noise_cohort_size`` it is ``epsilon``.
METRICS = (
    "final_accuracy", "last_k_accuracy", "best_accuracy", "epsilon", "epsilon_simulated",
    "mia_auc", "mia_tpr_at_fpr_0.01", "sim_time_s", "time_to_target_s", "bytes_up",
    "bytes_down", "energy_j", "rounds", "wall_s",
)
# Figures whose audit may report a confidence interval as ``<figure>_ci``.
INTERVALS = ("mia_auc", "mia_tpr_at_fpr_0.01")


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of ``n`` seeds."""

    mean: float
    std: float
    n: int


def mean_std(values: list[float]) -> Stat:
    """:class:`Stat` of ``values``; an infinite value (ε of DP without noise) makes it ∞ ± 0.

    >>> mean_std([0.5, 0.7, 0.6])
    Stat(mean=0.6, std=0.09999999999999998, n=3)
    >>> mean_std([math.inf, math.inf]), mean_std([2.0])
    (Stat(mean=inf, std=0.0, n=2), Stat(mean=2.0, std=0.0, n=1))
    """
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        return Stat(math.inf, 0.0 if np.isinf(array).all() else math.nan, array.size)
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return Stat(float(array.mean()), std, int(array.size))


@dataclass(frozen=True)
class Row:
    """One setting of a sweep, aggregated over its seeds."""

    setting: tuple[str, ...]  # its result-relevant overrides, without the seed
    label: str  # the overrides that set it apart from the sweep's other settings
    seeds: tuple[int | None, ...]
    privacy: str
    noise_multiplier: float | None
    delta: float | None
    deployment: PrivacyDeployment | None  # None: no DP
    stats: Mapping[str, Stat]  # METRICS that at least one seed reports
    intervals: Mapping[str, tuple[float, float]]  # INTERVALS' CIs, bounds averaged over seeds
    audit: str  # example | membership | none ("" when the summary does not say)
    last_k: int | None  # evaluations in last_k_accuracy (the fewest over seeds)
    order: tuple  # the first job's place in the sweep

    @property
    def epsilon(self) -> float | None:
        """Mean epsilon over seeds: ∞ for DP without noise, ``None`` without DP."""
        if self.deployment is None:
            return None
        stat = self.stats.get("epsilon")
        return math.inf if stat is None else stat.mean

    def stat(self, key: str) -> Stat | None:
        return self.stats.get(key)


def figure(summary: dict[str, Any], key: str) -> float | None:
    """A summary's value of ``key`` as a float, filling in what older summaries leave out.

    >>> figure({"epsilon": 2.0, "noise_cohort_size": None}, "epsilon_simulated")
    2.0
    >>> figure({"privacy": "central_dp", "epsilon": None}, "epsilon")
    inf
    """
    borrowed = summary.get("noise_cohort_size") is not None
    if key == "epsilon_simulated" and summary.get(key) is None and not borrowed:
        key = "epsilon"  # not reported (an older summary): no borrowed noise, so the same ε
    value = summary.get(key)
    if value is None and key == "epsilon" and summary.get("privacy", "none") != "none":
        return math.inf  # a DP mechanism that never added noise
    return None if value is None else float(value)


def interval(summaries: list[dict[str, Any]], key: str) -> tuple[float, float] | None:
    """The mean lower and upper bound of ``<key>_ci`` over the summaries that report one."""
    bounds = [s[f"{key}_ci"] for s in summaries if s.get(f"{key}_ci") is not None]
    if not bounds:
        return None
    lows, highs = zip(*bounds)
    return float(np.mean(lows)), float(np.mean(highs))


def make_row(jobs: list[Job], common: tuple[str, ...]) -> Row:
    """The row of one setting's jobs."""
    summaries = [job.summary for job in jobs]
    first = summaries[0]
    stats = {}
    for key in METRICS:
        values = [v for v in (figure(s, key) for s in summaries) if v is not None]
        if values:
            stats[key] = mean_std(values)
    intervals = {k: ci for k in INTERVALS if (ci := interval(summaries, k)) is not None}
    last_k = [s["last_k"] for s in summaries if s.get("last_k") is not None]
    return Row(
        setting=jobs[0].setting,
        label=varying_label(jobs[0].setting, common),
        seeds=tuple(job.seed for job in jobs),
        privacy=first.get("privacy", "none"),
        noise_multiplier=first.get("noise_multiplier"),
        delta=first.get("delta"),
        deployment=deployment_of(first),
        stats=stats,
        intervals=intervals,
        audit=first.get("audit", ""),
        last_k=min(last_k) if last_k else None,
        order=jobs[0].order,
    )


def row_order(row: Row) -> tuple:
    """No DP first, then DP without noise (ε = ∞), then each deployment from the largest ε to
    the smallest; settings otherwise keep the sweep's order."""
    epsilon = row.epsilon
    kind = 0 if epsilon is None else 1 if math.isinf(epsilon) else 2
    note = row.deployment.note if row.deployment is not None else ""
    return kind, note if kind == 2 else "", -(epsilon or 0.0) if kind == 2 else 0.0, row.order


def aggregate(jobs: list[Job]) -> list[Row]:
    """One :class:`Row` per setting of ``jobs``, in :func:`row_order`."""
    common = common_overrides(job.setting for job in jobs)
    by_setting: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        by_setting.setdefault(job.setting, []).append(job)
    return sorted((make_row(group, common) for group in by_setting.values()), key=row_order)
