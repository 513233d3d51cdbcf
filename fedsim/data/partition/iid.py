"""Uniformly random shards: the IID baseline every non-IID rule is compared against.

Disjoint: a seeded permutation of the samples cut into ``population`` pieces (equal, or
lognormal sizes under quantity skew). Sampled: each client draws its ``n`` samples from one pool,
the whole client pool. Modes and fields: :class:`~fedsim.data.partition.base.Partitioner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.random import Generator

from fedsim.data.partition.base import Partitioner, split_sizes


@dataclass(frozen=True, kw_only=True)
class IidPartitioner(Partitioner):
    """Uniformly random shards: the IID baseline."""

    stream_tag: ClassVar[int] = 1

    def disjoint_owners(self, labels: np.ndarray, population: int, rng: Generator) -> np.ndarray:
        n_total = len(labels)
        perm = rng.permutation(n_total)
        sizes = split_sizes(n_total, population, self.min_samples, self.quantity_skew, rng)
        owner = np.empty(n_total, np.int64)
        owner[perm] = np.repeat(np.arange(population), sizes)
        return owner

    def pools(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(len(labels), dtype=np.int64), np.array([0, len(labels)])  # one pool

    def sample_counts(self, rng: Generator, pool_sizes: np.ndarray) -> np.ndarray:
        return np.array([self.client_size(rng, int(pool_sizes[0]))])

