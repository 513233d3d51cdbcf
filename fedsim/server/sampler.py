"""Seeded server-side cohort sampling over the virtual population.

Phones are virtual client ids ``0 .. population-1``; each round the sampler picks a cohort.
The cohort is a pure function of ``(seed, round)``: it never depends on Flower's node ids
(drawn from ``os.urandom``), on which execution slot runs a client, or on earlier rounds, so a
resumed run draws exactly what an uninterrupted one would. Memory is O(cohort), never
O(population).

Two schemes, as in the DP-FedAvg literature (McMahan et al., ICLR 2018):

- ``fixed``: ``k`` distinct clients uniformly without replacement;
- ``poisson``: every client joins independently with probability ``q = k / population``, so
  the cohort size is Binomial(population, q) and may be empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Distinguishes the sampler's random streams from every other consumer of the run seed.
_SAMPLER_STREAM = 0x5A3B1E


def fixed_cohort(population: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` distinct ids from ``range(population)``, sorted, in O(size) memory.

    Floyd's algorithm (Bentley & Floyd, CACM 1987): one draw per member, no population array.
    """
    chosen: set[int] = set()
    for upper in range(population - size, population):
        candidate = int(rng.integers(0, upper + 1))
        chosen.add(upper if candidate in chosen else candidate)
    return np.array(sorted(chosen), dtype=np.int64)


def poisson_cohort(population: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each id joins independently with probability ``rate``; sorted ids."""
    size = int(rng.binomial(population, rate))
    return fixed_cohort(population, size, rng)


@dataclass(frozen=True)
class CohortSampler:
    """Picks the virtual clients of each round.

    Parameters
    ----------
    population : int
        Number of virtual clients.
    clients_per_round : int
        Cohort size (``fixed``) or expected cohort size (``poisson``).
    seed : int
        Run seed.
    scheme : str
        ``"fixed"`` or ``"poisson"``.
    """

    population: int
    clients_per_round: int
    seed: int
    scheme: str = "fixed"

    @property
    def rate(self) -> float:
        """Probability that a given client is in a given round's cohort."""
        return self.clients_per_round / self.population

    def cohort(self, server_round: int) -> np.ndarray:
        """Sorted virtual client ids for ``server_round`` (1-based)."""
        rng = np.random.default_rng([self.seed, server_round, _SAMPLER_STREAM])
        if self.scheme == "poisson":
            return poisson_cohort(self.population, self.rate, rng)
        return fixed_cohort(self.population, self.clients_per_round, rng)
