"""FedNova's server half: average the phones' *normalised* updates.

Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization", NeurIPS 2020, eq. 6-7. Phone ``i`` reports ``a_i = ||a_i||_1``, the weight of
its local steps (:mod:`clients.algorithms.fednova`). With ``p_i = n_i / sum n`` over the
round's replies, FedNova's step is::

    x <- x - tau_eff * sum_i p_i (x - y_i) / a_i,        tau_eff = sum_i p_i a_i

This layer rescales each reply's update to ``y_i' = x + (tau_eff / a_i) (y_i - x)`` and hands
the replies to the strategy inside: FedAvg's example-weighted mean of the ``y_i'`` is exactly
the step above, and a server optimiser (FedAdam, FedAvgM) steps along the normalised
pseudo-gradient (the paper's Sec. 5 combination with server momentum). Only the model's
parameters are rescaled; buffers (BatchNorm statistics) are averaged as they came.
FedNova keeps nothing between rounds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import keys
from fedsim.strategy.wrapper import StrategyWrapper


def effective_steps(examples: list[float], steps: list[float]) -> float:
    """``tau_eff = sum_i p_i a_i`` with ``p_i = n_i / sum n``.

    >>> effective_steps([1, 1], [1, 4])
    2.5
    """
    total = float(sum(examples))
    return float(sum(n / total * a for n, a in zip(examples, steps, strict=True)))


def normalised(
    start: Mapping[str, np.ndarray], end: Mapping[str, np.ndarray], scale: float,
    names: frozenset[str],
) -> dict[str, np.ndarray]:
    """``x + scale * (y - x)`` for the tensors in ``names``; the rest of ``end`` as it is."""
    out = {}
    for name, y in end.items():
        if name in names and name in start:
            x = start[name]
            out[name] = (x + np.asarray(scale, x.dtype) * (y - x)).astype(x.dtype)
        else:
            out[name] = y
    return out


class FedNovaServer(StrategyWrapper):
    """Rescale every reply by ``tau_eff / a_i`` before the strategy inside aggregates.

    Parameters
    ----------
    strategy : Strategy
        What aggregates the rescaled replies (the user's strategy; FedAvg gives FedNova).
    parameter_names : frozenset[str]
        The model's parameters, the tensors local steps move.
    """

    def __init__(self, strategy: Strategy, parameter_names: frozenset[str] = frozenset()) -> None:
        self.strategy = strategy
        self.parameter_names = parameter_names
        self._global: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = {name: array.numpy() for name, array in arrays.items()}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        ok = [r for r in replies if not r.has_error()]
        if not ok:
            return self.strategy.aggregate_train(server_round, replies)
        metrics = [r.content[keys.METRICS] for r in ok]
        steps = [max(float(m[keys.NORMALISED_STEPS]), 1e-12) for m in metrics]
        tau_eff = effective_steps([float(m[keys.NUM_EXAMPLES]) for m in metrics], steps)
        rescaled = {id(r): self._rescaled(r, tau_eff / a) for r, a in zip(ok, steps)}
        return self.strategy.aggregate_train(
            server_round, [rescaled.get(id(r), r) for r in replies]
        )

    def _rescaled(self, reply: Message, scale: float) -> Message:
        """A copy of ``reply`` whose weights are ``x + scale * (y - x)``."""
        (name, record), = reply.content.array_records.items()
        weights = normalised(
            self._global, {k: a.numpy() for k, a in record.items()}, scale, self.parameter_names
        )
        out = copy.copy(reply)
        out.content = RecordDict({
            name: ArrayRecord({k: Array(v) for k, v in weights.items()}),
            keys.METRICS: reply.content[keys.METRICS],
        })
        return out

    # The round's model is scratch (configure_train sets it again every round).
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None
