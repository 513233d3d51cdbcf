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
from fedsim.privacy.audit import AuditInputs, Guarantee
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
    # The simulated phones' epsilon (privacy.final_report); null without DP, like epsilon.
    summary.setdefault("epsilon_simulated", None)
    return summary


def audit_final_model(
    prepared: Prepared, members: set[int], state_dict: dict[str, torch.Tensor],
    summary: dict[str, Any], out_dir: Path,
) -> dict[str, Any]:
    """Run the ``audit`` option on the final model against every client that trained.

    The audit is held to ``epsilon_simulated``, the epsilon of the mechanism the simulated
    phones went through (it is the reported ``epsilon`` unless ``privacy.noise_cohort_size``
    makes that one about a deployment); :mod:`fedsim.privacy.audit`.
    """
    model = prepared.builder()
    load_exchangeable_state(model, state_dict)
    guarantee = Guarantee(
        epsilon=summary.get("epsilon"),
        epsilon_simulated=summary.get("epsilon_simulated", summary.get("epsilon")),
        delta=summary.get("delta"),
        add_remove=prepared.privacy.add_remove,
    )
    inputs = AuditInputs(
        model=model, train=prepared.splits.train, test=prepared.splits.test,
        shard_ids=prepared.shards.indices, members=frozenset(members),
        population=prepared.settings.population, guarantee=guarantee,
        seed=prepared.settings.seed, out_dir=out_dir,
        title=f"{summary.get('privacy')} (seed {prepared.settings.seed})",
    )
    return prepared.audit.run(inputs)


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
    members = {client for record in records for client in record.clients}
    summary.update(
        audit_final_model(prepared, members, arrays.to_torch_state_dict(), summary, out_dir)
    )
    title = f"{summary['dataset']} / {summary['model']} / {summary['strategy']} (seed {settings.seed})"
    plot_accuracy(records, out_dir / "accuracy.png", title)
    if clock is not None:
        summary.update(clock.split())
    write_summary(out_dir / "summary.json", summary)
    return summary
