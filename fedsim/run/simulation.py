"""One simulation run, from a composed Hydra config to files in the run directory.

The flow is one-way: config -> checked parts (:mod:`fedsim.run.preparation`, before Ray starts) ->
Flower/Ray (:mod:`fedsim.run.engine`) -> round records and checkpoints (:mod:`fedsim.run.state`)
-> summary, membership audit, model and plot (:mod:`fedsim.run.reports`). A resumed run starts
from its checkpoint.
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
from omegaconf import DictConfig

from clients.algorithms.base import LocalAlgorithm
from clients.client_app import ClientEnvironment, make_client_app
from clients.training import LocalRecipe
from fedsim.compression.error_feedback import ResidualFiles
from fedsim.compression.phone_files import PhoneFiles
from fedsim.fleet.device_simulation import DeviceSimulation
from fedsim.fleet.exchange import Exchange
from fedsim.fleet.model_size import model_bytes
from fedsim.models.state import exchangeable_state
from fedsim.report.progress import RoundProgress
from fedsim.report.run_log import RoundRecord
from fedsim.report.summary import device_report
from fedsim.report.timing import RunClock
from fedsim.report.trackers.base import Tracker, Tracking, tracked_run
from fedsim.run import checkpoint, engine
from fedsim.run.options import instantiate_option
from fedsim.run.preparation import Prepared, prepare
from fedsim.run.reports import distill_report, finish, update_report
from fedsim.run.starting_point import PreparedTeacher, prepared_teacher, starting_point
from fedsim.run.state import (
    RunState, check_identity, restore_strategy, restored_records, run_identity, saved_model,
)
from fedsim.server.evaluation import CentralEvaluator
from fedsim.server.faults import FaultPlan
from fedsim.server.rounds import RoundPlan
from fedsim.server.server_app import make_server_app
from fedsim.strategy.saved_state import StackState
from fedsim.strategy.stack import StrategyStack, build_stack
from fedsim.strategy.virtual_clients import Instructions
from fedsim.updates import GRADIENT, UpdateRule


def run(
    cfg: DictConfig, out_dir: Path, *, verbose: bool = False, progress: str = "auto",
    resume: bool = False, process_started: float | None = None,
) -> dict[str, Any]:
    """Run the simulation ``cfg`` describes and write its outputs into ``out_dir``.

    ``resume``: continue from ``out_dir``'s checkpoint (``cfg`` must be the run's saved config).
    ``process_started``: when the process started (``time.perf_counter()``), for the summary's
    ``startup_s`` and ``total_s`` (:mod:`fedsim.report.timing`); ``None``: now.
    """
    started = time.perf_counter()
    clock = RunClock(started if process_started is None else process_started)
    # The logger option first: a missing optional package is one line before any work.
    tracker = instantiate_option("logger", cfg.logger) if "logger" in cfg else Tracker()
    # Checked before anything heavy runs: a torn, edited, foreign or pickle file is one line.
    saved = checkpoint.load(out_dir) if resume else None  # None: no round had finished
    prepared = prepare(cfg)
    settings = prepared.settings
    torch.set_num_threads(settings.backend.num_cpus or os.cpu_count() or 1)  # server evaluation

    teacher = prepared_teacher(prepared)  # None unless distillation uses one
    model, pretrain_report = starting_point(prepared, teacher)
    arrays = ArrayRecord(exchangeable_state(model))
    exchange = prepared.exchange
    devices = device_simulation(prepared, model, arrays, teacher, exchange)
    restored = restored_records(out_dir, saved) if saved else []  # from metrics.jsonl
    if saved is not None:
        arrays = saved_model(saved, arrays, out_dir / checkpoint.CHECKPOINT_FILE)
        devices.sim_time_s = restored[-1].sim_time_s if restored else 0.0
    faults = FaultPlan(prepared.faults, settings.seed, settings.client_timeout_s)
    # The device simulation decides first (a phone it drops gets no fault either).
    instructions = [devices.instructions, prepared.learning_rate]
    instructions += [faults] if prepared.faults.any else []
    stack = strategy_stack(prepared, model, instructions, teacher, exchange)
    stack_state = StackState(stack.checkpointed)
    identity = run_identity(settings.seed, prepared.sampler, prepared.privacy)
    if saved is not None:
        check_identity(saved, identity, out_dir / checkpoint.CHECKPOINT_FILE)
        restore_strategy(saved, stack_state, out_dir / checkpoint.CHECKPOINT_FILE)
    privacy = prepared.privacy.running(stack.mechanism, rounds=accounted_rounds(saved))
    evaluator = CentralEvaluator(model, prepared.splits.test, settings.eval_batch_size)
    residuals = residual_files(out_dir, prepared.update, fresh=not restored)
    phone_state = phone_state_files(out_dir, prepared.algorithm.phone, fresh=not restored)
    stores = [store for store in (residuals, phone_state) if store is not None]

    def prune(checkpoint_round: int) -> None:
        """Per-phone files no resume from this checkpoint can need."""
        for store in stores:
            store.prune(checkpoint_round)

    state = RunState(
        out_dir, stack_state, privacy, arrays, settings.checkpoint_every, identity, restored,
        on_checkpoint=prune if stores else None,
    )
    display = RoundProgress(settings.rounds, progress)
    tracking = Tracking(tracker, tracked_run(cfg, out_dir, first_round=len(restored) + 1))
    outcome = {"stopped": "incomplete"}  # the round loop overwrites it when it returns
    num_params = masked_parameters(arrays, exchange)  # what SecAgg+ would mask

    def on_round(record: RoundRecord, round_arrays: ArrayRecord) -> None:
        cost = prepared.secagg.round_cost(
            sampled=record.sampled, failed=record.failed, num_params=num_params
        )
        clock.on_round(record)
        recorded = replace(record, secagg=cost)
        state.on_round(recorded, round_arrays)
        display.update(record)
        tracking.log_round(recorded)

    plan = RoundPlan(
        rounds=settings.rounds, eval_every=settings.eval_every,
        round_timeout_s=settings.round_timeout_s, slots=settings.num_slots,
        first_round=len(restored) + 1, client_timeout_s=settings.client_timeout_s,
        min_completed=settings.min_completed,
        stop_at=settings.target_accuracy if settings.stop_at_target else None,
        bundle=settings.bundle, partial_sums=settings.partial_sums,
    )
    stop = threading.Event()
    server_app = make_server_app(
        stack.top, arrays, plan, evaluator, on_round, privacy, outcome, devices, stop
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
                make_client_app(
                    client_environment(prepared, out_dir, residuals, teacher, phone_state)
                ),
                settings.num_slots, settings.backend, verbose, meanwhile=warm_up,
            )
    finally:
        display.stop()
        state.write_checkpoint()  # the last finished round, whatever ended the run
        extra = {
            "stopped": outcome["stopped"],
            **privacy.final_report(),
            **prepared.secagg.report([r.secagg for r in state.records if r.secagg]),
            **update_report(prepared, len(state.records)),
            **device_report(state.records, settings.target_accuracy),
            "finetune": prepared.finetune.name,
            "pretrain": pretrain_report,
            "distill": distill_report(prepared, teacher, model, state.records),
        }
        if outcome["stopped"] in FINAL:  # can be GBs; resume needs them
            for store in stores:
                shutil.rmtree(store.directory, ignore_errors=True)
        summary = finish(
            out_dir, state.records, state.arrays, prepared, cfg, started, extra, clock
        )
        tracking.close(summary)
    return summary


# Ways a run can end after which it will not be resumed (its per-phone files can go).
FINAL = ("completed", "privacy_budget", "target_reached", "diverged")


def masked_parameters(arrays: ArrayRecord, exchange: Exchange) -> int:
    """Numbers in one phone's upload as SecAgg+ would mask it: every tensor some phone of the run
    uploads (all phones mask vectors of one length), not the tensors that never leave a phone
    (a head-only run masks the classifier alone)."""
    return sum(int(np.prod(arrays[name].shape)) for name in exchange.uploaded)


def device_simulation(
    prepared: Prepared, model: torch.nn.Module, arrays: ArrayRecord,
    teacher: PreparedTeacher | None = None, exchange: Exchange | None = None,
) -> DeviceSimulation:
    """The simulated fleet's admissions and clock for this run (:mod:`fedsim.fleet.device_simulation`)."""
    settings = prepared.settings
    partition = prepared.shards.load()[1]
    on_device = prepared.distill.where.on_device(teacher)
    algorithm = prepared.algorithm.phone
    # A client algorithm's download beside the model (SCAFFOLD's c): copies of the parameters.
    extra_down = algorithm.download_copies * sum(
        p.numel() * p.element_size() for p in model.parameters()
    )
    return DeviceSimulation(
        fleet=prepared.fleet, availability=prepared.availability, budget=prepared.budget,
        finetune=prepared.finetune, model=model, input_shape=prepared.splits.input_shape,
        batch_size=settings.local.batch_size, epochs=settings.local.epochs,
        samples=partition.size,
        model_bytes=model_bytes(arrays, exchange.downloaded if exchange else None) + extra_down,
        seed=settings.seed,
        deadline_s=settings.deadline_s, start_hour=settings.start_hour,
        needed=settings.clients_per_round if settings.overcommit > 0 else None,
        one_pass=prepared.update.kind == GRADIENT,
        teacher=on_device.model if on_device else None,
        teacher_bytes=on_device.report["bytes_fp32"] if on_device else 0,
        algorithm_copies=algorithm.memory_copies,
    )


