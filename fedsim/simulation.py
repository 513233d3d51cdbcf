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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy
from hydra._internal.utils import _locate  # the resolver instantiate() itself uses
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clients.client_app import ClientEnvironment, make_client_app
from clients.training import LocalRecipe
from fedsim import engine
from fedsim.attacks.threat import ThreatModel, assumed_malicious, build_threat
from fedsim.compression.error_feedback import ResidualFiles
from fedsim.config import (
    ConfigError,
    Simulation,
    locate_targets,
    parse_simulation,
    to_plain,
)
from fedsim.data.datasets import DatasetSplits
from fedsim.data.shards import ShardSource
from fedsim.models.factory import ModelBuilder
from fedsim.errors import UserInputError
from fedsim.models.state import exchangeable_state
from fedsim.privacy.mechanisms import PrivacyPlan
from fedsim.reporting.plots import plot_accuracy
from fedsim.reporting.progress import RoundProgress
from fedsim.reporting.run_log import RoundRecord, RunLog
from fedsim.reporting.summary import summarize, write_summary
from fedsim.server.evaluation import CentralEvaluator
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
    update: UpdateRule | None = None  # what clients upload (None only in hand-built tests)
    threat: ThreatModel | None = None  # Byzantine clients, if any


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


def build_privacy(node: DictConfig, strategy: Strategy, settings: Simulation) -> PrivacyPlan:
    """Instantiate the ``privacy`` option and attach it to ``strategy``."""
    try:
        mechanism = instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserInputError):
            raise err.__cause__ from None
        raise ConfigError(f"privacy: {str(err.__cause__ or err).splitlines()[0]}") from None
    return mechanism.attach(
        strategy, population=settings.population, cohort=settings.clients_per_round,
        sampling=settings.sampling, seed=settings.seed, rounds=settings.rounds,
    )


def prepare(cfg: DictConfig) -> Prepared:
    """Validate ``cfg`` and build data, population, model recipe and strategy."""
    settings = parse_simulation(cfg)
    locate_targets(cfg)
    shards = ShardSource.from_config(
        to_plain(cfg.dataset), to_plain(cfg.partition), settings.population, settings.seed
    )
    splits, _ = shards.load()  # data-file and partition errors surface here
    builder = ModelBuilder.from_config(
        to_plain(cfg.model), to_plain(cfg.norm), splits.input_shape, splits.num_classes
    )
    update = build_update(cfg["update"])  # not cfg.update: DictConfig.update is a method
    threat = build_threat(
        to_plain(cfg.attack), settings.population, settings.seed, splits.num_classes
    )
    strategy = build_strategy(
        with_assumed_malicious(cfg.strategy, threat, settings.clients_per_round)
    )
    privacy = build_privacy(cfg.privacy, strategy, settings)
    sampler = CohortSampler(
        settings.population, settings.clients_per_round, settings.seed, settings.sampling
    )
    return Prepared(
        settings, splits, shards, builder, privacy.strategy, sampler, privacy, update, threat
    )


def initial_model(prepared: Prepared) -> torch.nn.Module:
    """The seeded initial global model (the server's initialisation is part of the seed)."""
    torch.manual_seed(prepared.settings.seed)
    return prepared.builder()


def run(cfg: DictConfig, out_dir: Path, *, verbose: bool = False, progress: str = "auto") -> dict[str, Any]:
    """Run the simulation ``cfg`` describes and write its outputs into ``out_dir``."""
    started = time.perf_counter()
    prepared = prepare(cfg)
    settings = prepared.settings
    torch.set_num_threads(settings.backend.num_cpus or os.cpu_count() or 1)  # server evaluation

    model = initial_model(prepared)
    arrays = ArrayRecord(exchangeable_state(model))
    evaluator = CentralEvaluator(model, prepared.splits.test, settings.eval_batch_size)
    run_log = RunLog(out_dir / "metrics.jsonl")
    display = RoundProgress(settings.rounds, progress)
    latest = {"arrays": arrays}
    outcome = {"stopped": "incomplete"}  # the round loop overwrites it when it returns

    def on_round(record: RoundRecord, round_arrays: ArrayRecord) -> None:
        run_log.append(record)
        latest["arrays"] = round_arrays
        display.update(record)

    local = settings.local
    env = ClientEnvironment(
        shards=prepared.shards,
        build_model=prepared.builder,
        recipe=LocalRecipe(
            epochs=local.epochs, batch_size=local.batch_size, lr=local.lr,
            momentum=local.momentum, weight_decay=local.weight_decay,
        ),
        seed=settings.seed,
        threads=settings.backend.client_cpus,
        update=prepared.update,
        threat=prepared.threat,
        residuals=residual_files(out_dir, prepared.update),
    )
    plan = RoundPlan(
        rounds=settings.rounds, eval_every=settings.eval_every,
        round_timeout_s=settings.round_timeout_s, slots=settings.num_slots,
    )
    server_app = make_server_app(
        VirtualClients(decoding(prepared, model), prepared.sampler), arrays, plan, evaluator,
        on_round, prepared.privacy, outcome,
    )
    display.start()
    try:
        engine.launch(server_app, make_client_app(env), settings.num_slots, settings.backend, verbose)
    finally:
        display.stop()
        extra = {
            "stopped": outcome["stopped"], **prepared.privacy.final_report(),
            **update_report(prepared, len(run_log.records)),
        }
        if env.residuals is not None:  # only needed within the run; can be GBs
            shutil.rmtree(env.residuals.directory, ignore_errors=True)
        summary = finish(out_dir, run_log.records, latest["arrays"], settings, cfg, started, extra)
    return summary


def decoding(prepared: Prepared, model: torch.nn.Module) -> Strategy:
    """The strategy stack under VirtualClients: update decoding around the (DP-wrapped) strategy."""
    parameters = frozenset(name for name, _ in model.named_parameters())
    return DecodeUpdates(prepared.strategy, prepared.update, parameters)


def residual_files(out_dir: Path, update: UpdateRule) -> ResidualFiles | None:
    """A fresh error-feedback directory under the run dir, if the run uses error feedback."""
    if not update.uses_feedback:
        return None
    directory = out_dir / "residuals"
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
    if summary.get("privacy") == "central_dp":
        summary["epsilon"] = records[-1].epsilon if records else 0.0
        summary["delta"] = extra.get("delta")
    return summary


def finish(
    out_dir: Path, records: list[RoundRecord], arrays: ArrayRecord, settings: Simulation,
    cfg: DictConfig, started: float, extra: dict[str, Any],
) -> dict[str, Any]:
    """Write summary.json, model.pt and accuracy.png for whatever rounds finished."""
    summary = summarize_run(records, settings, cfg, time.perf_counter() - started, extra)
    write_summary(out_dir / "summary.json", summary)
    torch.save(arrays.to_torch_state_dict(), out_dir / "model.pt")
    title = f"{summary['dataset']} / {summary['model']} / {summary['strategy']} (seed {settings.seed})"
    plot_accuracy(records, out_dir / "accuracy.png", title)
    return summary
