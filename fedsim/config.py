"""The ``simulation`` node's structured schema and the checks that run before Ray starts.

Hydra composes ``conf/config.yaml``; this module owns what a valid composition is. Types are
checked by merging the YAML into frozen dataclasses (OmegaConf names the offending key), ranges
and cross-field rules by ``__post_init__``, and every ``_target_`` is located (imported) up
front. Each failure is a :class:`ConfigError` whose message is one line naming the key, so a
typo costs a second, not a Ray start-up.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.utils import _locate  # the resolver instantiate() itself uses
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedsim.errors import ConfigError, UserInputError


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class LocalTraining:
    """The local recipe every phone runs on its shard (overridable per round by a strategy)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "simulation.local.epochs", f"must be >= 1, got {self.epochs}")
        _require(
            self.batch_size >= 1,
            "simulation.local.batch_size",
            f"must be >= 1, got {self.batch_size}",
        )
        _require(self.lr > 0, "simulation.local.lr", f"must be > 0, got {self.lr}")
        _require(
            0 <= self.momentum < 1,
            "simulation.local.momentum",
            f"must be in [0, 1), got {self.momentum}",
        )
        _require(
            self.weight_decay >= 0,
            "simulation.local.weight_decay",
            f"must be >= 0, got {self.weight_decay}",
        )


