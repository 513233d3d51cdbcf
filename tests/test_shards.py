"""The per-process shard cache: one load per process, pure function of (config, seed, id)."""

import numpy as np

from fedsim.data import shards
from fedsim.data.shards import ShardSource

DIGITS = {"_target_": "fedsim.data.datasets.Digits"}
IID = {"_target_": "fedsim.data.partition.iid.IidPartitioner"}


def test_shard_is_a_pure_function_of_config_seed_and_id() -> None:
    a = ShardSource.from_config(DIGITS, IID, population=10, seed=0)
    b = ShardSource.from_config(dict(DIGITS), dict(IID), population=10, seed=0)
    assert a == b and hash(a) == hash(b)  # equal recipes share the cache
    xa, ya = a(3)
    xb, yb = b(3)
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    # 1437 training digits over 10 phones: 7 phones of 144 and 3 of 143
    assert sorted(len(a(i)[1]) for i in range(10)) == [143] * 3 + [144] * 7


def test_dataset_is_loaded_once_and_replaced_by_the_next_job() -> None:
    first = ShardSource.from_config(DIGITS, IID, population=10, seed=0)
    splits, _ = first.load()
    assert first.load()[0] is splits  # cached, not reloaded
    second = ShardSource.from_config(DIGITS, IID, population=10, seed=1)
    assert second.load()[0] is splits  # same dataset, new partition
    assert list(shards._PARTITION) == [second]
    assert not np.array_equal(first(0)[0], second(0)[0])  # the seed changes the partition
    other = ShardSource.from_config({**DIGITS, "test_fraction": 0.3}, IID, 10, 0)
    other.load()
    assert list(shards._DATASET) == [other.dataset_spec]  # at most one dataset held
