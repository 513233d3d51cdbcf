"""The base of fedsim's strategy wrappers (update decoding, ensemble distillation, central DP,
local DP); :mod:`fedsim.strategy.stack` puts them in order.

Each wraps the user's Flower strategy and changes one step of it; every method it does not
override goes to the strategy inside, kept as ``.strategy`` so that :func:`innermost` can find
the user's own class under any stack of wrappers.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.server.strategy import Strategy as LegacyStrategyBase
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

# Either kind of Flower strategy: a Message-API one, or a legacy one that
# fedsim.strategy.legacy.LegacyStrategy runs (and keeps as its ``.strategy``).
ANY_STRATEGY = (Strategy, LegacyStrategyBase)


class StrategyWrapper(Strategy):
    """A Strategy that delegates to ``strategy`` whatever it does not override."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()


def innermost(strategy: Strategy) -> Strategy | LegacyStrategyBase:
    """The user's strategy under fedsim's and Flower's wrappers (each keeps it as ``.strategy``),
    a legacy one under :class:`~fedsim.strategy.legacy.LegacyStrategy` included.

    Its node minimums decide how many placeholders the cohort view must show, and its name is
    the one an error message gives; a wrapper has neither of its own.
    """
    while isinstance(getattr(strategy, "strategy", None), ANY_STRATEGY):
        strategy = strategy.strategy
    return strategy
