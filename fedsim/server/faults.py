"""Fault injection: which client-round fails, and how, decided on the server.

The server stamps the chosen messages (``keys.FAULT``); the ClientApp obeys (raises, sleeps past
``simulation.client_timeout_s``, or kills its own Ray actor with ``os._exit``). Decisions are a
hash of ``(seed, round, client id)``, so the same clients fail in a rerun or a resumed run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim import keys
from fedsim.config import Faults

_FAULT_STREAM = 0xFA17
SLOW_MARGIN_S = 2.0  # a slow client-round overruns the client timeout by this much


def uniform(seed: int, server_round: int, client_id: int) -> float:
    """A uniform [0, 1) draw that depends only on ``(seed, round, client id)``."""
    state = np.random.SeedSequence([seed, server_round, client_id, _FAULT_STREAM])
    return float(state.generate_state(1, dtype=np.uint64)[0] >> 11) / float(1 << 53)


@dataclass(frozen=True)
class FaultPlan:
    """``(round, client id, cohort, config) -> config entries`` for :class:`VirtualClients`."""

    faults: Faults
    seed: int
    client_timeout_s: float | None

    def __call__(
        self, server_round: int, client_id: int, cohort: np.ndarray, config: object = None
    ) -> dict:
        if self.faults.kill_actor_at_round == server_round and client_id == int(np.min(cohort)):
            return {keys.FAULT: "kill"}
        draw = uniform(self.seed, server_round, client_id)
        if draw < self.faults.client_error_rate:
            return {keys.FAULT: "error"}
        slow_limit = self.faults.client_error_rate + self.faults.slow_client_rate
        if self.client_timeout_s is not None and draw < slow_limit:
            return {keys.FAULT: "slow", keys.SLOW_FOR_S: self.client_timeout_s + SLOW_MARGIN_S}
        return {}
