"""A user strategy: FedAvg that down-weights clients whose update is unusually large.

Pass it by ``_target_``; fedsim needs nothing else::

    python run_sim.py strategy._target_=examples.custom_strategy.NormWeightedFedAvg

It subclasses Flower's ``FedAvg`` and overrides one hook, ``aggregate_train``: each client's
FedAvg weight (its sample count) is divided by ``max(1, ||update|| / median ||update||)``, so a
client whose update is three times the cohort's median norm counts a third as much. This is a
simple robustness heuristic in the spirit of norm-bounding defences (Sun et al., "Can You
Really Backdoor Federated Learning?", 2019), not a method with guarantees.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

WEIGHT_KEY = "norm-weighted-examples"


def update_norm(local: ArrayRecord, global_: ArrayRecord) -> float:
    """L2 norm of ``local - global_`` over all arrays."""
    return float(
        np.sqrt(sum(((local[k].numpy() - global_[k].numpy()) ** 2).sum() for k in global_))
    )


class NormWeightedFedAvg(FedAvg):
    """FedAvg with sample-count weights divided by each update's norm relative to the median."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays  # the model the cohort starts from, to measure updates against
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [r for r in replies if not r.has_error()]
        norms = [update_norm(r.content[self.arrayrecord_key], self._global) for r in replies]
        median = float(np.median(norms)) if norms else 0.0
        for reply, norm in zip(replies, norms, strict=True):
            metrics = next(iter(reply.content.metric_records.values()))
            shrink = max(1.0, norm / median) if median > 0 else 1.0
            metrics[WEIGHT_KEY] = float(metrics[self.weighted_by_key]) / shrink
        saved, self.weighted_by_key = self.weighted_by_key, WEIGHT_KEY
        try:
            return super().aggregate_train(server_round, replies)
        finally:
            self.weighted_by_key = saved
