"""The ``client_algorithm`` option: a phone half and the server half it pairs with.

An algorithm that needs the phone's cooperation (SCAFFOLD's control variates, FedNova's
normalised steps) has two halves, named together in ``conf/client_algorithm/<name>.yaml``:

- ``phone``: a :class:`clients.algorithms.base.LocalAlgorithm`, shipped to every phone in its
  static recipe (:class:`clients.client_app.ClientEnvironment`);
- ``server``: ``None``, or a wrapper class (Hydra ``_partial_: true``) that
  :func:`fedsim.strategy.stack.build_stack` puts around the user's strategy, called as
  ``server(strategy, parameter_names=...)``. Like fedsim's other layers it changes one step of
  whatever strategy the user chose (FedAvg, FedProx, FedAdam, a legacy class ...): it adds its
  tensors to the train messages (:data:`fedsim.keys.ALGORITHM`), reads the phones' from the
  replies, and hands the strategy inside replies it can aggregate (:func:`without_algorithm`).

The default, ``client_algorithm=sgd``, is plain local SGD with no server half: the run is
exactly what it was before client algorithms existed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp.strategy import Strategy

from clients.algorithms.base import LocalAlgorithm
from fedsim import keys

ServerHalf = Callable[..., Strategy]  # (strategy, *, parameter_names) -> the wrapped strategy


@dataclass(frozen=True)
class ClientAlgorithm:
    """The ``client_algorithm`` node: ``phone`` and ``server`` halves (module docstring)."""

    phone: LocalAlgorithm = LocalAlgorithm()
    server: ServerHalf | None = None

    @property
    def name(self) -> str:
        return self.phone.name

    @property
    def plain(self) -> bool:
        """Plain local SGD: nothing runs around the training on either side."""
        return type(self.phone) is LocalAlgorithm and self.server is None


def algorithm_arrays(reply: Message) -> dict[str, np.ndarray]:
    """The phone half's tensors in a reply (empty if it sent none)."""
    records = reply.content.array_records
    if keys.ALGORITHM not in records:
        return {}
    return {name: array.numpy() for name, array in records[keys.ALGORITHM].items()}


def without_algorithm(reply: Message) -> Message:
    """A copy of ``reply`` without the client algorithm's record (Flower's strategies expect
    one ArrayRecord per reply, and would average every record they find)."""
    if reply.has_error() or keys.ALGORITHM not in reply.content.array_records:
        return reply
    stripped = copy.copy(reply)  # shares metadata (reply_to) with the real reply
    stripped.content = RecordDict(
        {name: record for name, record in reply.content.items() if name != keys.ALGORITHM}
    )
    return stripped
