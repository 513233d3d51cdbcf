"""Partitioners in both modes, on small label arrays whose answers can be worked out by hand."""

import tracemalloc

import numpy as np
import pytest

from fedsim.data.partition.base import (
    DisjointPartition,
    PartitionError,
    SampledPartition,
    fill_capped,
    largest_remainder,
)
from fedsim.data.partition.dirichlet import DirichletPartitioner
from fedsim.data.partition.iid import IidPartitioner
from fedsim.data.partition.label_shards import LabelShardPartitioner

TEN_BY_100 = np.repeat(np.arange(10), 100)  # 1000 samples, 100 of each of 10 classes
TEN_BY_20 = np.repeat(np.arange(10), 20)  # 200 samples, 20 of each class
ALL_RULES = [IidPartitioner, DirichletPartitioner, LabelShardPartitioner]


def shards_of(partition) -> list[np.ndarray]:
    return [partition.indices(i) for i in range(partition.population)]


def assert_disjoint_cover(partition, n_total: int, min_samples: int) -> list[np.ndarray]:
    shards = shards_of(partition)
    every = np.concatenate(shards)
    assert np.array_equal(np.sort(every), np.arange(n_total))  # each sample exactly once
    assert all(len(s) >= min_samples for s in shards)
    assert all(s.dtype == np.int64 and np.all(np.diff(s) > 0) for s in shards)  # sorted
    assert [partition.size(i) for i in range(partition.population)] == [len(s) for s in shards]
    return shards


def mean_max_class_share(partition, labels: np.ndarray) -> float:
    shares = [np.bincount(labels[s]).max() / len(s) for s in shards_of(partition) if len(s)]
    return float(np.mean(shares))


def test_largest_remainder_by_hand() -> None:
    assert largest_remainder(10, np.array([1.0, 1.0, 1.0])).tolist() == [4, 3, 3]
    # quotas 3.5, 1.75, 1.75 -> floors 3, 1, 1; the 2 leftover units go to the two 0.75 fractions
    assert largest_remainder(7, np.array([0.5, 0.25, 0.25])).tolist() == [3, 2, 2]


def test_fill_capped_moves_overflow_to_room() -> None:
    # Class 0 wants 8 but holds 5; the 3 extra go to classes 1 and 2 by their spare room (4, 4):
    # quotas 1.5, 1.5 -> floors 1, 1, and the leftover unit to the first tie.
    assert fill_capped(np.array([8, 1, 1]), np.array([5, 5, 5])).tolist() == [5, 3, 2]
    # Asking for more than the pools hold gives everything they hold.
    assert fill_capped(np.array([9, 0]), np.array([3, 2])).tolist() == [3, 2]


@pytest.mark.parametrize(("n_total", "expected"), [(100, [10] * 10), (103, [11] * 3 + [10] * 7)])
def test_iid_equal_sizes_exactly(n_total: int, expected: list[int]) -> None:
    partition = IidPartitioner().split(np.zeros(n_total, np.int64), 10, seed=0)
    assert isinstance(partition, DisjointPartition)
    shards = assert_disjoint_cover(partition, n_total, 1)
    assert [len(s) for s in shards] == expected


@pytest.mark.parametrize("rule", ALL_RULES)
def test_quantity_skew_gives_unequal_sizes_summing_to_n(rule) -> None:
    partition = rule(quantity_skew=1.0, min_samples=5).split(TEN_BY_100, 20, seed=0)
    sizes = [len(s) for s in assert_disjoint_cover(partition, 1000, 5)]
    assert max(sizes) > 2 * min(sizes)


@pytest.mark.parametrize("rule", ALL_RULES)
def test_disjoint_covers_each_sample_once(rule) -> None:
    assert_disjoint_cover(rule(min_samples=3).split(TEN_BY_100, 50, seed=1), 1000, 3)


def test_dirichlet_small_alpha_skews_labels_more() -> None:
    # 1000 samples, 20 clients of ~50. alpha=100 is near IID: ~5 of each class per client, so the
    # largest class share is ~0.13. alpha=0.1 gives most clients one dominant class (0.72 here).
    share = {
        a: mean_max_class_share(DirichletPartitioner(alpha=a).split(TEN_BY_100, 20, 0), TEN_BY_100)
        for a in (0.1, 1.0, 100.0)
    }
    assert share[0.1] > 0.5 > share[1.0] > share[100.0]
    assert share[100.0] < 0.2
    assert_disjoint_cover(DirichletPartitioner(alpha=0.1).split(TEN_BY_100, 20, 0), 1000, 1)


def test_shards_give_each_client_two_classes() -> None:
    # 200 samples sorted by label, cut into 10 x 2 = 20 shards of 10: each class is exactly two
    # shards, so each client (2 shards) holds at most 2 classes, with 10 or 20 samples of each.
    config = LabelShardPartitioner(classes_per_client=2, min_samples=0)
    partition = config.split(TEN_BY_20, 10, seed=0)
    for shard in assert_disjoint_cover(partition, 200, 0):
        counts = np.bincount(TEN_BY_20[shard])
        assert len(shard) == 20
        assert np.count_nonzero(counts) <= 2 and set(counts[counts > 0]) <= {10, 20}


