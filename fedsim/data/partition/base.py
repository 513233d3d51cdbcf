"""What every partitioner shares: the :class:`Partition` it returns, the ``split`` skeleton, and
the pure counting helpers the rules are built from.

A partitioner is a frozen config (Hydra builds it from ``_target_``; the rules are
:mod:`~fedsim.data.partition.iid`, :mod:`~fedsim.data.partition.dirichlet` and
:mod:`~fedsim.data.partition.label_shards`). ``split(labels, population, seed)`` returns a
:class:`Partition` that maps a client id to sorted ``int64`` train-set indices. A shard is a pure
function of (labels, config, population, seed, client id) and nothing is stored per client, so
millions of virtual phones cost no more memory than the dataset.

* **Disjoint** mode (``samples_per_client=None``): every sample belongs to exactly one client, as
  in the papers cited by each rule. Stored as sample ids grouped by owner plus ``P + 1`` offsets,
  so ``P <= N``. Every client is first dealt ``min_samples`` samples IID, which guarantees no
  client is short without resample-until-it-fits loops; the rule splits the rest.
* **Sampled** mode (an int ``n``): a client's shard is drawn on request from an RNG seeded by
  ``(seed, client_id, rule tag)``; only per-class index pools (``O(N)``) are precomputed. Shards of
  different clients may overlap: each virtual client is an independent draw from the data
  distribution, which is what lets ``P`` exceed ``N``.

``quantity_skew`` is the sigma of a lognormal on shard sizes, as in FedLab's unbalanced splits
(Zeng et al. 2021, arXiv:2107.11621).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
from numpy.random import Generator

from fedsim.errors import UserInputError


class PartitionError(UserInputError):
    """A partitioner config does not fit the labels or population; one line naming the field."""


class Partition(Protocol):
    """Read-only map from a client id in ``[0, population)`` to its train-set indices.

    ``indices`` returns ``int64`` ids sorted ascending (treat them as read-only); ``size`` is their
    count, computed without building them.
    """

    @property
    def population(self) -> int: ...

    def indices(self, client_id: int) -> np.ndarray: ...

    def size(self, client_id: int) -> int: ...


def _client(client_id: int, population: int) -> int:
    i = operator.index(client_id)
    if not 0 <= i < population:
        raise PartitionError(f"partition: client_id {i} is outside [0, {population})")
    return i


def checked_inputs(labels: np.ndarray, population: int, seed: int) -> tuple[np.ndarray, int, int]:
    """``(labels as int64, population, seed)``, or a :class:`PartitionError` naming the bad one."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or labels.dtype.kind not in "iu":
        got = f"{labels.dtype}{labels.shape}"
        raise PartitionError(f"partition: labels must be a non-empty 1-D int array, got {got}")
    if labels.min() < 0:
        raise PartitionError(f"partition: labels must be >= 0, got {labels.min()}")
    population, seed = operator.index(population), operator.index(seed)
    if population < 1:
        raise PartitionError(f"partition: population must be >= 1, got {population}")
    if seed < 0:
        raise PartitionError(f"partition: seed must be >= 0, got {seed}")
    return labels.astype(np.int64, copy=False), population, seed


def largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` that sum exactly to ``total`` (Hamilton's method).

    Each entry gets ``floor(total * w / sum(w))``; the leftover units go to the largest fractional
    parts. E.g. ``largest_remainder(10, [1, 1, 1]) == [4, 3, 3]``.
    """
    quotas = total * (weights / weights.sum())
    counts = np.floor(quotas).astype(np.int64)
    leftover = int(total - counts.sum())
    # counts - quotas is minus the fractional part: the most negative come first.
    counts[np.argsort(counts - quotas, kind="stable")[:leftover]] += 1
    return counts


def split_sizes(total: int, parts: int, floor: int, skew: float, rng: Generator) -> np.ndarray:
    """Sizes of ``parts`` pieces of ``total`` items, each at least ``floor``, summing to ``total``.

    ``skew == 0``: equal pieces, the remainder one each to the first pieces (103 into 10 gives three
    11s and seven 10s). Otherwise ``floor`` goes to every piece and the rest is split by
    lognormal(0, skew) weights with largest-remainder rounding.
    """
    if skew == 0:
        return total // parts + (np.arange(parts) < total % parts)
    return floor + largest_remainder(total - parts * floor, rng.lognormal(0.0, skew, parts))


def fill_capped(wanted: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Clip ``wanted`` to ``capacity`` and give the overflow to entries with room, in proportion.

    The total ``min(wanted.sum(), capacity.sum())`` is kept, so a client's size does not depend on
    whether its favourite class happens to be small. E.g. wanted ``[8, 1, 1]``, capacity
    ``[5, 5, 5]`` gives ``[5, 3, 2]``.
    """
    counts = np.minimum(wanted, capacity)
    deficit = min(int(wanted.sum()), int(capacity.sum())) - int(counts.sum())
    if deficit > 0:
        extra = largest_remainder(deficit, (capacity - counts).astype(np.float64))
        counts = np.minimum(counts + extra, capacity)
    return counts


@dataclass(frozen=True, eq=False)
class DisjointPartition:
    """Each sample owned by one client: client ``i`` holds ``order[offsets[i]:offsets[i + 1]]``.

    ``order`` is ``int64 (N,)``: sample ids grouped by owner, ascending within a group, read-only.
    ``offsets`` is ``int64 (population + 1,)``.
    """

    population: int
    order: np.ndarray
    offsets: np.ndarray

    def indices(self, client_id: int) -> np.ndarray:
        i = _client(client_id, self.population)
        return self.order[self.offsets[i] : self.offsets[i + 1]]  # a read-only view, no copy

    def size(self, client_id: int) -> int:
        i = _client(client_id, self.population)
        return int(self.offsets[i + 1] - self.offsets[i])

    @classmethod
    def from_owners(cls, owner: np.ndarray, population: int) -> DisjointPartition:
        """Build from ``owner`` (``(N,)``): ``owner[j]`` is the client holding sample ``j``."""
        order = np.argsort(owner, kind="stable").astype(np.int64)  # stable: ids ascend per client
        order.flags.writeable = False  # indices() hands out views of it
        sizes = np.bincount(owner, minlength=population)
        return cls(population, order, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))


@dataclass(frozen=True, eq=False)
class SampledPartition:
    """Shards drawn on request from pools (one per class, or one for IID); they may overlap.

    Client ``i`` draws from ``SeedSequence([seed, i, partitioner.stream_tag])``: first its count per
    pool (``partitioner.sample_counts``), then that many distinct ids from each pool
    ``pool_ids[pool_offsets[k]:pool_offsets[k + 1]]``. ``population`` may exceed ``N``.
    """

    population: int
    seed: int
    pool_ids: np.ndarray
    pool_offsets: np.ndarray
    partitioner: Partitioner

    def _plan(self, client_id: int) -> tuple[Generator, np.ndarray]:
        i = _client(client_id, self.population)
        entropy = [self.seed, i, self.partitioner.stream_tag]
        rng = np.random.default_rng(np.random.SeedSequence(entropy))
        return rng, self.partitioner.sample_counts(rng, np.diff(self.pool_offsets))

    def size(self, client_id: int) -> int:
        # Only the cheap per-pool counts are drawn; the ids would come next from the same stream.
        return int(self._plan(client_id)[1].sum())

    def indices(self, client_id: int) -> np.ndarray:
        rng, counts = self._plan(client_id)
        bounds = zip(self.pool_offsets[:-1], self.pool_offsets[1:], counts, strict=True)
        picks = [
            self.pool_ids[start + rng.choice(stop - start, count, replace=False, shuffle=False)]
            for start, stop, count in bounds
            if count > 0
        ]
        return np.sort(np.concatenate(picks)) if picks else np.empty(0, np.int64)


@dataclass(frozen=True, kw_only=True)
class Partitioner:
    """Fields and the ``split`` skeleton shared by every rule; subclasses supply the rule.

    A rule overrides ``disjoint_owners`` and ``sample_counts`` (and, where its config can ask
    more than the class pools hold, ``check_pools``), and sets its own ``stream_tag``.

    Parameters
    ----------
    samples_per_client : int or None
        ``None``: disjoint split of the pool. An int ``n``: sampled mode, each client draws ``n``
        samples (``n`` is the median size under quantity skew).
    quantity_skew : float
        Sigma of the lognormal on shard sizes; ``0`` gives equal sizes.
    min_samples : int
        Fewest samples any client gets; ``0`` is allowed and permits empty clients.
    """

    samples_per_client: int | None = None
    quantity_skew: float = 0.0
    min_samples: int = 1
    stream_tag: ClassVar[int]  # keeps each rule's RNG streams apart for the same seed

    def __post_init__(self) -> None:
        if self.quantity_skew < 0:
            raise PartitionError(f"partition: quantity_skew must be >= 0, got {self.quantity_skew}")
        if self.min_samples < 0:
            raise PartitionError(f"partition: min_samples must be >= 0, got {self.min_samples}")
        n, least = self.samples_per_client, max(1, self.min_samples)
        if n is not None and n < least:
            raise PartitionError(f"partition: samples_per_client must be >= {least}, got {n}")

    def split(self, labels: np.ndarray, population: int, seed: int) -> Partition:
        """Assign the samples with these labels to ``population`` clients.

        Parameters
        ----------
        labels : np.ndarray
            Non-negative integer class labels of the training set, ``(N,)``.
        population : int
            Number of virtual clients ``P``.
        seed : int
            Non-negative root seed; the same seed gives the same partition.

        Returns
        -------
        Partition
            A :class:`DisjointPartition` or a :class:`SampledPartition`.
        """
        labels, population, seed = checked_inputs(labels, population, seed)
        n_total = len(labels)
        if self.samples_per_client is None:
            # Offsets are O(P), so P <= N is required even with min_samples = 0.
            if population * max(self.min_samples, 1) > n_total:
                raise PartitionError(
                    f"partition: population {population} x min_samples {self.min_samples} exceeds "
                    f"the {n_total} training samples; set partition.samples_per_client to draw "
                    "each client's shard from the pool (overlapping shards)"
                )
            rng = np.random.default_rng(np.random.SeedSequence([seed, self.stream_tag]))
            owner = self.disjoint_owners(labels, population, rng)
            return DisjointPartition.from_owners(owner, population)
        # Under quantity skew n is only the median and each draw is clipped to [min_samples, N].
        field = "min_samples" if self.quantity_skew > 0 else "samples_per_client"
        if (value := getattr(self, field)) > n_total:
            raise PartitionError(
                f"partition: {field} {value} exceeds the {n_total} training samples"
            )
        pool_ids, pool_offsets = self.pools(labels)
        self.check_pools(np.diff(pool_offsets))
        return SampledPartition(population, seed, pool_ids, pool_offsets, self)

    def deal_min_samples(
        self, n_total: int, population: int, rng: Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Owners with ``min_samples`` random samples dealt per client, and the rest (shuffled)."""
        perm = rng.permutation(n_total)
        dealt = population * self.min_samples
        owner = np.empty(n_total, np.int64)
        owner[perm[:dealt]] = np.arange(dealt) // max(self.min_samples, 1)
        return owner, perm[dealt:]

    def client_size(self, rng: Generator, n_total: int) -> int:
        """Sampled size ``n``, or ``round(n * lognormal(0, skew))`` clipped to [min_samples, N]."""
        n = self.samples_per_client
        if self.quantity_skew == 0:
            return n
        draw = round(n * rng.lognormal(0.0, self.quantity_skew))
        return int(np.clip(draw, self.min_samples, n_total))

    def pools(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sample ids grouped by class (empty classes dropped) and the ``(K + 1,)`` pool offsets."""
        counts = np.bincount(labels)
        offsets = np.concatenate([[0], np.cumsum(counts[counts > 0])])
        return np.argsort(labels, kind="stable"), offsets

    def check_pools(self, pool_sizes: np.ndarray) -> None:
        """Reject, at split time, a sampled-mode config the pools cannot serve."""

    def disjoint_owners(self, labels: np.ndarray, population: int, rng: Generator) -> np.ndarray:
        """``(N,)`` owner of each sample in disjoint mode."""
        raise NotImplementedError

    def sample_counts(self, rng: Generator, pool_sizes: np.ndarray) -> np.ndarray:
        """One sampled-mode client's count per pool."""
        raise NotImplementedError

