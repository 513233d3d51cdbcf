"""Pathological non-IID: label-sorted shards, a few classes per client (McMahan et al. 2017).

Selected by ``partition=shards``. Named for *label* shards so as not to be mistaken for a phone's
shard of data (:class:`fedsim.data.shards.ShardSource`, what a client trains on). Modes and
fields: :class:`~fedsim.data.partition.base.Partitioner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.random import Generator

from fedsim.data.partition.base import Partitioner, PartitionError, fill_capped, split_sizes


@dataclass(frozen=True, kw_only=True)
class LabelShardPartitioner(Partitioner):
    """Pathological non-IID shards (McMahan et al. 2017, arXiv:1602.05629).

    Disjoint: sort by label, cut ``P * classes_per_client`` contiguous shards (equal, or lognormal
    sizes under quantity skew) and deal each client ``classes_per_client`` random shards; a shard
    that straddles a class boundary holds two labels, as in the original. Sampled: each client
    picks ``classes_per_client`` distinct classes and splits ``n_i`` evenly over them (remainder to
    the first), capped by the classes' sizes.

    Parameters
    ----------
    classes_per_client : int
        Shards (disjoint) or classes (sampled) per client, in ``[1, number of classes]``.
    """

    classes_per_client: int = 2
    stream_tag: ClassVar[int] = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.classes_per_client < 1:
            k = self.classes_per_client
            raise PartitionError(f"partition: classes_per_client must be >= 1, got {k}")

    def _check_classes(self, num_classes: int) -> None:
        if self.classes_per_client > num_classes:
            raise PartitionError(
                f"partition: classes_per_client {self.classes_per_client} exceeds the "
                f"{num_classes} classes present"
            )

    def disjoint_owners(self, labels: np.ndarray, population: int, rng: Generator) -> np.ndarray:
        self._check_classes(len(np.unique(labels)))
        owner, rest = self.deal_min_samples(len(labels), population, rng)
        rest = rest[np.argsort(labels[rest], kind="stable")]  # ties keep the seeded shuffle
        n_shards = population * self.classes_per_client
        shard_sizes = split_sizes(len(rest), n_shards, 0, self.quantity_skew, rng)
        shard_owner = np.empty(n_shards, np.int64)
        shard_owner[rng.permutation(n_shards)] = np.arange(n_shards) // self.classes_per_client
        owner[rest] = np.repeat(shard_owner, shard_sizes)
        return owner

    def check_pools(self, pool_sizes: np.ndarray) -> None:
        self._check_classes(len(pool_sizes))
        smallest = int(np.sort(pool_sizes)[: self.classes_per_client].sum())
        if smallest < self.min_samples:
            raise PartitionError(
                f"partition: min_samples {self.min_samples} exceeds the {smallest} samples of "
                f"the {self.classes_per_client} smallest classes"
            )

    def sample_counts(self, rng: Generator, pool_sizes: np.ndarray) -> np.ndarray:
        size = self.client_size(rng, int(pool_sizes.sum()))
        chosen = rng.choice(len(pool_sizes), self.classes_per_client, replace=False)
        wanted, capacity = np.zeros_like(pool_sizes), np.zeros_like(pool_sizes)
        wanted[chosen] = size // len(chosen) + (np.arange(len(chosen)) < size % len(chosen))
        capacity[chosen] = pool_sizes[chosen]  # never take from a class the client did not pick
        return fill_capped(wanted, capacity)
