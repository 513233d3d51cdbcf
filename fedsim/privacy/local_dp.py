"""Local DP: every phone clips and noises its own update before it leaves the device.

The Gaussian mechanism applied on the client (the "local" model of DP; for federated learning
see e.g. Truex et al., "LDP-Fed", EdgeSys 2020, and Kairouz et al., "Advances and Open Problems
in Federated Learning", 2021, Sec. 4.2): the update ``u`` (trained minus received weights) is
clipped to L2 norm ``C`` and sent as ``clip(u) + N(0, (z C)^2 I)``. The server needs no trust:
whatever it does with the reports is post-processing.

The guarantee is per client and per report. A client's data can be replaced by anything, which
moves its clipped update by up to ``2C`` (replace-one sensitivity), so one report is a Gaussian
mechanism with noise multiplier ``z / 2``. A client that reported ``k`` times has spent ``k``
compositions of it; sampling does not amplify anything here, because the client knows it was
picked. The run reports the epsilon of the *most-sampled* client so far: the participation
counts are a function of the seed alone (the sampler is), so taking their maximum leaks nothing.

The price is noise on every report rather than once on the sum: the mean of ``m`` reports
carries std ``z C / sqrt(m)`` per coordinate, ``sqrt(m)`` times central DP's ``z C / m``.

This module is the server's half: the config option (:class:`LocalDP`), the wrapper that tells
clients ``C`` and ``z`` (:class:`LocalDPInstructions`), and the accountant
(:class:`LocalDPAccountant`). The device's half is :mod:`clients.local_dp`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dp_accounting
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import QFedAvg, Strategy

from fedsim import keys
from fedsim.privacy import PrivacyConfigError
from fedsim.privacy.accounting import default_delta, epsilon
from fedsim.privacy.plan import PrivacyPlan
from fedsim.server.sampler import CohortSampler
from fedsim.strategy.wrapper import StrategyWrapper


def local_dp_event(noise_multiplier: float, reports: int) -> dp_accounting.DpEvent:
    """``reports`` Gaussian reports of a clipped update, replace-one (noise multiplier ``z/2``)."""
    if reports == 0:
        return dp_accounting.NoOpDpEvent()
    if noise_multiplier == 0:
        return dp_accounting.NonPrivateDpEvent()
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(noise_multiplier / 2), reports
    )


class LocalDPAccountant:
    """Epsilon of the most-sampled client after each round.

    Parameters
    ----------
    noise_multiplier : float
        ``z``: each report's noise std divided by ``C``.
    delta : float
        Per-client delta.
    sampler : CohortSampler
        The run's sampler; participation counts are recomputed from it, never stored per client
        beyond the clients that were sampled.
    accountant : str
        ``pld`` or ``rdp``.
    """

    def __init__(
        self, noise_multiplier: float, delta: float, sampler: CohortSampler, accountant: str = "pld"
    ) -> None:
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.sampler = sampler
        self.accountant = accountant
        self._counts: Counter[int] = Counter()
        self._rounds = 0
        self._max_reports = 0
        self._by_reports: dict[int, float] = {}

    @property
    def rounds(self) -> int:
        return self._rounds

    @property
    def max_reports(self) -> int:
        """Reports sent by the client sampled most often so far."""
        return self._max_reports

    def step(self, rounds: int = 1) -> None:
        for _ in range(rounds):
            self._rounds += 1
            cohort = self.sampler.cohort(self._rounds)
            self._counts.update(int(c) for c in cohort)
            top = max((self._counts[int(c)] for c in cohort), default=0)
            self._max_reports = max(self._max_reports, top)

    def epsilon_of_reports(self, reports: int) -> float:
        if reports not in self._by_reports:
            event = local_dp_event(self.noise_multiplier, reports)
            self._by_reports[reports] = epsilon(event, self.delta, self.accountant)
        return self._by_reports[reports]

    def epsilon(self) -> float:
        return self.epsilon_of_reports(self._max_reports)

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon of the most-sampled client after ``rounds`` rounds in all."""
        if rounds <= self._rounds:
            probe = LocalDPAccountant(self.noise_multiplier, self.delta, self.sampler, self.accountant)
            probe.step(rounds)
            return self.epsilon_of_reports(probe.max_reports)
        counts, top = Counter(self._counts), self._max_reports
        for server_round in range(self._rounds + 1, rounds + 1):
            cohort = self.sampler.cohort(server_round)
            counts.update(int(c) for c in cohort)
            top = max([top, *(counts[int(c)] for c in cohort)])
        return self.epsilon_of_reports(top)

    def state(self) -> dict[str, Any]:
        return {
            "noise_multiplier": self.noise_multiplier, "delta": self.delta,
            "accountant": self.accountant, "rounds": self._rounds,
        }


class LocalDPInstructions(StrategyWrapper):
    """Puts ``C`` and ``z`` into every train message; the client does the rest.

    Any aggregator may sit inside (robust ones too: the reports are already private), except
    q-FedAvg, which reweights clients by their reported training loss.
    """

    def __init__(self, strategy: Strategy, clipping_norm: float, noise_multiplier: float) -> None:
        if isinstance(strategy, QFedAvg):
            raise PrivacyConfigError(
                "privacy: local DP cannot run under QFedAvg: it weighs clients by their training "
                "loss, which local DP does not privatise"
            )
        self.strategy = strategy
        self.clipping_norm = clipping_norm
        self.noise_multiplier = noise_multiplier
        self.clipped: list[tuple[int, int]] = []  # per round: (clipped, received) reports
        self.norms_used: dict[int, float] = {}

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





@dataclass(frozen=True)
class LocalDP:
    """The ``privacy=local_dp`` option: each client clips to ``clipping_norm`` and adds noise.

    Parameters
    ----------
    clipping_norm : float
        ``C``.
    noise_multiplier : float
        ``z``: noise std on each report is ``z * C``.
    delta : float or None
        Per-client delta; None means 1 / population.
    accountant : str
        ``pld`` (reported) or ``rdp``.
    target_epsilon : float or None
        Stop before the round after which the most-sampled client would exceed it.
    """

    clipping_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float | None = None
    accountant: str = "pld"
    target_epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.clipping_norm <= 0:
            raise PrivacyConfigError(f"privacy.clipping_norm: must be > 0, got {self.clipping_norm}")
        if self.noise_multiplier < 0:
            raise PrivacyConfigError(
                f"privacy.noise_multiplier: must be >= 0, got {self.noise_multiplier}"
            )
        if self.accountant not in ("pld", "rdp"):
            raise PrivacyConfigError(
                f"privacy.accountant: must be 'pld' or 'rdp', got {self.accountant!r}"
            )
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise PrivacyConfigError(
                f"privacy.target_epsilon: must be > 0, got {self.target_epsilon}"
            )

    def attach(
        self, strategy: Strategy, *, population: int, sampler: CohortSampler, **_: Any
    ) -> PrivacyPlan:
        delta = self.delta if self.delta is not None else default_delta(population)
        report = {
            "privacy": "local_dp",
            "unit": "user (one client's data replaced), per client; the most-sampled client's "
            "epsilon is reported",
            "accountant": self.accountant,
            "delta": delta,
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm,
            "target_epsilon": self.target_epsilon,
        }
        wrapped = LocalDPInstructions(strategy, self.clipping_norm, self.noise_multiplier)
        return PrivacyPlan(
            strategy=wrapped,
            accountant=LocalDPAccountant(self.noise_multiplier, delta, sampler, self.accountant),
            target_epsilon=self.target_epsilon,
            report=report,
            mechanism=wrapped,
            charge_unaggregated=True,
        )