@pytest.mark.parametrize("rule", ALL_RULES)
@pytest.mark.parametrize("samples_per_client", [None, 30])
def test_same_seed_same_partition_other_seed_differs(rule, samples_per_client) -> None:
    config = rule(samples_per_client=samples_per_client)
    a, b, c = (config.split(TEN_BY_100, 20, seed) for seed in (7, 7, 8))
    assert all(np.array_equal(x, y) for x, y in zip(shards_of(a), shards_of(b), strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(shards_of(a), shards_of(c), strict=True))


@pytest.mark.parametrize("rule", ALL_RULES)
def test_sampled_million_clients(rule) -> None:
    config = rule(samples_per_client=40)
    partition = config.split(TEN_BY_100, 1_000_000, seed=3)
    assert isinstance(partition, SampledPartition)
    for client in (0, 1, 123_456, 999_999):
        shard = partition.indices(client)
        assert len(shard) == 40 == partition.size(client)
        assert shard.min() >= 0 and shard.max() < 1000
        assert np.all(np.diff(shard) > 0)  # sorted and distinct
        fresh_split = config.split(TEN_BY_100, 1_000_000, seed=3)
        assert np.array_equal(shard, fresh_split.indices(client))
        other_seed = config.split(TEN_BY_100, 1_000_000, seed=4)
        assert not np.array_equal(shard, other_seed.indices(client))


def test_sampled_split_allocates_nothing_per_client() -> None:
    # One int64 per client would be 8 MB for a million clients; pools for 1000 samples are ~16 kB.
    tracemalloc.start()
    DirichletPartitioner(samples_per_client=10).split(TEN_BY_100, 1_000_000, seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000


def test_sampled_shards_split_evenly_over_distinct_classes() -> None:
    # 11 samples over 2 distinct classes: 6 and 5.
    config = LabelShardPartitioner(classes_per_client=2, samples_per_client=11)
    partition = config.split(TEN_BY_20, 1000, seed=0)
    for client in range(0, 1000, 37):
        counts = np.bincount(TEN_BY_20[partition.indices(client)])
        assert sorted(counts[counts > 0].tolist()) == [5, 6]


def test_sampled_dirichlet_keeps_size_when_a_class_is_small() -> None:
    # Class 1 has only 2 samples; with alpha=0.05 most clients' multinomial asks for more of it.
    labels = np.array([0] * 100 + [1] * 2)
    partition = DirichletPartitioner(alpha=0.05, samples_per_client=50).split(labels, 500, seed=0)
    assert all(len(partition.indices(i)) == 50 for i in range(500))


def test_sampled_quantity_skew_sizes_vary_and_match_indices() -> None:
    config = IidPartitioner(samples_per_client=20, quantity_skew=1.0, min_samples=2)
    partition = config.split(TEN_BY_100, 10**6, seed=0)
    sizes = [partition.size(i) for i in range(200)]
    assert sizes == [len(partition.indices(i)) for i in range(200)]
    assert min(sizes) >= 2 and max(sizes) <= 1000 and len(set(sizes)) > 10


def test_disjoint_population_too_large_is_one_line() -> None:
    with pytest.raises(PartitionError) as err:
        IidPartitioner().split(np.zeros(1437, np.int64), 1_000_000, seed=0)
    assert str(err.value) == (
        "partition: population 1000000 x min_samples 1 exceeds the 1437 training samples; "
        "set partition.samples_per_client to draw each client's shard from the pool "
        "(overlapping shards)"
    )


@pytest.mark.parametrize(
    ("rule", "fields", "field"),
    [
        (DirichletPartitioner, {"alpha": 0.0}, "alpha"),
        (LabelShardPartitioner, {"classes_per_client": 0}, "classes_per_client"),
        (IidPartitioner, {"samples_per_client": 0}, "samples_per_client"),
        (IidPartitioner, {"samples_per_client": 3, "min_samples": 5}, "samples_per_client"),
        (IidPartitioner, {"quantity_skew": -0.5}, "quantity_skew"),
        (IidPartitioner, {"min_samples": -1}, "min_samples"),
    ],
)
def test_invalid_config_names_the_field(rule, fields: dict, field: str) -> None:
    with pytest.raises(PartitionError, match=f"^partition: {field} ") as err:
        rule(**fields)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("config", "population", "seed", "field"),
    [
        (LabelShardPartitioner(classes_per_client=11), 5, 0, "classes_per_client"),  # 10 classes
        (
            LabelShardPartitioner(classes_per_client=11, samples_per_client=5), 5, 0,
            "classes_per_client",
        ),
        (IidPartitioner(samples_per_client=201), 5, 0, "samples_per_client"),  # 200 samples
        (IidPartitioner(), 0, 0, "population"),
        (IidPartitioner(), 5, -1, "seed"),
    ],
)
def test_invalid_split_names_the_field(config, population: int, seed: int, field: str) -> None:
    with pytest.raises(PartitionError, match=f"^partition: {field} ") as err:
        config.split(TEN_BY_20, population, seed)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("samples_per_client", [None, 3])
@pytest.mark.parametrize("client_id", [-1, 5])
def test_client_id_out_of_range(samples_per_client, client_id: int) -> None:
    partition = IidPartitioner(samples_per_client=samples_per_client).split(TEN_BY_20, 5, 0)
    for lookup in (partition.indices, partition.size):
        with pytest.raises(PartitionError, match=rf"^partition: client_id {client_id} is outside"):
            lookup(client_id)
