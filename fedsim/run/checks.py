"""Refusals of option combinations that cannot work together, checked before Ray starts.

Each option checks its own values when it is built (:mod:`fedsim.run.options`); what is left are
the rules that span options: DP with BatchNorm, over-selection with DP, FedSGD with a
fine-tuning mode, distillation that reads what privacy hides, a client-level audit whose
held-out shards overlap the members', a client algorithm with what it cannot run beside. Each
failure is one line naming what to fix.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import (
    FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi, Strategy,
)

from clients.finetune import FineTuneMode
from fedsim import keys
from fedsim.config import Faults, Simulation
from fedsim.data.partition.base import Partition, SampledPartition
from fedsim.errors import ConfigError
from fedsim.fleet.budget import MemoryBudget
from fedsim.fleet.exchange import Exchange, plan_exchange
from fedsim.fleet.fleet import Fleet
from fedsim.models.factory import ModelBuilder
from fedsim.privacy.plan import PrivacyPlan
from fedsim.privacy.secagg import NoSecureAggregation
from fedsim.proxy.distillation import Distillation
from fedsim.strategy.client_algorithm import ClientAlgorithm
from fedsim.strategy.wrapper import innermost
from fedsim.updates import GRADIENT, UpdateRule


def planned_exchange(
    builder: ModelBuilder, modes: tuple[str, ...], server_refines: bool = False,
) -> Exchange:
    """What the run's phones download, upload and keep, planned once before Ray starts
    (:func:`fedsim.fleet.exchange.plan_exchange`); a mode the student cannot run is one line.

    Head, bias and quantised modes find the classifier through the ``features``/``classifier``
    seam of ``fedsim.models.layers.FeaturesClassifier``; a user's plain ``nn.Module``
    (``examples/mcmahan_cnn.py``) trains ``full`` only. ``modes`` are the fine-tuning modes any
    phone of the run can be told (:func:`fedsim.fleet.exchange.possible_modes`).
    """
    try:
        return plan_exchange(builder(), modes, server_refines=server_refines)
    except TypeError as err:
        raise ConfigError(
            f"finetune: {'/'.join(modes)} cannot run on {builder.model_name}: {err}; "
            "use finetune=full"
        ) from None


def refuse_batch_statistics(
    exchange: Exchange, privacy: PrivacyPlan, modes: tuple[str, ...]
) -> None:
    """Refuse DP when a phone of the run would upload BatchNorm running statistics.

    DP covers the exchanged update; BatchNorm's running statistics would be noised into
    nonsense (a negative variance) or would have to travel unprotected. They are only a
    problem when they travel: under ``finetune=frozen_stats`` the statistics stay the server's
    pre-trained, public ones, and under ``head`` (or ``int8_head``) the whole backbone does
    (:mod:`fedsim.fleet.exchange`), so a BatchNorm student is fine there. ``exchange`` is the
    run's plan (:func:`planned_exchange`) for ``modes``, the fine-tuning modes any phone of the
    run can be told.
    """
    if privacy.accountant is None:
        return
    if any(name.endswith(("running_mean", "running_var")) for name in exchange.uploaded):
        raise ConfigError(
            f"norm: privacy={privacy.report.get('privacy')} cannot protect BatchNorm running "
            f"statistics, which finetune={'/'.join(modes)} uploads; use norm=group or norm=none, "
            "or finetune=frozen_stats (the DP options' default) from a pre-trained student"
        )


def check_fleet(
    settings: Simulation, fleet: Fleet, finetune: FineTuneMode, budget: MemoryBudget,
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
    modes = {finetune.name} | {p.finetune for p in fleet.tiers.values() if p.finetune}
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
    if distill.where.phones_distill and update.kind == GRADIENT:
        raise ConfigError(
            "distill.where: client distillation trains locally; update.kind=gradient sends one "
            "cross-entropy gradient (use kind weights or delta)"
        )


def check_client_algorithm(
    algorithm: ClientAlgorithm, privacy: PrivacyPlan, secagg: Any, update: UpdateRule,
    distill: Distillation,
) -> None:
    """Refuse a client algorithm (SCAFFOLD, FedNova, ...) beside what it cannot run with.

    - DP and secure aggregation protect the model update; the algorithm's own tensors
      (SCAFFOLD's control-variate change) and metrics (FedNova's steps) would travel unprotected.
    - ``update.kind=gradient`` takes no local steps for the algorithm to work around.
    - FedDF's server refinement (``distill.where=server_ensemble``) would sit between the
      algorithm's server half and the replies it reads.
    """
    if algorithm.plain:
        return
    name = f"client_algorithm: {algorithm.name}"
    if privacy.noise is not None or not isinstance(secagg, NoSecureAggregation):
        raise ConfigError(
            f"{name} sends tensors and metrics beside the update that DP and secure "
            "aggregation do not cover; use privacy=none and secagg=none"
        )
    if update.kind == GRADIENT:
        raise ConfigError(f"{name} works around local steps; update.kind=gradient takes none")
    if distill.where.refines_aggregate:
        raise ConfigError(
            f"{name} cannot run with distill.where=server_ensemble (FedDF refines the aggregate "
            "between the algorithm's server half and the replies)"
        )


# Strategies whose aggregate is the example-weighted mean of the replies (FedAvg; FedAvgM and
# the FedOpt family then take a server step from it): the mean of the slots' partial sums,
# each weighted by its examples, is the same mean. Their aggregate_train is inherited or one of
# these; any other class's own aggregate_train (median, Krum, trimmed mean, q-FFL ...) is not.
WEIGHTED_MEAN_AGGREGATES = (FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad)


def check_partial_sums(
    settings: Simulation, strategy: Any, privacy: PrivacyPlan, distill: Distillation,
    algorithm: ClientAlgorithm,
) -> None:
    """Refuse ``simulation.partial_sums`` where the server needs each phone's update.

    Partial sums (:mod:`clients.partial_sums`) replace a slot's uploads by their weighted
    mean, so they need a strategy that aggregates by that mean (with Flower's weighting key),
    nothing between the replies and the strategy that reads single updates (DP's clipping and
    clipped counts, FedDF's ensemble, a client algorithm's server half), and every phone that
    trained aggregated (no deadline, no over-selection, which drop phones after training).
    """
    if not settings.partial_sums:
        return
    name = "simulation.partial_sums"
    owners = {
        cls for cls in type(strategy).__mro__ if "aggregate_train" in vars(cls)
        and cls is not Strategy
    }
    if not isinstance(strategy, FedAvg) or not owners <= set(WEIGHTED_MEAN_AGGREGATES):
        # A legacy flwr.server.strategy class is refused too: its adapter aggregates its way.
        raise ConfigError(
            f"{name}: {type(innermost(strategy)).__name__} does not aggregate by the "
            "example-weighted mean of the replies (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, "
            "FedAdagrad do); "
            f"use {name}=false"
        )
    if strategy.weighted_by_key != keys.NUM_EXAMPLES:
        raise ConfigError(
            f"{name}: the strategy weighs replies by {strategy.weighted_by_key!r}; slots sum by "
            f"{keys.NUM_EXAMPLES!r}"
        )
    if privacy.noise is not None:
        raise ConfigError(f"{name}: DP clips and counts each phone's update; use {name}=false")
    if distill.where.refines_aggregate:
        raise ConfigError(
            f"{name}: FedDF (distill.where=server_ensemble) needs each phone's model; "
            f"use {name}=false"
        )
    if not algorithm.plain:
        raise ConfigError(
            f"{name}: client_algorithm {algorithm.name} sends each phone's own tensors; "
            f"use {name}=false"
        )
    if settings.deadline_s is not None or settings.overcommit > 0:
        raise ConfigError(
            f"{name}: simulation.deadline_s and simulation.overcommit drop phones after they "
            f"trained, when they are already summed; use {name}=false"
        )


def check_faults(faults: Faults, settings: Simulation) -> None:
    """A slow phone is one that overruns ``simulation.client_timeout_s``: without one, none can."""
    if faults.slow_client_rate and settings.client_timeout_s is None:
        raise ConfigError("faults.slow_client_rate: needs simulation.client_timeout_s to overrun")


def refuse_overlapping_holdout(holdout_clients: int, partition: Partition) -> None:
    """A client-level audit needs non-members whose data no member holds.

    Under ``partition.samples_per_client`` every shard is an independent draw from the same
    pool (:class:`~fedsim.data.partition.base.SampledPartition`), so the held-out phones'
    examples are, almost surely, also some member's: the audit would call trained-on data
    "non-member" and read the overlap as privacy. The example-level audit's non-members come
    from the test split, which no shard draws from, so it is unaffected.
    """
    if holdout_clients and isinstance(partition, SampledPartition):
        raise ConfigError(
            "audit: membership's held-out phones draw from the same pool as the members under "
            "partition.samples_per_client (overlapping shards), which voids the audit; use "
            "audit=example or partition.samples_per_client=null"
        )
