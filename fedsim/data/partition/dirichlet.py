"""Label skew from a symmetric Dirichlet (Hsu, Qi & Brown 2019, arXiv:1909.06335).

The standard non-IID benchmark split: each client's class mix is a Dirichlet draw, so a small
``alpha`` leaves each client few classes. Modes and fields:
:class:`~fedsim.data.partition.base.Partitioner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.random import Generator

from fedsim.data.partition.base import Partitioner, PartitionError, fill_capped


@dataclass(frozen=True, kw_only=True)
class DirichletPartitioner(Partitioner):
    """Label skew from a symmetric Dirichlet (Hsu, Qi & Brown 2019, arXiv:1909.06335).

    Disjoint: for each class c, shares over the clients ``~ Dir(alpha * 1_P)`` (times each client's
    lognormal quantity weight, renormalised) cut the class-c samples at the cumulative-sum points.
    Sampled: a client's class mix is ``p ~ Dir(alpha * 1_C)`` and its counts ``~ Mult(n_i, p)``,
    capped at each class's size with the overflow moved to other classes (:func:`fill_capped`).

    Parameters
    ----------
    alpha : float
        Concentration, ``> 0``. Small: few classes per client; ``alpha -> inf``: IID.
    """

    alpha: float = 0.5
    stream_tag: ClassVar[int] = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.alpha > 0:
            raise PartitionError(f"partition: alpha must be > 0, got {self.alpha}")

    def disjoint_owners(self, labels: np.ndarray, population: int, rng: Generator) -> np.ndarray:
        owner, rest = self.deal_min_samples(len(labels), population, rng)
        rest = rest[np.argsort(labels[rest], kind="stable")]  # by class, shuffled within it
        class_sizes = np.bincount(labels[rest], minlength=labels.max() + 1)
        skew = self.quantity_skew
        weight = rng.lognormal(0.0, skew, population) if skew > 0 else 1.0
        start = 0
        for n_class in class_sizes:
            share = rng.dirichlet(np.full(population, self.alpha)) * weight
            cuts = np.rint(np.cumsum(share / share.sum()) * n_class).astype(np.int64)
            cuts = np.minimum(cuts, n_class)
            cuts[-1] = n_class  # float rounding must not drop the last samples
            counts = np.diff(cuts, prepend=0)
            owner[rest[start : start + n_class]] = np.repeat(np.arange(population), counts)
            start += n_class
        return owner

    def sample_counts(self, rng: Generator, pool_sizes: np.ndarray) -> np.ndarray:
        size = self.client_size(rng, int(pool_sizes.sum()))
        wanted = rng.multinomial(size, rng.dirichlet(np.full(len(pool_sizes), self.alpha)))
        return fill_capped(wanted, pool_sizes)

