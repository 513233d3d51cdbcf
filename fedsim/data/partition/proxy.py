"""The server's proxy split: a stratified slice of the train split held out of every phone's shard.

The server may hold back a proxy split first (:func:`proxy_indices`, for pre-training and
distillation, see :mod:`fedsim.proxy.pretrain`); the partitioners then split only the *client
pool* (:func:`client_pool`), so no phone ever holds a sample the server trained on.
"""

from __future__ import annotations

import numpy as np

from fedsim.data.partition.base import PartitionError, checked_inputs, largest_remainder

# Keeps the proxy split's RNG stream apart from every partitioner's (stream tags 1, 2, 3).
_PROXY_STREAM_TAG = 100


def proxy_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified random ``fraction`` of the train ids: the server's proxy split.

    ``round(fraction * N)`` ids in all, shared out over the classes in proportion to their sizes
    by :func:`largest_remainder`, then drawn uniformly within each class from an RNG seeded by
    ``(seed, proxy stream tag)``. Stratifying keeps the proxy's label mix that of the train split,
    so pre-training sees every class. E.g. class sizes ``[6, 3, 1]`` and ``fraction = 0.3`` give
    3 ids: quotas ``1.8, 0.9, 0.3`` round to ``[2, 1, 0]``.

    Parameters
    ----------
    labels : np.ndarray
        Non-negative integer labels of the train split, ``(N,)``.
    fraction : float
        Share held out, in ``[0, 1)``; ``0`` gives an empty array.
    seed : int
        Non-negative seed; the same ``(labels, fraction, seed)`` give the same ids.

    Returns
    -------
    np.ndarray
        Sorted ``int64`` train ids.
    """
    labels, _, seed = checked_inputs(labels, 1, seed)
    if not 0.0 <= fraction < 1.0:
        raise PartitionError(f"partition: proxy fraction must be in [0, 1), got {fraction}")
    total = round(fraction * len(labels))
    if total == 0:
        return np.empty(0, np.int64)
    class_sizes = np.bincount(labels)
    per_class = largest_remainder(total, class_sizes.astype(np.float64))
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PROXY_STREAM_TAG]))
    picks = [
        rng.choice(np.flatnonzero(labels == c), count, replace=False, shuffle=False)
        for c, count in enumerate(per_class)
        if count > 0
    ]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def client_pool(num_samples: int, proxy: np.ndarray) -> np.ndarray:
    """The sorted ``int64`` train ids in ``[0, num_samples)`` that are not in ``proxy``."""
    keep = np.ones(num_samples, dtype=bool)
    keep[proxy] = False
    return np.flatnonzero(keep).astype(np.int64)
