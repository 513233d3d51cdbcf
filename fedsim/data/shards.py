"""Serve a virtual client's shard from a per-process cache.

A shard is a pure function of (dataset, partition, population, seed, client id). Each process
(the server, every Ray actor) loads the dataset and computes the partition once, on first use,
and afterwards answers ``shard(client_id)`` with one fancy-index into arrays it already holds:
no reload, no re-partitioning per call, and nothing stored per client, so memory does not grow
with the population.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from hydra.utils import instantiate

from fedsim.data.datasets import DatasetSplits
from fedsim.data.partition import Partition

# This process's dataset and partition. One entry each: a Hydra multirun runs many jobs in one
# process, and Fashion-MNIST alone is ~200 MB, so a new job's data replaces the last job's.
_DATASET: dict[str, DatasetSplits] = {}
_PARTITION: dict[ShardSource, Partition] = {}


@dataclass(frozen=True)
class ShardSource:
    """Where every virtual client's training data comes from.

    Parameters
    ----------
    dataset_spec, partition_spec : str
        JSON of the Hydra ``dataset`` and ``partition`` nodes (each with a ``_target_``).
    population : int
        Number of virtual clients.
    seed : int
        Run seed: the partition is drawn from it.
    """

    dataset_spec: str
    partition_spec: str
    population: int
    seed: int

    @classmethod
    def from_config(
        cls, dataset: dict[str, Any], partition: dict[str, Any], population: int, seed: int
    ) -> ShardSource:
        return cls(
            json.dumps(dataset, sort_keys=True), json.dumps(partition, sort_keys=True),
            population, seed,
        )

    def load(self) -> tuple[DatasetSplits, Partition]:
        """The dataset and its partition, computed once per process."""
        if self.dataset_spec not in _DATASET:
            _DATASET.clear()
            _DATASET[self.dataset_spec] = instantiate(json.loads(self.dataset_spec)).load()
        splits = _DATASET[self.dataset_spec]
        if self not in _PARTITION:
            _PARTITION.clear()
            partitioner = instantiate(json.loads(self.partition_spec))
            _PARTITION[self] = partitioner.split(splits.train.y, self.population, self.seed)
        return splits, _PARTITION[self]

    def __call__(self, client_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of one virtual client's shard."""
        splits, partition = self.load()
        idx = partition.indices(client_id)
        return splits.train.x[idx], splits.train.y[idx]
