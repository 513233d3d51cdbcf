"""SCAFFOLD's server half: the server control variate, sent with the model and moved by the
phones' control-variate changes.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", ICML
2020, Algorithm 1, lines 16-17. The phone half is :mod:`clients.algorithms.scaffold`. Each
round the server sends its control variate ``c`` with the model, and after the replies::

    x <- x + eta_g * mean_{i in S} (y_i - x)          the strategy inside (FedAvg: eta_g = 1)
    c <- c + (|S| / N) * mean_{i in S} delta c_i  =  c + sum_{i in S} delta c_i / N

over the ``N = population`` phones. The model step is left to the strategy this wraps, so
SCAFFOLD composes with FedAvg (the paper's ``eta_g = 1``, weighted by examples as NIID-Bench
does), FedAvgM or FedAdam (a server learning rate), or a user's strategy. ``c`` is this layer's
state between rounds: a checkpoint holds it (``state_dict``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import keys
from fedsim.strategy.client_algorithm import algorithm_arrays, without_algorithm
from fedsim.strategy.wrapper import StrategyWrapper


def updated_control(
    control: Mapping[str, np.ndarray], deltas: list[Mapping[str, np.ndarray]], population: int
) -> dict[str, np.ndarray]:
    """``c + sum_i delta c_i / N`` (Alg. 1, line 17), float32.

    >>> updated_control({"w": np.zeros(1, np.float32)}, [{"w": np.ones(1)}, {"w": np.full(1, 3.0)}], 10)
    {'w': array([0.4], dtype=float32)}
    """
    new = {name: np.array(c, np.float32) for name, c in control.items()}
    for delta in deltas:
        for name, d in delta.items():
            new[name] = new.get(name, np.float32(0.0)) + np.asarray(d, np.float32) / np.float32(population)
    return {name: np.asarray(c, np.float32) for name, c in new.items()}


class ScaffoldServer(StrategyWrapper):
    """Send ``c`` with every train message; move it by the phones' ``delta c``.

    Parameters
    ----------
    strategy : Strategy
        What aggregates the models (the user's strategy).
    population : int
        ``N``, the number of phones (``simulation.population``).
    parameter_names : frozenset[str]
        The model's parameters: ``c`` starts at zero over them.
    """

    def __init__(
        self, strategy: Strategy, population: int, parameter_names: frozenset[str] = frozenset()
    ) -> None:
        self.strategy = strategy
        self.population = int(population)
        self.parameter_names = parameter_names
        self.control: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self.control:  # zero before any phone has reported (and the bytes are real)
            self.control = {
                name: np.zeros(arrays[name].shape, np.float32)
                for name in arrays if name in self.parameter_names
            }
        record = ArrayRecord({name: Array(c) for name, c in self.control.items()})
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        for message in messages:
            message.content[keys.ALGORITHM] = record
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        deltas = [algorithm_arrays(r) for r in replies if not r.has_error()]
        self.control = updated_control(self.control, deltas, self.population)
        return self.strategy.aggregate_train(server_round, [without_algorithm(r) for r in replies])

    def state_dict(self) -> dict:
        return {"control": dict(self.control)}

    def load_state_dict(self, state: dict) -> None:
        self.control = {name: np.asarray(c, np.float32) for name, c in state["control"].items()}
