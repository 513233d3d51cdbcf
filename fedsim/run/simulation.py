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

from clients.client_app import ClientEnvironment, make_client_app
from clients.training import LocalRecipe
from fedsim.compression.error_feedback import ResidualFiles
from fedsim.fleet.device_simulation import DeviceSimulation
from fedsim.fleet.model_size import model_bytes
from fedsim.models.state import exchangeable_state
from fedsim.report.progress import RoundProgress
from fedsim.report.run_log import RoundRecord
from fedsim.report.summary import device_report
from fedsim.run import checkpoint, engine
from fedsim.run.preparation import Prepared, prepare
from fedsim.run.reports import distill_report, finish, update_report
from fedsim.run.starting_point import PreparedTeacher, prepared_teacher, starting_point
from fedsim.run.state import RunState
from fedsim.server.evaluation import CentralEvaluator
from fedsim.server.faults import FaultPlan
from fedsim.server.rounds import RoundPlan
from fedsim.server.server_app import make_server_app
from fedsim.strategy.stack import StrategyStack, build_stack
from fedsim.strategy.virtual_clients import Instructions
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
    saved = None  # a resumed run's checkpoint: its model, stack, accountant and rounds
    if resume and (out_dir / checkpoint.CHECKPOINT_FILE).exists():
        saved = checkpoint.load(out_dir)
    restored = [RoundRecord(**r) for r in saved.records] if saved else []
    if saved is not None:
        arrays = saved.arrays
        devices.sim_time_s = restored[-1].sim_time_s if restored else 0.0
    faults = FaultPlan(prepared.faults, settings.seed, settings.client_timeout_s)
    # The device simulation decides first (a phone it drops gets no fault either).
    instructions = [devices.instructions] + ([faults] if prepared.faults.any else [])
    stack = strategy_stack(prepared, model, instructions, teacher, saved)
    privacy = prepared.privacy.running(stack.mechanism, rounds=accounted_rounds(saved))
    evaluator = CentralEvaluator(model, prepared.splits.test, settings.eval_batch_size)
    residuals = residual_files(out_dir, prepared.update, fresh=not restored)
    state = RunState(
        out_dir, stack.checkpointed, privacy, arrays, settings.checkpoint_every, restored,
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
                make_client_app(client_environment(prepared, out_dir, residuals, teacher)),
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
    on_device = prepared.distill.where.on_device(teacher)
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
    )


def strategy_stack(
    prepared: Prepared, model: torch.nn.Module, instructions: list[Instructions],
    teacher: PreparedTeacher | None = None, saved: checkpoint.Checkpoint | None = None,
) -> StrategyStack:
    """fedsim's wrappers around the user's strategy (:func:`fedsim.strategy.stack.build_stack`).

    A resumed run continues with the checkpoint's privacy layer and user strategy, state and all.
    """
    return build_stack(
        prepared.strategy, noise=prepared.privacy.noise, distill=prepared.distill,
        update=prepared.update,
        parameter_names=frozenset(name for name, _ in model.named_parameters()),
        sampler=prepared.sampler, instructions=instructions, builder=prepared.builder,
        shards=prepared.shards, teacher_logits=teacher.proxy_logits if teacher else None,
        seed=prepared.settings.seed, restored=saved.strategy if saved else None,
    )


def accounted_rounds(saved: checkpoint.Checkpoint | None) -> int:
    """Rounds the checkpoint's privacy accountant had counted (0 for a fresh run or no DP)."""
    if saved is None or saved.accountant is None:
        return 0
    return int(saved.accountant["rounds"])


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
    directory = out_dir / "residuals"
    if fresh:
        shutil.rmtree(directory, ignore_errors=True)  # a rerun in the same dir must start clean
    return ResidualFiles(str(directory))
