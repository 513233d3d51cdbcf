"""The ``lr_schedule`` config group: the phones' learning rate, round by round.

Each round the server tells every phone of the cohort the learning rate to train with (the
phone already honours a per-round ``lr`` in its train config: ``clients.client_app``). A
strategy that sets ``lr`` in its own train config wins over the schedule.

Why decay: FedAvg with a constant client step size converges only to a neighbourhood of the
optimum whose size grows with the step size and client drift; a decaying step size is what the
convergence results assume (Li et al. 2020, "On the Convergence of FedAvg on Non-IID Data",
ICLR, Theorem 1 and its remark that a fixed rate leaves FedAvg away from the optimum). On
fedsim's default run a constant 0.05 gives drops of 0.15-0.25 between late rounds
(docs/benchmarks.md, "The default run").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord

from fedsim import keys
from fedsim.errors import ConfigError


@dataclass(frozen=True)
class Constant:
    """Every round at ``simulation.local.lr``."""

    def factor(self, server_round: int, rounds: int) -> float:
        """The multiple of the base learning rate in ``server_round`` (1-based): always 1."""
        return 1.0


@dataclass(frozen=True)
class Cosine:
    """Cosine decay from the base rate to ``final_fraction`` of it over the run's rounds.

    ``lr_t = lr * (f + (1 - f) * (1 + cos(pi * (t - 1) / (T - 1))) / 2)`` for round ``t`` of
    ``T`` (Loshchilov & Hutter 2017, "SGDR", without restarts), so round 1 trains at ``lr``
    and round ``T`` at ``f * lr``; ``warmup_rounds`` rounds first ramp up linearly from
    ``lr / (warmup_rounds + 1)`` (Goyal et al. 2017).

    Parameters
    ----------
    final_fraction : float
        ``f``, in ``[0, 1]``: the last round's rate as a share of the base rate.
    warmup_rounds : int
        Rounds of linear warm-up before the decay starts.
    """

    final_fraction: float = 0.1
    warmup_rounds: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.final_fraction <= 1.0:
            raise ConfigError(
                f"lr_schedule.final_fraction: must be in [0, 1], got {self.final_fraction}"
            )
        if self.warmup_rounds < 0:
            raise ConfigError(
                f"lr_schedule.warmup_rounds: must be >= 0, got {self.warmup_rounds}"
            )

    def factor(self, server_round: int, rounds: int) -> float:
        """The multiple of the base learning rate in ``server_round`` (1-based) of ``rounds``."""
        if server_round <= self.warmup_rounds:
            return server_round / (self.warmup_rounds + 1)
        decay_rounds = rounds - self.warmup_rounds
        if decay_rounds <= 1:
            return 1.0
        progress = (server_round - self.warmup_rounds - 1) / (decay_rounds - 1)
        f = self.final_fraction
        return f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass(frozen=True)
class LearningRateInstruction:
    """The device instruction that puts the round's learning rate into each phone's config.

    Parameters
    ----------
    schedule : Constant or Cosine
        Any object with ``factor(server_round, rounds) -> float`` (a user's own by
        ``_target_``).
    base_lr : float
        ``simulation.local.lr``.
    rounds : int
        ``simulation.rounds``: the length the schedule spans.
    """

    schedule: Constant | Cosine
    base_lr: float
    rounds: int

    def __call__(
        self, server_round: int, client_id: int, cohort: np.ndarray, config: ConfigRecord
    ) -> dict:
        if keys.LEARNING_RATE in config:
            return {}  # the strategy's own rate wins
        return {keys.LEARNING_RATE: self.base_lr * self.schedule.factor(server_round, self.rounds)}
