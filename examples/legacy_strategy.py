"""A legacy user strategy: Flower's pre-Message-API ``FedAvg`` with ``aggregate_fit`` overridden.

Most Flower baselines subclass ``flwr.server.strategy``; fedsim runs them by ``_target_``
through :class:`fedsim.strategy.legacy.LegacyStrategy`::

    python run_sim.py strategy._target_=examples.legacy_strategy.CappedFedAvg

``aggregate_fit`` receives one ``(ClientProxy, FitRes)`` per phone of the cohort fedsim's
sampler chose, in phone-id order (``proxy.cid`` is the phone's id). This one caps each client's
FedAvg weight at ``cap`` times the cohort's median sample count, so that under quantity skew no
single phone with a huge shard dominates the average, then aggregates as FedAvg does.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.common import FitRes
from flwr.server.strategy import FedAvg

log = logging.getLogger("fedsim")


def capped_weights(examples: list[int], cap: float) -> list[int]:
    """Sample counts capped at ``cap x`` their median (at least 1).

    >>> capped_weights([10, 20, 1000], 2.0)
    [10, 20, 40]
    """
    limit = max(1, int(cap * float(np.median(examples))))
    return [min(n, limit) for n in examples]


class CappedFedAvg(FedAvg):
    """FedAvg whose client weights are capped at ``cap`` times the median sample count."""

    def __init__(self, *, cap: float = 2.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cap = cap

    def aggregate_fit(self, server_round, results, failures):
        log.info("round %d: aggregating phones %s", server_round, [p.cid for p, _ in results])
        weights = capped_weights([res.num_examples for _, res in results], self.cap)
        capped = [
            (proxy, FitRes(res.status, res.parameters, n, res.metrics))
            for (proxy, res), n in zip(results, weights, strict=True)
        ]
        return super().aggregate_fit(server_round, capped, failures)
