"""From a composed Hydra config to the checked parts of one run, before Ray starts.

Everything that can reject the user's input runs here: config types and ranges, ``_target_``
imports, dataset files, the partition, the strategy class, the privacy and update options
(:mod:`fedsim.run.options`), and the combinations that cannot work (:mod:`fedsim.run.checks`).
The simulated fleet (device profiles, availability, the memory-budget policy, the fine-tuning
mode), the pre-training recipe, the teacher and where distillation happens are built here too;
the models the server trains before the first round are :mod:`fedsim.run.starting_point`'s.
Each failure is one line naming what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig

from clients.finetune import FineTuneMode
from fedsim.attacks.config import build_threat
from fedsim.attacks.threat import ThreatModel
from fedsim.errors import ConfigError
from fedsim.config import (
    Faults,
    Simulation,
    locate_targets,
    parse_faults,
    parse_simulation,
    to_plain,
)
from fedsim.data.shards import ShardSource
from fedsim.data.splits import DatasetSplits
from fedsim.fleet.budget import MemoryBudget
from fedsim.fleet.exchange import Exchange, possible_modes
from fedsim.fleet.fleet import Fleet
from fedsim.models.factory import ModelBuilder
from fedsim.privacy.audit import Audit
from fedsim.privacy.plan import PrivacyPlan
from fedsim.privacy.secagg import NoSecureAggregation, SecAggPlusCostModel
from fedsim.proxy.distillation import Distillation
from fedsim.proxy.pretrain import Pretraining
from fedsim.proxy.teacher import Teacher
from fedsim.run.checks import (
    check_client_algorithm,
    check_distillation,
    check_faults,
    check_partial_sums,
    check_fleet,
    planned_exchange,
    refuse_batch_statistics,
    refuse_overlapping_holdout,
)
from fedsim.run.learning_rate import LearningRateInstruction
from fedsim.run.options import (
    build_privacy,
    build_strategy,
    build_update,
    instantiate_option,
    with_assumed_malicious,
)
from fedsim.server.sampler import CohortSampler
from fedsim.strategy.client_algorithm import ClientAlgorithm
from fedsim.updates import UpdateRule


@dataclass(frozen=True)
class Prepared:
    """Everything a run needs, built and checked before Ray starts.

    Frozen: a resumed run builds new parts from its checkpoint instead of changing these.
    """

    settings: Simulation
    splits: DatasetSplits
    shards: ShardSource
    builder: ModelBuilder
    strategy: Strategy  # the user's; the run wraps it in fedsim's stack (fedsim.strategy.stack)
    sampler: CohortSampler
    privacy: PrivacyPlan
    audit: Audit
    secagg: SecAggPlusCostModel | NoSecureAggregation
    faults: Faults
    update: UpdateRule
    threat: ThreatModel | None  # Byzantine clients, if any
    fleet: Fleet
    availability: Any  # is_online(client_id, profile, sim_time_s, server_round, seed)
    budget: MemoryBudget
    finetune: FineTuneMode
    pretraining: Pretraining
    distill: Distillation
    teacher: Teacher
    learning_rate: LearningRateInstruction  # the phones' rate each round (lr_schedule)
    exchange: Exchange  # which tensors the phones download, upload and keep (fedsim.fleet.exchange)
    algorithm: ClientAlgorithm = ClientAlgorithm()  # client_algorithm: phone and server halves


def prepare(cfg: DictConfig) -> Prepared:
    """Validate ``cfg`` and build data, population, model recipe and strategy."""
    settings = parse_simulation(cfg)
    locate_targets(cfg)
    audit = instantiate_option("audit", cfg.audit)
    finetune = instantiate_option("finetune", cfg.finetune)
    pretraining = instantiate_option("pretrain", cfg.pretrain)
    distill = instantiate_option("distill", cfg.distill)
    teacher = instantiate_option("teacher", cfg.teacher, _recursive_=False)
    fleet = instantiate_option("fleet", cfg.fleet, seed=settings.seed)
    availability = instantiate_option("availability", cfg.availability)
    budget = instantiate_option("budget", cfg.budget)
    learning_rate = LearningRateInstruction(
        instantiate_option("lr_schedule", cfg.lr_schedule), settings.local.lr, settings.rounds
    )
    # Held-out audit clients get shards of the same partition but are never sampled. The
    # server's proxy split (pre-training, the teacher, distillation) is held out of every shard.
    shards = ShardSource.from_config(
        to_plain(cfg.dataset), to_plain(cfg.partition),
        settings.population + audit.holdout_clients, settings.seed,
        proxy_fraction=distill.proxy_fraction_for(pretraining), proxy_seed=pretraining.seed,
    )
    splits, partition = shards.load()  # data-file and partition errors surface here
    refuse_overlapping_holdout(audit.holdout_clients, partition)
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
    modes = possible_modes(finetune.name, fleet, budget)
    exchange = planned_exchange(builder, modes, server_refines=distill.where.refines_aggregate)
    refuse_batch_statistics(exchange, privacy, modes)
    secagg = instantiate_option("secagg", cfg.secagg)
    secagg.check(strategy)
    check_fleet(settings, fleet, finetune, budget, update, privacy)
    check_distillation(distill, privacy, secagg, update)
    algorithm = build_client_algorithm(cfg)
    check_client_algorithm(algorithm, privacy, secagg, update, distill)
    check_partial_sums(settings, strategy, privacy, distill, algorithm)
    faults = parse_faults(cfg)
    check_faults(faults, settings)
    return Prepared(
        settings, splits, shards, builder, strategy, sampler, privacy, audit, secagg,
        faults, update, threat, fleet, availability, budget, finetune, pretraining, distill,
        teacher, learning_rate, exchange, algorithm,
    )


def build_client_algorithm(cfg: DictConfig) -> ClientAlgorithm:
    """The ``client_algorithm`` option (plain local SGD when the config has none)."""
    if "client_algorithm" not in cfg:
        return ClientAlgorithm()
    algorithm = instantiate_option("client_algorithm", cfg.client_algorithm)
    if not isinstance(algorithm, ClientAlgorithm):
        raise ConfigError(
            f"client_algorithm._target_: {cfg.client_algorithm.get('_target_')!r} is not a "
            "fedsim.strategy.client_algorithm.ClientAlgorithm"
        )
    return algorithm
