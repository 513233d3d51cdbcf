"""``summary.json``: the figures of a whole run, derived only from its round records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedsim.reporting.run_log import RoundRecord


def summarize(
    records: list[RoundRecord], *, seed: int, population: int, clients_per_round: int,
    wall_s: float, extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Final and best test accuracy, round counts and totals of a run.

    ``final_accuracy`` is the accuracy at the last evaluated round (the last round is always
    evaluated), ``best_accuracy`` the maximum over evaluated rounds. ``epsilon`` and ``delta``
    are ``None`` for runs without differential privacy.
    """
    evaluated = [r for r in records if r.accuracy is not None]
    best = max(evaluated, key=lambda r: r.accuracy, default=None)
    summary: dict[str, Any] = {
        "final_accuracy": evaluated[-1].accuracy if evaluated else None,
        "final_loss": evaluated[-1].loss if evaluated else None,
        "best_accuracy": best.accuracy if best else None,
        "best_round": best.round if best else None,
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


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n")
