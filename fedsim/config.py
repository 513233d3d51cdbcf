"""The ``simulation`` node's structured schema and the checks that run before Ray starts.

Hydra composes ``conf/config.yaml``; this module owns what a valid composition is. Types are
checked by merging the YAML into frozen dataclasses (OmegaConf names the offending key), ranges
and cross-field rules by ``__post_init__``, and every ``_target_`` is located (imported) up
front. Each failure is a :class:`ConfigError` whose message is one line naming the key, so a
typo costs a second, not a Ray start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra._internal.utils import _locate  # the resolver instantiate() itself uses
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedsim.errors import UserInputError


class ConfigError(UserInputError):
    """A configuration value is wrong; the message is one line naming the key."""


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
    eval_batch_size: int
    local: LocalTraining
    backend: Backend

    def __post_init__(self) -> None:
        for key in ("rounds", "clients_per_round", "population", "eval_every", "eval_batch_size"):
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

    @property
    def num_slots(self) -> int:
        """Supernodes to start: slots are reused, so more than a cohort is never useful."""
        return min(self.slots or self.clients_per_round, self.clients_per_round)


# Config groups whose node is instantiated from a `_target_`.
TARGET_GROUPS = (
    "dataset", "partition", "model", "norm", "strategy", "privacy", "attack", "update",
    "update.compression",
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
    if "simulation" not in cfg:
        raise ConfigError("simulation: missing from the config")
    try:
        schema = _writable(OmegaConf.structured(Simulation))
        merged = OmegaConf.merge(schema, cfg.simulation)
        return OmegaConf.to_object(merged)  # runs __post_init__ range checks
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "simulation"
        if not key.startswith("simulation"):
            key = f"simulation.{key}"
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{key}: {reason}") from None


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
