"""Local DP, the server's half: tell every phone the clipping norm and the noise multiplier.

With ``privacy=local_dp`` each phone clips its update to ``C`` and adds ``N(0, (z C)^2 I)``
before it leaves the device (:mod:`clients.local_dp`, the phone's half of the same concept).
The server only has to say ``C`` and ``z`` in every train message, and it counts how many
reports came back clipped. The guarantee and its ledger are
:mod:`fedsim.privacy.local_accounting`; the option is :class:`fedsim.privacy.options.LocalDP`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import keys
from fedsim.privacy.aggregators import refuse_for_local_dp
from fedsim.strategy.saved_state import clipping_state, load_clipping_state
from fedsim.strategy.wrapper import StrategyWrapper


class LocalDPInstructions(StrategyWrapper):
    """Puts ``C`` and ``z`` into every train message; the client does the rest.

    Any aggregator may sit inside (robust ones too: the reports are already private), except
    q-FedAvg, which reweights clients by their reported training loss.

    Parameters
    ----------
    strategy : Strategy
        The user's strategy.
    clipping_norm : float
        ``C``.
    noise_multiplier : float
        ``z``: each report's noise std is ``z * C``.
    """

    def __init__(self, strategy: Strategy, clipping_norm: float, noise_multiplier: float) -> None:
        refuse_for_local_dp(strategy)
        self.strategy = strategy
        self.clipping_norm = clipping_norm
        self.noise_multiplier = noise_multiplier
        self.clipped: list[tuple[int, int]] = []  # per round: (clipped, received) reports
        self.norms_used: dict[int, float] = {}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this layer (:mod:`fedsim.strategy.saved_state`)."""
        return clipping_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_clipping_state(self, state)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        for message in messages:
            for record in message.content.config_records.values():
                record[keys.LOCAL_DP_CLIPPING_NORM] = float(self.clipping_norm)
                record[keys.LOCAL_DP_NOISE_MULTIPLIER] = float(self.noise_multiplier)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = [r for r in replies if not r.has_error()]
        # A simulator diagnostic: a deployment would not learn which reports were clipped.
        clipped = sum(int(r.content[keys.METRICS].get(keys.CLIPPED, 0)) for r in valid)
        self.clipped.append((clipped, len(valid)))
        self.norms_used[server_round] = self.clipping_norm
        return self.strategy.aggregate_train(server_round, replies)
