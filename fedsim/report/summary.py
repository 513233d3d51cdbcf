"""``summary.json``: the figures of a whole run, derived only from its round records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedsim.report.run_log import RoundRecord

# summary.json's ``last_k_accuracy``: the mean of this many last evaluations, a figure one noisy
# round cannot move much (a run evaluated every round averages its last 5 rounds).
LAST_K = 5


def summarize(
    records: list[RoundRecord], *, seed: int, population: int, clients_per_round: int,
    wall_s: float, extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Final and best test accuracy, round counts and totals of a run.

    ``final_accuracy`` is the accuracy at the last evaluated round (the last round is always
    evaluated), ``best_accuracy`` the maximum over evaluated rounds, ``last_k_accuracy`` the
    mean over the last ``last_k`` evaluations (:data:`LAST_K`, fewer if fewer were made).
    ``epsilon`` and ``delta`` are ``None`` for runs without differential privacy.

    Examples
    --------
    >>> r = [RoundRecord(round=i, accuracy=a, loss=0.0, train_loss=0.0, sampled=1, completed=1,
    ...                  failed=0) for i, a in enumerate([0.1, 0.5, 0.9, 0.7, 0.8, 0.9, 0.6], 1)]
    >>> s = summarize(r, seed=0, population=1, clients_per_round=1, wall_s=0.0)
    >>> s["final_accuracy"], s["best_accuracy"], s["best_round"], round(s["last_k_accuracy"], 4)
    (0.6, 0.9, 3, 0.78)
    """
    evaluated = [r for r in records if r.accuracy is not None]
    best = max(evaluated, key=lambda r: r.accuracy, default=None)
    last = [r.accuracy for r in evaluated[-LAST_K:]]
    summary: dict[str, Any] = {
        "final_accuracy": evaluated[-1].accuracy if evaluated else None,
        "final_loss": evaluated[-1].loss if evaluated else None,
        "best_accuracy": best.accuracy if best else None,
        "best_round": best.round if best else None,
        "last_k_accuracy": sum(last) / len(last) if last else None,
        "last_k": len(last),
        "rounds": len(records),
        "seed": seed,
        "population": population,
        "clients_per_round": clients_per_round,
        "clients_completed": sum(r.completed for r in records),
        "clients_failed": sum(r.failed for r in records),
        "wall_s": wall_s,
        "epsilon": None,
        "delta": None,
    }
    summary.update(extra or {})
    return summary


def device_report(
    records: list[RoundRecord], target_accuracy: float | None = None
) -> dict[str, Any]:
    """The simulated-fleet figures of a run, summed from its round records.

    ``sim_time_s`` is the simulated time at the end of the last round (each round lasts until
    its slowest kept phone finished, or until the deadline when a phone missed it; see
    :mod:`fedsim.fleet.clock`). ``time_to_target_s`` is the simulated time at the end of the first
    evaluated round whose accuracy reached ``target_accuracy`` (``None``: never reached, or no
    target). ``tiers`` sums each tier's per-round counts.

    Examples
    --------
    >>> r = [RoundRecord(round=1, accuracy=0.5, loss=0.5, train_loss=1.0, sampled=2,
    ...                  completed=2, failed=0, sim_time_s=10.0, energy_j=3.0),
    ...      RoundRecord(round=2, accuracy=0.9, loss=0.1, train_loss=0.5, sampled=2,
    ...                  completed=1, failed=0, dropped={"oom": 1}, sim_time_s=25.0,
    ...                  energy_j=2.0)]
    >>> rep = device_report(r, target_accuracy=0.8)
    >>> rep["sim_time_s"], rep["energy_j"], rep["dropped"], rep["time_to_target_s"]
    (25.0, 5.0, {'oom': 1}, 25.0)
    """
    dropped: dict[str, int] = {}
    tiers: dict[str, dict] = {}
    for record in records:
        for reason, n in record.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + n
        for tier, entry in record.tiers.items():
            total = tiers.setdefault(tier, {"sampled": 0, "trained": {}, "dropped": {}})
            total["sampled"] += entry["sampled"]
            for part in ("trained", "dropped", "no_kd"):  # no_kd: client distillation only
                for label, n in entry.get(part, {}).items():
                    bucket = total.setdefault(part, {})
                    bucket[label] = bucket.get(label, 0) + n
    reached = next(
        (r for r in records
         if target_accuracy is not None and r.accuracy is not None and r.accuracy >= target_accuracy),
        None,
    )
    return {
        "sim_time_s": records[-1].sim_time_s if records else 0.0,
        "energy_j": sum(r.energy_j for r in records),
        "dropped": dict(sorted(dropped.items())),
        "target_accuracy": target_accuracy,
        "time_to_target_s": reached.sim_time_s if reached else None,
        "round_to_target": reached.round if reached else None,
        "tiers": {tier: tiers[tier] for tier in sorted(tiers)},
    }


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n")
