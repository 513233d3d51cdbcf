"""Partial sums: a slot replies with the mean of its phones' models, not each upload (issue 25).

FedAvg's aggregate is the example-weighted mean of the replies (McMahan et al. 2017), and a
weighted mean of the slots' weighted means, each weighted by its slot's examples, is the same
mean. So for strategies that aggregate that way (``simulation.partial_sums``, refused for the
others by :func:`fedsim.run.checks.check_partial_sums`), a slot can fold each phone's upload
into a running sum as soon as the phone finishes, and send one model however many phones it
ran: the server reads two models a round instead of a hundred, and the slot never frames a
hundred replies. Each phone's metrics still travel, so the server's tallies, device clock and
byte counts see every phone.

What is summed is what the server would have rebuilt from the phone's encoded upload
(:func:`fedsim.updates.reconstruct` of the codec's decoding, as
:class:`fedsim.strategy.decode_updates.DecodeUpdates` does), so compression error and attacks
are in it. Sums are in the model's dtype (float32), as Flower's FedAvg sums. The result equals
the per-phone aggregate up to float rounding (the order of the additions differs), not bit for
bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Summand:
    """One phone's contribution to its slot's partial sum."""

    metrics: dict  # its reply's metrics (they still travel, one MetricRecord a phone)
    arrays_name: str  # the ArrayRecord name the strategy used
    model: Mapping[str, np.ndarray]  # the global model it received
    weights: Mapping[str, np.ndarray]  # what it uploaded, as the server rebuilds it


class PartialSum:
    """The example-weighted sum of the models a slot's phones uploaded.

    A phone uploads only the tensors its fine-tuning mode changed; the others are the global
    model it received. They are not added phone by phone: :meth:`mean` counts the global
    model's value for the weight of the phones that did not upload a tensor.

    >>> s = PartialSum()
    >>> glob = {"w": np.zeros(2, np.float32), "b": np.ones(1, np.float32)}
    >>> s.add(glob, {"w": np.array([4.0, 8.0], np.float32)}, 3, client_id=5)
    >>> s.add(glob, {"w": np.array([0.0, 4.0], np.float32), "b": np.array([5.0], np.float32)}, 1,
    ...       client_id=2)
    >>> {name: m.tolist() for name, m in s.mean().items()}
    {'w': [3.0, 7.0], 'b': [2.0]}
    >>> s.weight, s.phones, s.first_client
    (4.0, 2, 2)
    """

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.covered: dict[str, float] = {}  # tensor -> weight of the phones that uploaded it
        self.weight = 0.0
        self.phones = 0
        self.first_client: int | None = None  # the lowest id summed: the partial's sort key
        self.model: Mapping[str, np.ndarray] | None = None

    def add(
        self, model: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray], n: float,
        client_id: int,
    ) -> None:
        """Fold in one phone: ``weights``, the tensors it uploaded (as the server rebuilds
        them), weighing ``n``, against ``model``, the global model it received."""
        self.model = model  # the same for every phone of a bundle (sent once)
        for name, tensor in weights.items():
            scaled = tensor * tensor.dtype.type(n)  # in the tensor's dtype, as FedAvg's sum is
            if name in self.sums:
                self.sums[name] += scaled
            else:
                self.sums[name] = scaled
            self.covered[name] = self.covered.get(name, 0.0) + n
        self.weight += n
        self.phones += 1
        self.first_client = client_id if self.first_client is None else min(
            self.first_client, client_id
        )

    def mean(self) -> dict[str, np.ndarray]:
        """Every tensor of the model: the weighted mean of what the phones had (the global
        value for those that did not upload it), in the model's dtype and order."""
        if self.model is None or self.weight <= 0:
            raise ValueError("an empty partial sum has no mean")
        out = {}
        for name, received in self.model.items():
            total = self.sums.get(name)
            rest = self.weight - self.covered.get(name, 0.0)
            if total is None:
                out[name] = np.array(received, copy=True)
                continue
            if rest > 0:
                total = total + received * received.dtype.type(rest)
            out[name] = (total / received.dtype.type(self.weight)).astype(received.dtype)
        return out
