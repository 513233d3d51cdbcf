"""One simulation run, from a composed Hydra config to files in the run directory.

The flow is one-way: config -> checked parts (:mod:`fedsim.run.preparation`, before Ray starts) ->
Flower/Ray (:mod:`fedsim.run.engine`) -> round records and checkpoints (:mod:`fedsim.run.state`)
-> summary, membership audit, model and plot. A resumed run starts from its checkpoint.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig

from clients.client_app import ClientEnvironment, make_client_app
from clients.training import LocalRecipe
from fedsim.run import checkpoint, engine
from fedsim.compression.error_feedback import ResidualFiles
from fedsim.config import Simulation
from fedsim.models.state import exchangeable_state, load_exchangeable_state
from fedsim.fleet.model_size import model_size
from fedsim.run.preparation import (
    Prepared,
    PreparedTeacher,
    prepare,
    prepared_teacher,
    starting_point,
)
from fedsim.report.plots import plot_accuracy
from fedsim.report.progress import RoundProgress
from fedsim.report.run_log import RoundRecord
from fedsim.report.summary import device_report, summarize, write_summary
from fedsim.run.state import RunState
from fedsim.fleet.device_simulation import DeviceSimulation, model_bytes
from fedsim.strategy.ensemble_distillation import EnsembleDistillation
from fedsim.server.evaluation import CentralEvaluator
from fedsim.server.faults import FaultPlan
from fedsim.server.rounds import RoundPlan
from fedsim.server.server_app import make_server_app
from fedsim.strategy.decode_updates import DecodeUpdates
from fedsim.strategy.virtual_clients import VirtualClients
from fedsim.updates import GRADIENT, UpdateRule


def run(
    cfg: DictConfig, out_dir: Path, *, verbose: bool = False, progress: str = "auto",
    resume: bool = False,
) -> dict[str, Any]:
    """Run the simulation ``cfg`` describes and write its outputs into ``out_dir``.

    ``resume``: continue from ``out_dir``'s checkpoint (``cfg`` must be the run's saved config).
    """
    started = time.perf_counter()
    prepared = prepare(cfg)
    settings = prepared.settings
    torch.set_num_threads(settings.backend.num_cpus or os.cpu_count() or 1)  # server evaluation

    teacher = prepared_teacher(prepared)  # None unless distillation uses one
    model, pretrain_report = starting_point(prepared, teacher)
    arrays = ArrayRecord(exchangeable_state(model))
    devices = device_simulation(prepared, model, arrays, teacher)
    restored: list[RoundRecord] = []
    if resume and (out_dir / checkpoint.CHECKPOINT_FILE).exists():
        arrays, restored = restore(prepared, checkpoint.load(out_dir))
        devices.sim_time_s = restored[-1].sim_time_s if restored else 0.0
    evaluator = CentralEvaluator(model, prepared.splits.test, settings.eval_batch_size)
    residuals = residual_files(out_dir, prepared.update, fresh=not restored)
    state = RunState(
        out_dir, prepared.strategy, prepared.privacy, arrays, settings.checkpoint_every, restored,
        on_checkpoint=residuals.prune if residuals else None,
    )
    display = RoundProgress(settings.rounds, progress)
    outcome = {"stopped": "incomplete"}  # the round loop overwrites it when it returns
    num_params = sum(int(np.prod(array.shape)) for array in arrays.values())

    def on_round(record: RoundRecord, round_arrays: ArrayRecord) -> None:
        cost = prepared.secagg.round_cost(
            sampled=record.sampled, failed=record.failed, num_params=num_params
        )
        state.on_round(replace(record, secagg=cost), round_arrays)
        display.update(record)

    plan = RoundPlan(
        rounds=settings.rounds, eval_every=settings.eval_every,
        round_timeout_s=settings.round_timeout_s, slots=settings.num_slots,
        first_round=len(restored) + 1, client_timeout_s=settings.client_timeout_s,
        min_completed=settings.min_completed,
    )
    faults = FaultPlan(prepared.faults, settings.seed, settings.client_timeout_s)
    # The device simulation decides first (a phone it drops gets no fault either).
    instructions = [devices.instructions] + ([faults] if prepared.faults.any else [])
    clients = VirtualClients(decoding(prepared, model, teacher), prepared.sampler, instructions)
    stop = threading.Event()
    server_app = make_server_app(
        clients, arrays, plan, evaluator, on_round, prepared.privacy, outcome, devices, stop
    )

    def warm_up() -> None:
        """What round 1 would otherwise wait for, done while Ray starts."""
        devices.warm_up()
        evaluator(arrays)  # the first evaluation sets up the CPU kernels for the test batches

    display.start()
    try:
        with stop_on_ctrl_c(stop):
            engine.launch(
                server_app,
                make_client_app(client_environment(prepared, out_dir, residuals, teacher)),
                settings.num_slots, settings.backend, verbose, meanwhile=warm_up,
            )
    finally:
        display.stop()
        state.write_checkpoint()  # the last finished round, whatever ended the run
        extra = {
            "stopped": outcome["stopped"],
            **prepared.privacy.final_report(),
            **prepared.secagg.report([r.secagg for r in state.records if r.secagg]),
            **update_report(prepared, len(state.records)),
            **device_report(state.records, settings.target_accuracy),
            "finetune": prepared.finetune.mode,
            "pretrain": pretrain_report,
            "distill": distill_report(prepared, teacher, model, state.records),
        }
        if residuals is not None and outcome["stopped"] in FINAL:  # can be GBs; resume needs them
            shutil.rmtree(residuals.directory, ignore_errors=True)
        summary = finish(out_dir, state.records, state.arrays, prepared, cfg, started, extra)
    return summary


# Ways a run can end after which it will not be resumed (its residuals can go).
FINAL = ("completed", "privacy_budget")


def device_simulation(
    prepared: Prepared, model: torch.nn.Module, arrays: ArrayRecord,
    teacher: PreparedTeacher | None = None,
) -> DeviceSimulation:
    """The simulated fleet's admissions and clock for this run (:mod:`fedsim.fleet.device_simulation`)."""
    settings = prepared.settings
    partition = prepared.shards.load()[1]
    on_device = teacher if prepared.distill.where == "client" else None
    return DeviceSimulation(
        fleet=prepared.fleet, availability=prepared.availability, budget=prepared.budget,
        finetune=prepared.finetune, model=model, input_shape=prepared.splits.input_shape,
        batch_size=settings.local.batch_size, epochs=settings.local.epochs,
        samples=partition.size, model_bytes=model_bytes(arrays), seed=settings.seed,
        deadline_s=settings.deadline_s, start_hour=settings.start_hour,
        needed=settings.clients_per_round if settings.overcommit > 0 else None,
        one_pass=prepared.update.kind == GRADIENT,
        teacher=on_device.model if on_device else None,
        teacher_bytes=on_device.report["bytes_fp32"] if on_device else 0,
    )


