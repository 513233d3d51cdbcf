"""FedNova's phone half: report the normalised number of local steps.

Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization", NeurIPS 2020. Phones with more data (or more epochs) take more local steps and
pull plain FedAvg's average towards their own optimum. FedNova has each phone report
``||a_i||_1``, the weight its local steps gave the gradients, and the server
(:mod:`fedsim.strategy.fednova`) averages the *normalised* updates ``(x - y_i) / ||a_i||_1``
and rescales them by the effective step count ``tau_eff = sum_i p_i ||a_i||_1``.

For SGD with heavy-ball momentum ``rho`` over ``tau`` steps (Wang et al., Sec. 4 and App. C;
the authors' code accumulates ``counter = rho * counter + 1`` each step)::

    ||a_i||_1 = sum_{k=1..tau} (1 - rho^k) / (1 - rho) = (tau - rho (1 - rho^tau) / (1 - rho)) / (1 - rho)

which is ``tau`` for plain SGD. The local training itself is unchanged. Not covered: FedProx's
proximal term, which shrinks ``a_i`` further (the paper's eq. 9); use it with ``strategy=fedavg``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from clients.algorithms.base import Arrays, LocalAlgorithm, Outcome
from fedsim import keys


def normalised_steps(steps: int, momentum: float) -> float:
    """``||a_i||_1`` of ``steps`` momentum-SGD steps (module docstring).

    >>> normalised_steps(4, 0.0), normalised_steps(2, 0.5)
    (4.0, 2.5)
    """
    if momentum == 0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


@dataclass(frozen=True)
class FedNova(LocalAlgorithm):
    """FedNova's phone half: train as usual, report ``||a_i||_1``."""

    name: ClassVar[str] = "fednova"

    def finish(
        self, start: Arrays, end: Arrays, received: Arrays, kept: Arrays, steps: int,
        lr: float, momentum: float,
    ) -> Outcome:
        return Outcome(metrics={keys.NORMALISED_STEPS: normalised_steps(steps, momentum)})