@dataclass(frozen=True)
class Backend:
    """Ray resources. ``client_cpus`` is each execution slot's share, and its torch thread count."""

    client_cpus: int
    num_cpus: int | None  # CPUs Ray may use in total; None = all of this machine
    address: str | None  # an existing Ray cluster ("auto" or host:port); None = local
    temp_dir: str

    def __post_init__(self) -> None:
        _require(
            self.client_cpus >= 1,
            "simulation.backend.client_cpus",
            f"must be >= 1, got {self.client_cpus}",
        )
        _require(
            self.num_cpus is None or self.num_cpus >= self.client_cpus,
            "simulation.backend.num_cpus",
            f"must be >= client_cpus ({self.client_cpus}), got {self.num_cpus}",
        )

    @property
    def parallel(self) -> int:
        """Slots that can run at once: this machine's CPUs for Ray over ``client_cpus`` (on a
        cluster, ``address``, this machine's count is only a guess: set ``simulation.slots``)."""
        return max(1, (self.num_cpus or os.cpu_count() or 1) // self.client_cpus)


# Most phones a bundle holds by default. A bundle's reply holds every phone's upload (50 of the
# default student's: 145 MB), copied a few times between the actor, Ray's object store and the
# driver; with 500 a bundle (10,000 phones, 1,000 a round, 2 slots) the run's memory peaked at
# 14 GB. More bundles than slots cost nothing: Flower hands each to the next free slot.
BUNDLE_PHONES = 50


@dataclass(frozen=True)
class Simulation:
    """One federated run: who trains, how often, and how it is evaluated.

    No field has a default here: ``conf/config.yaml`` is the one place defaults live, and a
    key missing from the composed config is reported by name.
    """

    rounds: int
    clients_per_round: int
    population: int
    seed: int
    eval_every: int
    sampling: str  # "fixed": k distinct clients; "poisson": each with prob k/population
    slots: int | None  # supernodes (execution slots); None = clients_per_round
    round_timeout_s: float
    client_timeout_s: float | None  # a phone slower than this counts as failed (`timeout`)
    min_completed: int  # fewer completed phones than this: the round is not aggregated
    checkpoint_every: int  # write checkpoint.safetensors every n rounds (and at the end)
    eval_batch_size: int
    deadline_s: float | None  # simulated seconds a phone has to finish; later: `straggler`
    overcommit: float  # sample (1 + overcommit) x clients_per_round, keep the first finishers
    target_accuracy: float | None  # summary reports the simulated time to reach it
    start_hour: float  # local hour of day at simulated time 0 (availability curves)
    local: LocalTraining
    backend: Backend
    # End the run after the first evaluation that reaches target_accuracy (a default, so that a
    # run saved before this field existed still resumes).
    stop_at_target: bool = False
    # One message per slot a round, carrying many phones (docs/performance.md); a default, so a
    # run saved before this field existed still resumes (its results are the same either way).
    bundle: bool = False
    # Each slot replies with its phones' example-weighted mean model (clients.partial_sums);
    # weighted-mean strategies only (fedsim.run.checks.check_partial_sums).
    partial_sums: bool = False

    def __post_init__(self) -> None:
        for key in (
            "rounds", "clients_per_round", "population", "eval_every", "eval_batch_size",
            "checkpoint_every",
        ):
            value = getattr(self, key)
            _require(value >= 1, f"simulation.{key}", f"must be >= 1, got {value}")
        _require(
            self.clients_per_round <= self.population,
            "simulation.clients_per_round",
            f"{self.clients_per_round} exceeds simulation.population ({self.population})",
        )
        _require(
            self.sampling in ("fixed", "poisson"),
            "simulation.sampling",
            f"must be 'fixed' or 'poisson', got {self.sampling!r}",
        )
        _require(
            self.slots is None or self.slots >= 1,
            "simulation.slots",
            f"must be >= 1 or null, got {self.slots}",
        )
        _require(self.seed >= 0, "simulation.seed", f"must be >= 0, got {self.seed}")
        _require(
            self.round_timeout_s > 0,
            "simulation.round_timeout_s",
            f"must be > 0, got {self.round_timeout_s}",
        )

        _require(
            self.client_timeout_s is None or self.client_timeout_s > 0,
            "simulation.client_timeout_s",
            f"must be > 0 or null, got {self.client_timeout_s}",
        )
        _require(
            self.min_completed >= 0,
            "simulation.min_completed",
            f"must be >= 0, got {self.min_completed}",
        )
        _require(
            self.deadline_s is None or self.deadline_s > 0,
            "simulation.deadline_s",
            f"must be > 0 or null, got {self.deadline_s}",
        )
        _require(
            self.overcommit >= 0, "simulation.overcommit", f"must be >= 0, got {self.overcommit}"
        )
        _require(
            self.overcommit == 0 or self.sampling == "fixed",
            "simulation.overcommit",
            "over-selection needs simulation.sampling=fixed",
        )
        _require(
            self.target_accuracy is None or 0 < self.target_accuracy <= 1,
            "simulation.target_accuracy",
            f"must be in (0, 1] or null, got {self.target_accuracy}",
        )
        _require(
            not self.stop_at_target or self.target_accuracy is not None,
            "simulation.stop_at_target",
            "needs simulation.target_accuracy",
        )
        _require(
            not self.partial_sums or self.bundle,
            "simulation.partial_sums",
            "sums inside each slot's bundle: needs simulation.bundle=true",
        )
        _require(
            0 <= self.start_hour < 24,
            "simulation.start_hour",
            f"must be in [0, 24), got {self.start_hour}",
        )

    @property
    def sampled_per_round(self) -> int:
        """Phones drawn each round: the cohort plus the over-selection (FedScale's overcommit)."""
        return min(math.ceil(self.clients_per_round * (1 + self.overcommit)), self.population)

    @property
    def num_slots(self) -> int:
        """Supernodes to start: slots are reused, so more than a cohort is never useful.

        By default one per phone of a round; with bundles one per slot that can run at once
        (each supernode gets one bundle a round), or more so that no bundle holds more than
        ``BUNDLE_PHONES`` phones.
        """
        default = self.sampled_per_round
        if self.bundle:
            default = max(self.backend.parallel, math.ceil(default / BUNDLE_PHONES))
        return min(self.slots or default, self.sampled_per_round)


@dataclass(frozen=True)
class Faults:
    """Injected failures, for testing a run's resilience (all off by default).

    Which phone fails in which round is a function of ``(seed, round, phone id)`` only, so a
    faulty run is as reproducible as a clean one.
    """

    client_error_rate: float  # share of client-rounds whose ClientApp raises
    slow_client_rate: float  # share of client-rounds that overrun simulation.client_timeout_s
    kill_actor_at_round: int | None  # in this round, the lowest-id phone kills its Ray actor

    def __post_init__(self) -> None:
        for key in ("client_error_rate", "slow_client_rate"):
            value = getattr(self, key)
            _require(0 <= value <= 1, f"faults.{key}", f"must be in [0, 1], got {value}")
        _require(
            self.kill_actor_at_round is None or self.kill_actor_at_round >= 1,
            "faults.kill_actor_at_round",
            f"must be >= 1 or null, got {self.kill_actor_at_round}",
        )

    @property
    def any(self) -> bool:
        return bool(self.client_error_rate or self.slow_client_rate or self.kill_actor_at_round)


def parse_faults(cfg: DictConfig) -> Faults:
    """Type-check and range-check ``cfg.faults``."""
    return _parse(cfg, "faults", Faults)


# Config groups whose node is instantiated from a `_target_`.
TARGET_GROUPS = (
    "dataset", "partition", "model", "norm", "strategy", "privacy", "audit", "secagg", "attack",
    "update", "update.compression", "fleet", "availability", "budget", "finetune", "pretrain",
    "distill", "distill.where",
)


def _writable(node: DictConfig) -> DictConfig:
    """Clear the read-only flag frozen dataclasses put on every schema node, so YAML merges in."""
    OmegaConf.set_readonly(node, False)
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _writable(child)
    return node


def parse_simulation(cfg: DictConfig) -> Simulation:
    """Type-check and range-check ``cfg.simulation``; raise :class:`ConfigError` on the first fault."""
    return _parse(cfg, "simulation", Simulation)


def _parse(cfg: DictConfig, node: str, schema_type: type) -> Any:
    """Merge ``cfg[node]`` into ``schema_type``'s structured schema and build the dataclass."""
    if node not in cfg:
        raise ConfigError(f"{node}: missing from the config")
    try:
        schema = _writable(OmegaConf.structured(schema_type))
        OmegaConf.merge(schema, cfg[node])  # unknown keys and wrong literals, named as written
        # Then the values, resolved against the whole config: one may interpolate another group
        # (``simulation.local.lr: ${pretrain.client_lr}``), which a detached node cannot see.
        merged = OmegaConf.merge(schema, OmegaConf.to_container(cfg[node], resolve=True))
        return OmegaConf.to_object(merged)  # runs __post_init__ range checks
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or node
        if not key.startswith(node):
            key = f"{node}.{key}"
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{key}: {reason}{_suggestion(schema_type, node, key)}") from None


def _suggestion(schema_type: type, node: str, key: str) -> str:
    """`` (did you mean 'simulation.rounds'?)`` for a key the schema lacks, or ``""``."""
    from fedsim.command_line import did_you_mean

    parent, _, name = key.rpartition(".")
    schema: Any = schema_type
    for part in filter(None, parent.removeprefix(node).split(".")):
        schema = typing.get_type_hints(schema).get(part)  # a nested schema, e.g. local
        if not dataclasses.is_dataclass(schema):
            return ""
    names = [f.name for f in dataclasses.fields(schema)]
    return "" if name in names else did_you_mean(name, names, prefix=f"{parent}.")


def locate_targets(cfg: DictConfig) -> None:
    """Import every group's ``_target_`` so a typo fails before anything starts."""
    for group in TARGET_GROUPS:
        node = OmegaConf.select(cfg, group)  # dotted: nested nodes such as update.compression
        _require(node is not None, group, "missing config group")
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        _require(bool(target), f"{group}._target_", "missing")
        try:
            _locate(target)
        except Exception as err:  # noqa: BLE001 - any import failure is the user's typo
            cause = err.__cause__ or err
            detail = str(cause).splitlines()[0] if str(cause) else "not found"
            raise ConfigError(
                f"{group}._target_: cannot import {target!r} ({type(cause).__name__}: {detail})"
            ) from None


def to_plain(node: Any) -> Any:
    """A resolved, plain-Python copy of a config node (picklable, JSON-able)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
