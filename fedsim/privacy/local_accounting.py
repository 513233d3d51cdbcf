"""The local-DP ledger: epsilon of the most-sampled client after each round.

Local DP (``privacy=local_dp``; for federated learning see e.g. Truex et al., "LDP-Fed", EdgeSys
2020, and Kairouz et al., "Advances and Open Problems in Federated Learning", 2021, Sec. 4.2):
every phone clips its update ``u`` (trained minus received weights) to L2 norm ``C`` and sends
``clip(u) + N(0, (z C)^2 I)``. The server needs no trust: whatever it does with the reports is
post-processing. The phone's half is :mod:`clients.local_dp`, the server's (telling the phones
``C`` and ``z``) :mod:`fedsim.strategy.local_dp`; the option is
:class:`fedsim.privacy.options.LocalDP`.

The guarantee is per client and per report. A client's data can be replaced by anything, which
moves its clipped update by up to ``2C`` (replace-one sensitivity), so one report is a Gaussian
mechanism with noise multiplier ``z / 2``. A client that reported ``k`` times has spent ``k``
compositions of it; sampling does not amplify anything here, because the client knows it was
picked. The run reports the epsilon of the *most-sampled* client so far: the participation
counts are a function of the seed alone (the sampler is), so taking their maximum leaks nothing.

The price is noise on every report rather than once on the sum: the mean of ``m`` reports
carries std ``z C / sqrt(m)`` per coordinate, ``sqrt(m)`` times central DP's ``z C / m``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

import dp_accounting
import numpy as np

from fedsim.privacy.accounting import epsilon


class Cohorts(Protocol):
    """The run's sampler (:class:`fedsim.server.sampler.CohortSampler`): round -> client ids."""

    def cohort(self, server_round: int) -> np.ndarray: ...


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
    sampler : Cohorts
        The run's sampler; participation counts are recomputed from it, never stored per client
        beyond the clients that were sampled.
    accountant : str
        ``pld`` or ``rdp``.
    """

    def __init__(
        self, noise_multiplier: float, delta: float, sampler: Cohorts, accountant: str = "pld"
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
