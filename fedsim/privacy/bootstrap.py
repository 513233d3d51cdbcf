"""Bootstrap confidence intervals for the membership audit's figures.

An audit's AUC and low-FPR TPR come from a few hundred scores; without an interval a reader
cannot tell a real gap between two runs (or between a run and its DP bound) from sampling noise.
This module gives the percentile bootstrap (Efron & Tibshirani, "An Introduction to the
Bootstrap", 1993, Ch. 13) of any statistic of the two score samples, resampling members and
non-members *separately* (a stratified bootstrap): the two counts stay fixed, so an FPR that is
resolvable on the sample is resolvable on every resample. Seeded, so a run's intervals are
reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

RESAMPLES = 1000
CONFIDENCE = 0.95

Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (members, non-members) -> (k,)


def bootstrap_intervals(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    statistic: Statistic,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> np.ndarray:
    """Percentile intervals of each of ``statistic``'s ``k`` outputs.

    Parameters
    ----------
    member_scores, nonmember_scores : np.ndarray
        The two samples; each resample draws as many of each, with replacement.
    statistic : Callable
        Maps ``(members, nonmembers)`` to a 1-D array of ``k`` figures (e.g. AUC and TPRs).
    resamples : int
        Bootstrap replicates ``B``.
    confidence : float
        Coverage in ``(0, 1)``; the interval runs from the ``(1 - c) / 2`` to the ``(1 + c) / 2``
        quantile of the replicates.
    seed : int
        Seed of the resampling.

    Returns
    -------
    np.ndarray
        ``(k, 2)``: ``[low, high]`` per figure.
    """
    members = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("bootstrap_intervals: needs at least one member and one non-member")
    if resamples < 1:
        raise ValueError(f"bootstrap_intervals: resamples must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap_intervals: confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    replicates = np.array(
        [
            statistic(
                members[rng.integers(0, members.size, members.size)],
                nonmembers[rng.integers(0, nonmembers.size, nonmembers.size)],
            )
            for _ in range(resamples)
        ],
        dtype=np.float64,
    ).reshape(resamples, -1)
    tail = (1 - confidence) / 2
    return np.quantile(replicates, [tail, 1 - tail], axis=0).T
