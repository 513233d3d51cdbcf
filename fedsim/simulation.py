"""One simulation run, from a composed Hydra config to files in the run directory.

The flow is one-way: config -> data and population -> model and strategy stack -> Flower/Ray
(:mod:`fedsim.engine`) -> round records -> summary, model and plot. Everything that can reject
the user's input (config types and ranges, ``_target_`` imports, dataset files, the partition,
the strategy class) runs in :func:`prepare`, before Ray starts.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy
from hydra._internal.utils import _locate  # the resolver instantiate() itself uses
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clients.client_app import ClientEnvironment, make_client_app
from clients.training import LocalRecipe
from fedsim import checkpoint, engine
from fedsim.attacks.threat import ThreatModel, assumed_malicious, build_threat
from fedsim.compression.error_feedback import ResidualFiles
from fedsim.config import (
    ConfigError,
    Faults,
    Simulation,
    locate_targets,
    parse_faults,
    parse_simulation,
    to_plain,
)
from fedsim.data.datasets import DatasetSplits
from fedsim.data.shards import ShardSource
from fedsim.errors import UserInputError
from fedsim.models.factory import ModelBuilder
from fedsim.models.state import exchangeable_state, load_exchangeable_state
from fedsim.privacy.audit import MembershipAudit, NoAudit
from fedsim.privacy.plan import PrivacyPlan
from fedsim.privacy.secagg import NoSecureAggregation, SecAggPlusCostModel
from fedsim.reporting.plots import plot_accuracy
from fedsim.reporting.progress import RoundProgress
from fedsim.reporting.run_log import RoundRecord
from fedsim.reporting.summary import summarize, write_summary
from fedsim.run_state import RunState
from fedsim.server.evaluation import CentralEvaluator
from fedsim.server.faults import FaultPlan
from fedsim.server.rounds import RoundPlan
from fedsim.server.sampler import CohortSampler
from fedsim.server.server_app import make_server_app
from fedsim.server.updates import DecodeUpdates
from fedsim.server.virtual_clients import VirtualClients
from fedsim.updates import UpdateRule

log = logging.getLogger("fedsim")


@dataclass
class Prepared:
    """Everything a run needs, built and checked before Ray starts."""

    settings: Simulation
    splits: DatasetSplits
    shards: ShardSource
    builder: ModelBuilder
    strategy: Strategy  # the user's strategy, wrapped by the privacy mechanism if any
    sampler: CohortSampler
    privacy: PrivacyPlan
    audit: MembershipAudit | NoAudit
    secagg: SecAggPlusCostModel | NoSecureAggregation
    faults: Faults
    update: UpdateRule
    threat: ThreatModel | None  # Byzantine clients, if any


def check_strategy_class(target: str) -> None:
    """Refuse a ``_target_`` class that is not a Strategy, or lacks a required method.

    Checked on the class, before its constructor runs, so the message names what is wrong
    rather than whatever the constructor would trip over.
    """
    cls = _locate(target)
    if not inspect.isclass(cls):
        return  # a factory function: its result is checked after instantiation
    if not issubclass(cls, Strategy):
        raise ConfigError(
            f"strategy._target_: {target!r} is not a flwr.serverapp.strategy.Strategy "
            f"subclass (its bases: {', '.join(b.__name__ for b in cls.__mro__[1:-1]) or 'none'})"
        )
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise ConfigError(
            f"strategy._target_: {target!r} lacks required method(s) {', '.join(missing)} "
            f"(a Strategy implements {', '.join(sorted(Strategy.__abstractmethods__))})"
        )


def with_assumed_malicious(node: DictConfig, threat: ThreatModel, cohort: int) -> DictConfig:
    """``node`` with ``num_malicious_nodes: null`` (Krum, MultiKrum, Bulyan) filled in.

    The assumption is the attack's expected count per cohort (:func:`assumed_malicious`);
    an explicit number in the config is kept.
    """
    if "num_malicious_nodes" not in node or node.num_malicious_nodes is not None:
        return node
    bulyan = str(node.get("_target_", "")).rsplit(".", 1)[-1] == "Bulyan"
    filled = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    filled.num_malicious_nodes = assumed_malicious(threat.fraction, cohort, bulyan)
    return filled


def build_update(node: DictConfig) -> UpdateRule:
    """Instantiate the ``update`` node (with its ``compression`` codec)."""
    try:
        rule = instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserInputError):
            raise err.__cause__ from None
        raise ConfigError(f"update: {str(err.__cause__ or err).splitlines()[0]}") from None
    if not isinstance(rule, UpdateRule):
        raise ConfigError(f"update._target_: {node.get('_target_')!r} is not an UpdateRule")
    return rule


def build_strategy(node: DictConfig) -> Strategy:
    """Instantiate the user's strategy; a one-line ConfigError if it is not a usable one."""
    target = node.get("_target_")
    check_strategy_class(target)
    try:
        strategy = instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__ or err
        detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ConfigError(f"strategy: cannot build {target!r}: {detail}") from None
    if not isinstance(strategy, Strategy):
        raise ConfigError(
            f"strategy._target_: {target!r} is not a flwr.serverapp.strategy.Strategy "
            f"(got {type(strategy).__name__})"
        )
    return strategy


