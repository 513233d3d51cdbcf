"""Building the run's options from their config nodes, each failure one line naming the key.

Every config group is a ``_target_`` Hydra instantiates; the helpers here turn whatever the
instantiation raises into a :class:`~fedsim.errors.ConfigError` naming the group, and check that
what came out is what the run can use (a Flower ``Strategy``, an ``UpdateRule``, ...).
"""

from __future__ import annotations

import inspect
from typing import Any

from flwr.server.strategy import Strategy as LegacyStrategyBase
from flwr.serverapp.strategy import Strategy
from hydra._internal.utils import _locate  # the resolver instantiate() itself uses
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedsim.attacks.threat import ThreatModel, assumed_malicious
from fedsim.config import Simulation
from fedsim.errors import ConfigError, UserInputError
from fedsim.privacy.plan import PrivacyPlan
from fedsim.server.sampler import CohortSampler
from fedsim.strategy.legacy import REFUSED, LegacyStrategy, refusal
from fedsim.updates import UpdateRule


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


def check_strategy_class(target: str) -> None:
    """Refuse a ``_target_`` class that is not a Strategy of either Flower API, a legacy class
    fedsim cannot run, or one that lacks a required method.

    Checked on the class, before its constructor runs, so the message names what is wrong
    rather than whatever the constructor would trip over.
    """
    cls = _locate(target)
    if not inspect.isclass(cls):
        return  # a factory function: its result is checked after instantiation
    if not issubclass(cls, (Strategy, LegacyStrategyBase)):
        raise ConfigError(
            f"strategy._target_: {target!r} is not a flwr.serverapp.strategy.Strategy subclass "
            f"nor a legacy flwr.server.strategy.Strategy one (its bases: {', '.join(b.__name__ for b in cls.__mro__[1:-1]) or 'none'})"
        )
    base = Strategy if issubclass(cls, Strategy) else LegacyStrategyBase
    refused = next((why for c, why in REFUSED.items() if issubclass(cls, c)), None)
    if refused:
        raise ConfigError(f"strategy._target_: fedsim cannot run {target!r}: {refused}")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise ConfigError(
            f"strategy._target_: {target!r} lacks required method(s) {', '.join(missing)} "
            f"(a Strategy implements {', '.join(sorted(base.__abstractmethods__))})"
        )


def build_strategy(node: DictConfig) -> Strategy:
    """Instantiate the user's strategy; a one-line ConfigError if it is not a usable one.

    A legacy ``flwr.server.strategy`` class comes back inside the adapter that runs it
    (:class:`fedsim.strategy.legacy.LegacyStrategy`).
    """
    target = node.get("_target_")
    check_strategy_class(target)
    try:
        strategy = instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__ or err
        detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ConfigError(f"strategy: cannot build {target!r}: {detail}") from None
    if isinstance(strategy, LegacyStrategyBase):
        refused = refusal(strategy)
        if refused:
            raise ConfigError(f"strategy._target_: fedsim cannot run {target!r}: {refused}")
        return LegacyStrategy(strategy)
    if not isinstance(strategy, Strategy):
        raise ConfigError(
            f"strategy._target_: {target!r} is not a flwr.serverapp.strategy.Strategy nor a "
            f"legacy flwr.server.strategy.Strategy (got {type(strategy).__name__})"
        )
    return strategy


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


def build_privacy(
    node: DictConfig, strategy: Strategy, settings: Simulation, sampler: CohortSampler
) -> PrivacyPlan:
    """Instantiate the ``privacy`` option and plan it for this run.

    The plan describes the noise; the strategy stack builds the wrapper that applies it
    (:func:`fedsim.strategy.stack.build_stack`). A user ``strategy`` the noise cannot sit on is
    refused here, before Ray starts.
    """
    option = instantiate_option("privacy", node)
    plan = option.plan(
        population=settings.population, cohort=settings.clients_per_round,
        sampling=settings.sampling, seed=settings.seed, rounds=settings.rounds, sampler=sampler,
    )
    plan.check(strategy)
    return plan
