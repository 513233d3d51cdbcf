"""The cohort sampler: seeded, node-id free, O(cohort) memory."""

import numpy as np
import pytest

from fedsim.server.sampler import CohortSampler, fixed_cohort, poisson_cohort


def test_fixed_cohort_is_distinct_sorted_and_in_range() -> None:
    rng = np.random.default_rng(0)
    cohort = fixed_cohort(100, 10, rng)
    assert len(cohort) == 10
    assert len(set(cohort.tolist())) == 10
    assert cohort.tolist() == sorted(cohort.tolist())
    assert cohort.min() >= 0 and cohort.max() < 100


def test_fixed_cohort_takes_everyone_when_size_equals_population() -> None:
    assert fixed_cohort(7, 7, np.random.default_rng(3)).tolist() == list(range(7))


def test_fixed_cohort_is_uniform() -> None:
    # Each of 10 ids should be picked with probability 3/10: over 20,000 draws the count per
    # id is Binomial(20000, 0.3), mean 6000, sd ~65; 6000 +- 400 is over 6 sd.
    rng = np.random.default_rng(1)
    counts = np.zeros(10)
    for _ in range(20_000):
        counts[fixed_cohort(10, 3, rng)] += 1
    assert np.all(np.abs(counts - 6000) < 400)


def test_same_seed_same_cohorts_different_seed_different() -> None:
    a = CohortSampler(population=1000, clients_per_round=10, seed=0)
    b = CohortSampler(population=1000, clients_per_round=10, seed=0)
    c = CohortSampler(population=1000, clients_per_round=10, seed=1)
    for rnd in (1, 2, 50):
        assert a.cohort(rnd).tolist() == b.cohort(rnd).tolist()
    assert a.cohort(1).tolist() != c.cohort(1).tolist()
    assert a.cohort(1).tolist() != a.cohort(2).tolist()


def test_cohort_depends_only_on_seed_and_round() -> None:
    # Asking for round 5 first, or after rounds 1-4, gives the same answer: resume-safe.
    sampler = CohortSampler(population=500, clients_per_round=20, seed=7)
    direct = sampler.cohort(5).tolist()
    for rnd in range(1, 5):
        sampler.cohort(rnd)
    assert sampler.cohort(5).tolist() == direct


def test_million_client_population() -> None:
    sampler = CohortSampler(population=1_000_000, clients_per_round=10, seed=0)
    cohort = sampler.cohort(1)
    assert len(cohort) == 10 and cohort.max() < 1_000_000


def test_poisson_cohort_size_is_binomial() -> None:
    # q = 10/100; cohort sizes over 2000 rounds average 10 with sd sqrt(100*.1*.9)=3 per round,
    # so the mean of 2000 is within 10 +- 0.3 (4.5 standard errors of 0.067).
    sampler = CohortSampler(population=100, clients_per_round=10, seed=0, scheme="poisson")
    sizes = [len(sampler.cohort(r)) for r in range(1, 2001)]
    assert abs(np.mean(sizes) - 10) < 0.3
    assert np.std(sizes) == pytest.approx(3.0, abs=0.3)
    assert len(set(sizes)) > 5  # it really varies


def test_poisson_cohort_can_be_empty() -> None:
    rng = np.random.default_rng(0)
    assert len(poisson_cohort(10, 0.0, rng)) == 0