def build_privacy(
    node: DictConfig, strategy: Strategy, settings: Simulation, sampler: CohortSampler
) -> PrivacyPlan:
    """Instantiate the ``privacy`` option and attach it to ``strategy``."""
    mechanism = instantiate_option("privacy", node)
    return mechanism.attach(
        strategy, population=settings.population, cohort=settings.clients_per_round,
        sampling=settings.sampling, seed=settings.seed, rounds=settings.rounds, sampler=sampler,
    )


def instantiate_option(group: str, node: DictConfig) -> Any:
    """Instantiate a config group's option; its own one-line errors pass through."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserInputError):
            raise err.__cause__ from None
        raise ConfigError(f"{group}: {str(err.__cause__ or err).splitlines()[0]}") from None


def refuse_batch_statistics(builder: ModelBuilder, privacy: PrivacyPlan) -> None:
    """DP covers the exchanged update; BatchNorm's running statistics would be noised into
    nonsense (a negative variance) or would have to travel unprotected, so DP runs need
    ``norm=group`` or ``norm=none`` (the DP options select ``group`` by default)."""
    if privacy.accountant is None:
        return
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in builder().modules()):
        raise ConfigError(
            f"norm: privacy={privacy.report.get('privacy')} cannot protect BatchNorm running "
            "statistics; use norm=group or norm=none"
        )


def prepare(cfg: DictConfig) -> Prepared:
    """Validate ``cfg`` and build data, population, model recipe and strategy."""
    settings = parse_simulation(cfg)
    locate_targets(cfg)
    audit = instantiate_option("audit", cfg.audit)
    # Held-out audit clients get shards of the same partition but are never sampled.
    shards = ShardSource.from_config(
        to_plain(cfg.dataset), to_plain(cfg.partition),
        settings.population + audit.holdout_clients, settings.seed,
    )
    splits, _ = shards.load()  # data-file and partition errors surface here
    builder = ModelBuilder.from_config(
        to_plain(cfg.model), to_plain(cfg.norm), splits.input_shape, splits.num_classes
    )
    sampler = CohortSampler(
        settings.population, settings.clients_per_round, settings.seed, settings.sampling
    )
    update = build_update(cfg["update"])  # not cfg.update: DictConfig.update is a method
    threat = build_threat(
        to_plain(cfg.attack), settings.population, settings.seed, splits.num_classes
    )
    strategy = build_strategy(
        with_assumed_malicious(cfg.strategy, threat, settings.clients_per_round)
    )
    privacy = build_privacy(cfg.privacy, strategy, settings, sampler)
    refuse_batch_statistics(builder, privacy)
    secagg = instantiate_option("secagg", cfg.secagg)
    secagg.check(privacy.strategy)
    faults = parse_faults(cfg)
    if faults.slow_client_rate and settings.client_timeout_s is None:
        raise ConfigError("faults.slow_client_rate: needs simulation.client_timeout_s to overrun")
    return Prepared(
        settings, splits, shards, builder, privacy.strategy, sampler, privacy, audit, secagg,
        faults, update, threat,
    )


def initial_model(prepared: Prepared) -> torch.nn.Module:
    """The seeded initial global model (the server's initialisation is part of the seed)."""
    torch.manual_seed(prepared.settings.seed)
    return prepared.builder()


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

    model = initial_model(prepared)
    arrays = ArrayRecord(exchangeable_state(model))
    restored: list[RoundRecord] = []
    if resume and (out_dir / checkpoint.CHECKPOINT_FILE).exists():
        arrays, restored = restore(prepared, checkpoint.load(out_dir))
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
    clients = VirtualClients(
        decoding(prepared, model), prepared.sampler, faults if prepared.faults.any else None
    )
    stop = threading.Event()
    server_app = make_server_app(
        clients, arrays, plan, evaluator, on_round, prepared.privacy, outcome, stop
    )
    display.start()
    try:
        with stop_on_ctrl_c(stop):
            engine.launch(
                server_app, make_client_app(client_environment(prepared, out_dir, residuals)),
                settings.num_slots, settings.backend, verbose,
            )
    finally:
        display.stop()
        state.write_checkpoint()  # the last finished round, whatever ended the run
        extra = {
            "stopped": outcome["stopped"],
            **prepared.privacy.final_report(),
            **prepared.secagg.report([r.secagg for r in state.records if r.secagg]),
            **update_report(prepared, len(state.records)),
        }
        if residuals is not None and outcome["stopped"] in FINAL:  # can be GBs; resume needs them
            shutil.rmtree(residuals.directory, ignore_errors=True)
        summary = finish(out_dir, state.records, state.arrays, prepared, cfg, started, extra)
    return summary


# Ways a run can end after which it will not be resumed (its residuals can go).
FINAL = ("completed", "privacy_budget")


def client_environment(
    prepared: Prepared, out_dir: Path, residuals: ResidualFiles | None
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


def decoding(prepared: Prepared, model: torch.nn.Module) -> Strategy:
    """The strategy stack under VirtualClients: update decoding around the (DP-wrapped) strategy."""
    parameters = frozenset(name for name, _ in model.named_parameters())
    return DecodeUpdates(prepared.strategy, prepared.update, parameters)


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
