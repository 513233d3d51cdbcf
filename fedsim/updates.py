"""What a client uploads (``update.kind``) and how the server turns it back into weights.

Three kinds, shared by the device side (:mod:`clients.updates`) and the server-side wrapper
(:mod:`fedsim.strategy.decode_updates`):

- ``weights``: the trained model, as FedAvg (McMahan et al., AISTATS 2017) sends it.
- ``delta``: trained minus received weights.
- ``gradient``: one gradient of the mean loss over the client's whole shard at the received
  weights (FedSGD, McMahan et al. 2017). Float buffers that have no gradient (BatchNorm
  running statistics) travel as deltas, so their forward-pass update is not lost.

The server rebuilds, per client, the weights that client's upload stands for
(:func:`reconstruct`): ``global + delta`` and ``global - server_lr * gradient``. Every strategy
then sees ordinary weights replies, so stock Flower strategies run unchanged with any kind, and
FedAdam/FedYogi/FedAvgM still read ``aggregate - global`` as their pseudo-gradient: with
``gradient`` and FedAvg weighting that is ``-server_lr`` times the sample-weighted mean
gradient, i.e. the full-batch gradient of the union of the cohort's data.

A client uploads only the tensors its fine-tuning mode changed
(:meth:`clients.finetune.base.FineTuneMode.uploaded_names`); :func:`reconstruct` completes the
upload with the global model's values for the others, so strategies still see whole models.

Compression acts on the delta (or gradient): a lossy codec with ``kind=weights`` uploads the
encoded delta and the server adds it to the global model (:meth:`UpdateRule.payload_kind`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedsim.compression.codecs import Codec, NoCompression
from fedsim.errors import ConfigError

WEIGHTS, DELTA, GRADIENT = "weights", "delta", "gradient"
KINDS = (WEIGHTS, DELTA, GRADIENT)  # position = the code replies carry in their MetricRecord
# The payload kind of a slot's partial sum (clients.partial_sums): weights, already decoded and
# averaged over the slot's phones; never a phone's own upload.
MEAN = "mean"

Update = dict[str, np.ndarray]


def kind_code(kind: str) -> int:
    """The integer a reply's MetricRecord carries for ``kind`` (MetricRecords hold no strings)."""
    return KINDS.index(kind)


@dataclass(frozen=True)
class UpdateRule:
    """The ``update`` config node: what clients upload and how it is compressed.

    Parameters
    ----------
    kind : str
        ``weights``, ``delta`` or ``gradient`` (see the module docstring).
    compression : Codec
        Applied to the delta (or gradient) on the client, undone on the server.
    server_lr : float
        Step the server takes along a ``gradient`` upload: ``global - server_lr * gradient``.
        Unused by the other kinds.
    error_feedback : bool
        Keep each client's compression error and add it to its next upload (Seide et al.
        2014; Karimireddy et al. 2019). Only lossy codecs have an error to keep.
    """

    kind: str
    compression: Codec
    server_lr: float
    error_feedback: bool

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"update.kind: must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.server_lr > 0:
            raise ConfigError(f"update.server_lr: must be > 0, got {self.server_lr}")
        if not (hasattr(self.compression, "encode") and hasattr(self.compression, "decode")):
            raise ConfigError(
                f"update.compression: {type(self.compression).__name__} has no encode/decode"
            )

    @property
    def lossless(self) -> bool:
        """Does decoding give back exactly what was encoded (float32)?"""
        return isinstance(self.compression, NoCompression)

    @property
    def payload_kind(self) -> str:
        """What the encoded tensors are: the kind, except lossy ``weights`` upload the delta.

        Quantizing weights would spend the int8 range on the weights' magnitude rather than
        on this round's change, so the error would not shrink as training converges.
        """
        if self.kind == WEIGHTS and not self.lossless:
            return DELTA
        return self.kind

    @property
    def uses_feedback(self) -> bool:
        """Error feedback is on and the codec loses something for it to carry."""
        return self.error_feedback and not self.lossless


# Lossless weights: the behaviour before update kinds existed, and ClientEnvironment's default.
PLAIN_WEIGHTS = UpdateRule(WEIGHTS, NoCompression(), 1.0, False)


def reconstruct(
    payload_kind: str,
    global_: Mapping[str, np.ndarray],
    decoded: Mapping[str, np.ndarray],
    parameter_names: frozenset[str],
    server_lr: float,
) -> Update:
    """The weights a client's decoded upload stands for.

    Parameters
    ----------
    payload_kind : str
        :attr:`UpdateRule.payload_kind` of the upload.
    global_ : Mapping[str, np.ndarray]
        The model the client received; fixes the names and order of the result.
    decoded : Mapping[str, np.ndarray]
        The decoded upload: some or all of ``global_``'s names, same shapes. A tensor the
        client did not upload (its fine-tuning mode left it as received) is ``global_``'s.
    parameter_names : frozenset[str]
        Trainable tensors; other float state (BatchNorm running statistics) is a delta even
        in a ``gradient`` upload.
    server_lr : float
        Step along a gradient.
    """
    extra = sorted(set(decoded) - set(global_))[:3]
    if extra:
        raise ValueError(f"upload does not match the model: unexpected {extra}")
    if payload_kind not in KINDS:
        raise ValueError(f"unknown payload kind {payload_kind!r}")
    step = np.float32(server_lr)

    def rebuilt(name: str) -> np.ndarray:
        if name not in decoded:
            return global_[name]  # not uploaded: as the client received it
        if payload_kind == WEIGHTS:
            return np.asarray(decoded[name])
        if payload_kind == GRADIENT and name in parameter_names:
            return global_[name] - step * decoded[name]
        return global_[name] + decoded[name]  # a delta (a gradient upload's buffers too)

    return {name: rebuilt(name) for name in global_}
