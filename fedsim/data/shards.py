"""Serve a virtual client's shard, and the server's proxy split, from a per-process cache.

A shard is a pure function of (dataset, partition, population, seed, proxy split, client id).
Each process (the server, every Ray actor) loads the dataset and computes the partition once, on
first use, and afterwards answers ``shard(client_id)`` with one fancy-index into arrays it
already holds: no reload, no re-partitioning per call, and nothing stored per client, so memory
does not grow with the population.

When the server pre-trains on a proxy split (``fedsim.proxy.pretrain``), that split is held out
of the train split first (:mod:`fedsim.data.partition.proxy`) and the partitioner sees only the
rest, the *client pool*: no phone holds a sample the server trained on. The proxy split depends
on its own fraction and seed and not on the run seed, so every run over the same dataset holds
out the same samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from hydra.utils import instantiate

from fedsim.data.splits import DatasetSplits
from fedsim.data.partition.base import Partition, PartitionError
from fedsim.data.partition.proxy import client_pool, proxy_indices


@dataclass(frozen=True, eq=False)
class _TrainSplit:
    """How one :class:`ShardSource` divides the train split between the server and the phones."""

    partition: Partition  # over the client pool: its indices are positions in `pool`
    pool: np.ndarray | None  # train ids of the client pool; None: the whole train split
    proxy: np.ndarray  # train ids of the server's proxy split (empty without one)


# This process's dataset and partition. One entry each: a Hydra multirun runs many jobs in one
# process, and Fashion-MNIST alone is ~200 MB, so a new job's data replaces the last job's.
_DATASET: dict[str, DatasetSplits] = {}
_PARTITION: dict[ShardSource, _TrainSplit] = {}


@dataclass(frozen=True)
class ShardSource:
    """Where every virtual client's training data, and the server's proxy data, come from.

    Parameters
    ----------
    dataset_spec, partition_spec : str
        JSON of the Hydra ``dataset`` and ``partition`` nodes (each with a ``_target_``).
    population : int
        Number of virtual clients.
    seed : int
        Run seed: the partition is drawn from it.
    proxy_fraction : float
        Share of the train split held out of every shard as the server's proxy split, in
        ``[0, 1)``; ``0`` (no proxy split) partitions the whole train split, exactly as before
        proxy splits existed.
    proxy_seed : int
        Seed of the proxy split (``pretrain.seed``), independent of the run seed.
    """

    dataset_spec: str
    partition_spec: str
    population: int
    seed: int
    proxy_fraction: float = 0.0
    proxy_seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.proxy_fraction < 1.0:
            raise PartitionError(
                f"pretrain.fraction: must be in [0, 1), got {self.proxy_fraction}"
            )

    @classmethod
    def from_config(
        cls,
        dataset: dict[str, Any],
        partition: dict[str, Any],
        population: int,
        seed: int,
        proxy_fraction: float = 0.0,
        proxy_seed: int = 0,
    ) -> ShardSource:
        return cls(
            json.dumps(dataset, sort_keys=True), json.dumps(partition, sort_keys=True),
            population, seed, proxy_fraction, proxy_seed,
        )

    def _train_split(self) -> tuple[DatasetSplits, _TrainSplit]:
        if self.dataset_spec not in _DATASET:
            _DATASET.clear()
            _DATASET[self.dataset_spec] = instantiate(json.loads(self.dataset_spec)).load()
        splits = _DATASET[self.dataset_spec]
        if self not in _PARTITION:
            _PARTITION.clear()
            partitioner = instantiate(json.loads(self.partition_spec))
            labels = splits.train.y
            proxy = proxy_indices(labels, self.proxy_fraction, self.proxy_seed)
            # No proxy split: the partitioner sees the train labels themselves, so shards are
            # bit-identical to runs that predate proxy splits.
            pool = client_pool(len(labels), proxy) if len(proxy) else None
            pool_labels = labels if pool is None else labels[pool]
            partition = partitioner.split(pool_labels, self.population, self.seed)
            _PARTITION[self] = _TrainSplit(partition, pool, proxy)
        return splits, _PARTITION[self]

    def load(self) -> tuple[DatasetSplits, Partition]:
        """The dataset and its partition, computed once per process.

        With a proxy split the partition is over the client pool: its indices are positions in
        the pool, not train ids (``__call__`` maps them back).
        """
        splits, train_split = self._train_split()
        return splits, train_split.partition

    def indices(self, client_id: int) -> np.ndarray:
        """Sorted train ids of one virtual client's shard."""
        train_split = self._train_split()[1]
        idx = train_split.partition.indices(client_id)
        # Pool positions -> train ids; both ascend, so the shard stays sorted.
        return idx if train_split.pool is None else train_split.pool[idx]

    def __call__(self, client_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of one virtual client's shard."""
        splits = self._train_split()[0]
        idx = self.indices(client_id)
        return splits.train.x[idx], splits.train.y[idx]

    def proxy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of the server's proxy split; empty arrays when ``proxy_fraction == 0``."""
        splits, train_split = self._train_split()
        idx = train_split.proxy
        return splits.train.x[idx], splits.train.y[idx]

    def proxy_indices(self) -> np.ndarray:
        """Sorted train ids of the server's proxy split (a read-only view)."""
        ids = self._train_split()[1].proxy.view()
        ids.flags.writeable = False
        return ids