def client_environment(
    prepared: Prepared, out_dir: Path, residuals: ResidualFiles | None,
    teacher: PreparedTeacher | None = None, phone_state: PhoneFiles | None = None,
) -> ClientEnvironment:
    """What every phone needs, as picklable recipes."""
    settings, local = prepared.settings, prepared.settings.local
    phone_teacher = prepared.distill.where.on_device(teacher)  # None unless the phones distill
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
        teacher=phone_teacher.on_device if phone_teacher else None,
        kd=prepared.distill.loss,
        algorithm=prepared.algorithm.phone,
        phone_state=phone_state,
    )


def strategy_stack(
    prepared: Prepared, model: torch.nn.Module, instructions: list[Instructions],
    teacher: PreparedTeacher | None = None, exchange: Exchange | None = None,
) -> StrategyStack:
    """fedsim's wrappers around the user's strategy (:func:`fedsim.strategy.stack.build_stack`).

    Always built afresh; a resumed run then loads the checkpoint's state into its stateful
    layers (:class:`fedsim.strategy.saved_state.StackState`).
    """
    return build_stack(
        prepared.strategy, noise=prepared.privacy.noise, distill=prepared.distill,
        update=prepared.update,
        parameter_names=frozenset(name for name, _ in model.named_parameters()),
        sampler=prepared.sampler, instructions=instructions, builder=prepared.builder,
        shards=prepared.shards, teacher_logits=teacher.proxy_logits if teacher else None,
        seed=prepared.settings.seed, exchange=exchange, algorithm=prepared.algorithm.server,
    )


