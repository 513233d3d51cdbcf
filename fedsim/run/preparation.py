"""From a composed Hydra config to the checked parts of one run, before Ray starts.

Everything that can reject the user's input runs here: config types and ranges, ``_target_``
imports, dataset files, the partition, the strategy class, the privacy and update options, and
the combinations that cannot work (DP with BatchNorm, secure aggregation with robust
aggregators, over-selection with DP). The simulated fleet (device profiles, availability, the
memory-budget policy, the fine-tuning mode), the server's pre-training on its proxy split, the
teacher and where distillation happens are built here too. Each failure is one line naming what
to fix.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy
from hydra._internal.utils import _locate  # the resolver instantiate() itself uses
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedsim.attacks.config import build_threat
from fedsim.attacks.threat import ThreatModel, assumed_malicious
from fedsim.fleet.budget import MemoryBudget
from clients.distillation import logits_of
from fedsim.errors import ConfigError
from fedsim.config import (
    Faults,
    FineTune,
    Simulation,
    locate_targets,
    parse_faults,
    parse_finetune,
    parse_simulation,
    to_plain,
)
from fedsim.data.splits import DatasetSplits
from fedsim.data.shards import ShardSource
from fedsim.proxy.distillation import Distillation, distilled_pretraining
from fedsim.errors import UserInputError
from fedsim.fleet.fleet import Fleet
from fedsim.models.factory import ModelBuilder
from fedsim.privacy.audit import MembershipAudit, NoAudit
from fedsim.privacy.plan import PrivacyPlan
from fedsim.proxy.pretrain import Pretraining, load_pretrained, pretrained_state
from fedsim.privacy.secagg import NoSecureAggregation, SecAggPlusCostModel
from fedsim.server.sampler import CohortSampler
from fedsim.proxy.teacher import Teacher, TeacherOnDevice, trained_teacher
from fedsim.updates import GRADIENT, UpdateRule


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
    fleet: Fleet
    availability: Any  # is_online(client_id, profile, sim_time_s, server_round, seed)
    budget: MemoryBudget
    finetune: FineTune
    pretraining: Pretraining
    distill: Distillation
    teacher: Teacher


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


def instantiate_option(group: str, node: DictConfig, **kwargs: Any) -> Any:
    """Instantiate a config group's option; its own one-line errors pass through.

    Lists in the node arrive as plain lists (``_convert_="all"``), so frozen dataclasses can
    keep them as tuples.
    """
    try:
        return instantiate(node, _convert_="all", **kwargs)
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


def check_fleet(
    settings: Simulation, fleet: Fleet, finetune: FineTune, budget: MemoryBudget,
    update: UpdateRule, privacy: PrivacyPlan,
) -> None:
    """Refuse device settings that cannot work together.

    - Over-selection keeps the first finishers, so who is aggregated depends on speed: DP's
      accounting assumes a cohort sampled independently of the data and the device, and the
      sampling-amplification bound would no longer hold.
    - A FedSGD gradient (``update.kind=gradient``) is one full-batch gradient of every
      parameter; it has no fine-tuning mode.
    """
    if settings.overcommit > 0 and privacy.accountant is not None:
        raise ConfigError(
            "simulation.overcommit: over-selection keeps the fastest phones, which breaks DP's "
            "sampling assumption; use overcommit=0 with privacy"
        )
    modes = {finetune.mode} | {p.finetune for p in fleet.tiers.values() if p.finetune}
    if budget.policy == "adapt":
        modes |= set(budget.fallback)
    if update.kind == GRADIENT and modes != {"full"}:
        raise ConfigError(
            f"finetune.mode: update.kind=gradient sends a full-batch gradient of every parameter; "
            f"fine-tuning mode(s) {', '.join(sorted(modes - {'full'}))} need kind weights or delta"
        )


def check_distillation(
    distill: Distillation, privacy: PrivacyPlan, secagg: Any, update: UpdateRule
) -> None:
    """Refuse distillation settings that cannot work with the rest of the run.

    - FedDF's client ensemble runs every client model on the proxy split: central DP protects
      only the noised aggregate, and secure aggregation hides the individual models.
    - A FedSGD gradient (``update.kind=gradient``) is plain cross-entropy's.
    """
    if distill.uses_client_models and privacy.accountant is not None:
        raise ConfigError(
            f"distill.ensemble: '{distill.ensemble}' reads every client model, which central DP "
            "does not protect; use distill.ensemble=teacher with privacy"
        )
    if distill.uses_client_models and not isinstance(secagg, NoSecureAggregation):
        raise ConfigError(
            f"distill.ensemble: '{distill.ensemble}' needs the individual client models, which "
            "secure aggregation hides; use distill.ensemble=teacher or secagg=none"
        )
    if distill.where == "client" and update.kind == GRADIENT:
        raise ConfigError(
            "distill.where: client distillation trains locally; update.kind=gradient sends one "
            "cross-entropy gradient (use kind weights or delta)"
        )


def prepare(cfg: DictConfig) -> Prepared:
    """Validate ``cfg`` and build data, population, model recipe and strategy."""
    settings = parse_simulation(cfg)
    locate_targets(cfg)
    audit = instantiate_option("audit", cfg.audit)
    finetune = parse_finetune(cfg)
    pretraining = instantiate_option("pretrain", cfg.pretrain)
    distill = instantiate_option("distill", cfg.distill)
    teacher = instantiate_option("teacher", cfg.teacher, _recursive_=False)
    fleet = instantiate_option("fleet", cfg.fleet, seed=settings.seed)
    availability = instantiate_option("availability", cfg.availability)
    budget = instantiate_option("budget", cfg.budget)
    # Held-out audit clients get shards of the same partition but are never sampled. The
    # server's proxy split (pre-training, the teacher, distillation) is held out of every shard.
    shards = ShardSource.from_config(
        to_plain(cfg.dataset), to_plain(cfg.partition),
        settings.population + audit.holdout_clients, settings.seed,
        proxy_fraction=distill.proxy_fraction_for(pretraining), proxy_seed=pretraining.seed,
    )
    splits, _ = shards.load()  # data-file and partition errors surface here
    builder = ModelBuilder.from_config(
        to_plain(cfg.model), to_plain(cfg.norm), splits.input_shape, splits.num_classes
    )
    # With over-selection the sampler draws the larger cohort; the device simulation keeps the
    # first `clients_per_round` finishers.
    sampler = CohortSampler(
        settings.population, settings.sampled_per_round, settings.seed, settings.sampling
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
    check_fleet(settings, fleet, finetune, budget, update, privacy)
    check_distillation(distill, privacy, secagg, update)
    faults = parse_faults(cfg)
    if faults.slow_client_rate and settings.client_timeout_s is None:
        raise ConfigError("faults.slow_client_rate: needs simulation.client_timeout_s to overrun")
    return Prepared(
        settings, splits, shards, builder, privacy.strategy, sampler, privacy, audit, secagg,
        faults, update, threat, fleet, availability, budget, finetune, pretraining, distill,
        teacher,
    )


def initial_model(prepared: Prepared) -> torch.nn.Module:
    """The initial global model (see :func:`starting_point`)."""
    return starting_point(prepared, prepared_teacher(prepared))[0]


@dataclass(frozen=True)
class PreparedTeacher:
    """The trained teacher, its logits on the proxy split, its report and its phone recipe."""

    model: torch.nn.Module
    # (proxy samples, classes) in the proxy split's order; None for client distillation, where
    # only the phones run the teacher.
    proxy_logits: np.ndarray | None
    report: dict[str, Any]
    on_device: TeacherOnDevice


def prepared_teacher(prepared: Prepared) -> PreparedTeacher | None:
    """The teacher trained on the proxy split (or from its cache), when distillation uses one."""
    if not prepared.distill.uses_teacher:
        return None
    splits = prepared.splits
    model, report, on_device = trained_teacher(
        prepared.teacher, prepared.shards, splits.input_shape, splits.num_classes, splits.test
    )
    logits = None
    if prepared.distill.where != "client":  # the server distills on its proxy split
        x, _ = prepared.shards.proxy()
        logits = logits_of(model, torch.from_numpy(x)).numpy()
    return PreparedTeacher(model, logits, report, on_device)


def starting_point(
    prepared: Prepared, teacher: PreparedTeacher | None = None
) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """The initial global model, and the pre-training report (``None`` without pre-training).

    Without pre-training the model is the seeded initialisation (part of the run seed). With it,
    the server's pre-trained student (:mod:`fedsim.proxy.pretrain`, cached on disk) replaces it: its
    weights depend on ``pretrain.*`` and not on the run seed, so runs that differ in seed,
    fine-tuning mode or fleet all start from the same student. With ``distill.where=server_pre``
    the pre-training distills from ``teacher`` (:class:`fedsim.proxy.distillation.DistilledPretraining`)
    with the ``pretrain`` node's recipe.
    """
    torch.manual_seed(prepared.settings.seed)
    model = prepared.builder()
    pretraining = prepared.pretraining
    if prepared.distill.where == "server_pre":
        assert teacher is not None, "server_pre needs the prepared teacher"
        pretraining = distilled_pretraining(
            pretraining, prepared.distill, prepared.shards.proxy_fraction,
            teacher.report["key"], teacher.proxy_logits,
        )
    if not pretraining.enabled:
        return model, None
    state, report = pretrained_state(
        pretraining, prepared.builder, prepared.shards, test=prepared.splits.test
    )
    load_pretrained(model, state)
    return model, report