def client_environment(
    prepared: Prepared, out_dir: Path, residuals: ResidualFiles | None,
    teacher: PreparedTeacher | None = None,
) -> ClientEnvironment:
    """What every phone needs, as picklable recipes."""
    settings, local = prepared.settings, prepared.settings.local
    return ClientEnvironment(
        shards=prepared.shards,
        build_model=prepared.builder,
        recipe=LocalRecipe(
            epochs=local.epochs, batch_size=local.batch_size, lr=local.lr,
            momentum=local.momentum, weight_decay=local.weight_decay,
        ),
        seed=settings.seed,
        threads=settings.backend.client_cpus,
        scratch_dir=str(out_dir / ".fedsim"),
        update=prepared.update,
        threat=prepared.threat,
        residuals=residuals,
        teacher=teacher.on_device if teacher and prepared.distill.where == "client" else None,
        kd=prepared.distill.loss,
    )


def restore(
    prepared: Prepared, saved: checkpoint.Checkpoint
) -> tuple[ArrayRecord, list[RoundRecord]]:
    """Put a checkpoint's strategy stack and accountant in place; return its model and rounds."""
    prepared.strategy = saved.strategy
    prepared.privacy.strategy = saved.strategy
    if prepared.privacy.mechanism is not None:
        prepared.privacy.mechanism = saved.strategy  # the outermost wrapper is the mechanism
    if prepared.privacy.accountant is not None:
        prepared.privacy.accountant.step(int(saved.accountant["rounds"]))
    return saved.arrays, [RoundRecord(**r) for r in saved.records]


@contextmanager
def stop_on_ctrl_c(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C: finish cleanly (checkpoint the last finished round). Second: abort."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("fedsim: stopping; the last finished round is checkpointed (Ctrl-C again aborts)",
              file=sys.stderr)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def decoding(
    prepared: Prepared, model: torch.nn.Module, teacher: PreparedTeacher | None = None
) -> Strategy:
    """The strategy stack under VirtualClients: update decoding around the (DP-wrapped) strategy,
    with FedDF's ensemble distillation between them for ``distill.where=server_ensemble``."""
    parameters = frozenset(name for name, _ in model.named_parameters())
    strategy = prepared.strategy
    if prepared.distill.where == "server_ensemble":
        strategy = EnsembleDistillation(
            strategy, prepared.distill, prepared.builder, prepared.shards,
            teacher.proxy_logits if teacher else None, prepared.settings.seed,
        )
    return DecodeUpdates(strategy, prepared.update, parameters)


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
        "where": distill.where, "temperature": distill.temperature, "alpha": distill.alpha,
        "proxy_fraction": prepared.shards.proxy_fraction,
        "proxy_samples": len(prepared.shards.proxy_indices()),
    }
    if distill.where == "server_ensemble":
        report["ensemble"] = distill.ensemble
    if teacher is not None:
        report["teacher"] = teacher.report
    report["student"] = {
        "model": prepared.builder.model_name,
        "final_accuracy": accuracies[-1] if accuracies else None,
        **model_size(student, prepared.splits.input_shape),
    }
    return report


def residual_files(out_dir: Path, update: UpdateRule, fresh: bool) -> ResidualFiles | None:
    """The error-feedback directory under the run dir, if the run uses error feedback.

    ``fresh``: a new run (not a resumed one) starts from an empty directory.
    """
    if not update.uses_feedback:
        return None
    directory = out_dir / "residuals"
    if fresh:
        shutil.rmtree(directory, ignore_errors=True)  # a rerun in the same dir must start clean
    return ResidualFiles(str(directory))


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
    cfg: DictConfig, started: float, extra: dict[str, Any],
) -> dict[str, Any]:
    """Write summary.json, model.pt and accuracy.png for whatever rounds finished."""
    settings = prepared.settings
    summary = summarize_run(records, settings, cfg, time.perf_counter() - started, extra)
    torch.save(arrays.to_torch_state_dict(), out_dir / "model.pt")
    write_summary(out_dir / "summary.json", summary)  # before the audit: it must never cost this
    summary.update(audit_final_model(prepared, records, arrays, summary, out_dir))
    write_summary(out_dir / "summary.json", summary)
    title = f"{summary['dataset']} / {summary['model']} / {summary['strategy']} (seed {settings.seed})"
    plot_accuracy(records, out_dir / "accuracy.png", title)
    return summary