def accounted_rounds(saved: checkpoint.Checkpoint | None) -> int:
    """Rounds the checkpoint's privacy accountant had counted (0 for a fresh run or no DP)."""
    if saved is None or saved.content.get("accountant") is None:
        return 0
    return int(saved.content["accountant"]["rounds"])


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


def residual_files(out_dir: Path, update: UpdateRule, fresh: bool) -> ResidualFiles | None:
    """The error-feedback directory under the run dir, if the run uses error feedback.

    ``fresh``: a new run (not a resumed one) starts from an empty directory.
    """
    if not update.uses_feedback:
        return None
    return ResidualFiles(_store_directory(out_dir / "residuals", fresh))


def phone_state_files(out_dir: Path, algorithm: LocalAlgorithm, fresh: bool) -> PhoneFiles | None:
    """Where each phone's client-algorithm state lives (SCAFFOLD's ``c_i``), if it keeps any.

    Kept like error feedback's residuals: one file per participation, pruned at each
    checkpoint, ignored for the rounds a resumed run redoes. ``fresh``: a new run starts empty.
    """
    if not algorithm.stateful:
        return None
    return PhoneFiles(_store_directory(out_dir / "phone_state", fresh))


def _store_directory(directory: Path, fresh: bool) -> str:
    """A per-phone store's directory; a new run (``fresh``) starts it empty, since a rerun in
    the same run dir must not read the last run's files."""
    if fresh:
        shutil.rmtree(directory, ignore_errors=True)
    return str(directory)
