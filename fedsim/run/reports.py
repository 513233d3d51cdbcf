"""What a run writes when it ends: ``summary.json``, ``model.pt``, ``accuracy.png`` and the audit.

The figures come from the round records (:mod:`fedsim.report.summary`) and from the run's
prepared parts; nothing here changes a result, so a run that ended early reports the rounds
it finished.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord
from omegaconf import DictConfig

from fedsim.config import Simulation
from fedsim.fleet.model_size import model_size
from fedsim.models.state import load_exchangeable_state
from fedsim.report.plots import plot_accuracy
from fedsim.report.run_log import RoundRecord
from fedsim.report.summary import summarize, write_summary
from fedsim.report.timing import RunClock
from fedsim.run.preparation import Prepared
from fedsim.run.starting_point import PreparedTeacher


def distill_report(
    prepared: Prepared, teacher: PreparedTeacher | None, student: torch.nn.Module,
    records: list[RoundRecord],
) -> dict[str, Any]:
    """summary.json's ``distill``: where, the loss, and teacher vs student accuracy and size."""
    distill = prepared.distill
    if not distill.enabled:
        return {"where": "none"}
    accuracies = [r.accuracy for r in records if r.accuracy is not None]
    report: dict[str, Any] = {
        "where": distill.where.name, "temperature": distill.temperature, "alpha": distill.alpha,
        "proxy_fraction": prepared.shards.proxy_fraction,
        "proxy_samples": len(prepared.shards.proxy_indices()),
        **distill.where.report(distill),  # server_ensemble: its targets
    }
    if teacher is not None:
        report["teacher"] = teacher.report
    report["student"] = {
        "model": prepared.builder.model_name,
        "final_accuracy": accuracies[-1] if accuracies else None,
        **model_size(student, prepared.splits.input_shape),
    }
    return report


def update_report(prepared: Prepared, rounds_run: int) -> dict[str, Any]:
    """summary.json fields of the update rule and the attack."""
    report = {
        "update_kind": prepared.update.kind,
        "compression": type(prepared.update.compression).__name__,
    }
    if prepared.threat is not None:
        cohorts = [prepared.sampler.cohort(r) for r in range(1, rounds_run + 1)]
        report.update(prepared.threat.report(cohorts))
    return report


def summarize_run(
    records: list[RoundRecord], settings: Simulation, cfg: DictConfig, wall_s: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    summary = summarize(
        records, seed=settings.seed, population=settings.population,
        clients_per_round=settings.clients_per_round, wall_s=wall_s,
        extra={
            "dataset": cfg.dataset._target_.rsplit(".", 1)[-1],
            "model": cfg.model._target_.rsplit(".", 1)[-1],
            "strategy": cfg.strategy._target_.rsplit(".", 1)[-1],
            "sampling": settings.sampling,
            "bytes_up": sum(r.bytes_up for r in records),
            "bytes_down": sum(r.bytes_down for r in records),
            **extra,
        },
    )
    if summary.get("privacy", "none") != "none":
        summary["epsilon"] = records[-1].epsilon if records else 0.0
    return summary


def audit_final_model(
    prepared: Prepared, records: list[RoundRecord], arrays: ArrayRecord,
    summary: dict[str, Any], out_dir: Path,
) -> dict[str, Any]:
    """Run the ``audit`` option on the final model against every client that trained."""
    model = prepared.builder()
    load_exchangeable_state(model, arrays.to_torch_state_dict())
    members = {client for record in records for client in record.clients}
    return prepared.audit.run(
        model=model, shards=prepared.shards, members=members,
        population=prepared.settings.population, epsilon=summary.get("epsilon"),
        delta=summary.get("delta"), out_dir=out_dir,
        title=f"client-level membership inference, {summary.get('privacy')} "
        f"(seed {prepared.settings.seed})",
    )


def finish(
    out_dir: Path, records: list[RoundRecord], arrays: ArrayRecord, prepared: Prepared,
    cfg: DictConfig, started: float, extra: dict[str, Any], clock: RunClock | None = None,
) -> dict[str, Any]:
    """Write summary.json, model.pt and accuracy.png for whatever rounds finished.

    ``wall_s`` runs from ``started`` to the summary, before the audit; ``clock``'s split
    (``startup_s``, ``rounds_s``, ``report_s``, ``total_s``: :mod:`fedsim.report.timing`) covers
    the whole process up to the final summary.json, audit and plot included.
    """
    settings = prepared.settings
    summary = summarize_run(records, settings, cfg, time.perf_counter() - started, extra)
    torch.save(arrays.to_torch_state_dict(), out_dir / "model.pt")
    write_summary(out_dir / "summary.json", summary)  # before the audit: it must never cost this
    summary.update(audit_final_model(prepared, records, arrays, summary, out_dir))
    title = f"{summary['dataset']} / {summary['model']} / {summary['strategy']} (seed {settings.seed})"
    plot_accuracy(records, out_dir / "accuracy.png", title)
    if clock is not None:
        summary.update(clock.split())
    write_summary(out_dir / "summary.json", summary)
    return summary
