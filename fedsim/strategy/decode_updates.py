"""Decode clients' uploads into weights replies, so any strategy runs with any update kind.

:class:`DecodeUpdates` wraps the strategy stack (inside :class:`VirtualClients`, outside any
privacy wrapper and the user's strategy). For each successful reply it reads the encoded
payload (:mod:`fedsim.compression.wire`), decodes it with the run's codec, and rebuilds the
weights it stands for against the global model the cohort received
(:func:`fedsim.updates.reconstruct`): ``global + delta``, ``global - server_lr * gradient``.
The inner strategy then receives ordinary replies, one ArrayRecord of weights plus the
client's MetricRecord, exactly what Flower's strategies and ``CentralDP`` expect. This is the
server half of pfl-research's "post-process on the device, undo in reverse on the server".

A phone uploads only the tensors its fine-tuning mode changed
(:meth:`clients.finetune.base.FineTuneMode.uploaded_names`); the rest of its reply is the
global model it received. The tensors no phone of the run can change and the server does not
refine (``held``: the phones keep them from install, see docs/on-device-learning.md) leave
every round exactly as they entered it: a weighted mean of equal float32 values is not always
bit-equal to them, and an optimiser strategy (FedAdam) would amplify that rounding into a step.

A slot's partial sum (payload kind :data:`~fedsim.updates.MEAN`, ``simulation.partial_sums``)
is already weights, decoded in the slot by the same rules. Error replies pass through
untouched; the caller's replies are never modified. A client algorithm's record
(:data:`fedsim.keys.ALGORITHM`) passes through beside the weights, for its server half below to
read.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import keys
from fedsim.compression.wire import from_records, model_record, payload_parts, whole_tensors
from fedsim.strategy.wrapper import StrategyWrapper
from fedsim.updates import MEAN, WEIGHTS, UpdateRule, reconstruct


class DecodeUpdates(StrategyWrapper):
    """Turn encoded deltas/gradients/weights into weights replies for ``strategy``.

    Parameters
    ----------
    strategy : Strategy
        What aggregates the weights (the user's strategy, possibly privacy-wrapped).
    rule : UpdateRule
        The run's ``update`` node: the codec to decode with and the gradient step.
    parameter_names : frozenset[str]
        Names of the model's parameters; other float tensors of a gradient upload are deltas.
    held : frozenset[str]
        Tensors that no phone uploads and the server does not refine: kept as they are.
    """

    def __init__(
        self, strategy: Strategy, rule: UpdateRule, parameter_names: frozenset[str],
        held: frozenset[str] = frozenset(),
    ) -> None:
        self.strategy = strategy
        self.rule = rule
        self.parameter_names = parameter_names
        self.held = held
        self._global: dict[str, np.ndarray] | None = None
        self._global_record: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # Uploads are relative to the model this round's cohort receives.
        self._global = {name: array.numpy() for name, array in arrays.items()}
        self._global_record = arrays
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        decoded = [reply if reply.has_error() else self.decode(reply) for reply in replies]
        arrays, metrics = self.strategy.aggregate_train(server_round, decoded)
        return self.keeping_held(self.in_model_dtypes(arrays)), metrics

    def keeping_held(self, arrays: ArrayRecord | None) -> ArrayRecord | None:
        """``arrays`` with the :attr:`held` tensors as this round's global model had them."""
        if arrays is None or not self.held:
            return arrays
        assert self._global_record is not None
        return ArrayRecord(
            {k: self._global_record[k] if k in self.held else a for k, a in arrays.items()}
        )

    def in_model_dtypes(self, arrays: ArrayRecord | None) -> ArrayRecord | None:
        """``arrays`` cast back to the dtypes of the model the round started from.

        FedAdam, FedYogi, FedAdagrad and QFedAvg compute in float64 (numpy promotes float32
        arrays combined with float64 scalars), which would silently turn the global model,
        and every later download, into float64 at twice the bytes. The model is float32.
        """
        assert self._global is not None
        if arrays is None or all(
            arrays[k].dtype == str(self._global[k].dtype) for k in arrays if k in self._global
        ):
            return arrays
        return ArrayRecord(
            {
                k: Array(a.numpy().astype(self._global[k].dtype) if k in self._global else a.numpy())
                for k, a in arrays.items()
            }
        )

    def decode(self, reply: Message) -> Message:
        """A copy of ``reply`` whose content is the rebuilt weights and the client's metrics."""
        assert self._global is not None, "configure_train runs before aggregate_train"
        name, payload = model_record(reply.content)
        meta = reply.content[keys.PAYLOAD]
        weights = None
        if meta[keys.PAYLOAD_KIND] == MEAN:
            # A slot's partial sum (simulation.partial_sums): weights, decoded and averaged in
            # the slot, every tensor of the model.
            weights = whole_tensors(payload_parts(payload, meta), self._global)
            if weights is None:
                raise ValueError("a partial sum must hold every tensor of the model as float32")
        elif self.rule.lossless and meta[keys.PAYLOAD_KIND] == WEIGHTS:
            # The weights as they arrived; those not uploaded as the phone received them.
            parts = payload_parts(payload, meta)
            weights = whole_tensors(parts, self._global, missing=self._global_record)
        if weights is None:
            encoded, payload_kind = from_records(payload, meta)
            decoded = reconstruct(
                payload_kind, self._global, self.rule.compression.decode(encoded),
                self.parameter_names, self.rule.server_lr,
            )
            weights = ArrayRecord({k: Array(np.asarray(v)) for k, v in decoded.items()})
        rebuilt = copy.copy(reply)  # shares metadata (reply_to) with the real reply
        content = {name: weights, keys.METRICS: reply.content[keys.METRICS]}
        if keys.ALGORITHM in reply.content.array_records:
            content[keys.ALGORITHM] = reply.content[keys.ALGORITHM]
        rebuilt.content = RecordDict(content)
        return rebuilt
