"""An :class:`~fedsim.compression.codecs.Encoded` payload as Flower records, and model bytes.

The payload travels in the reply as it would on a phone's uplink: the codec's arrays (int8
levels, float32 scales, int32 indices, ...) in an ``ArrayRecord`` and its scalar metadata in a
``ConfigRecord`` (:data:`fedsim.keys.PAYLOAD`). Byte counts are the codec's
:attr:`~fedsim.compression.codecs.Encoded.nbytes`, not the size of Flower's serialisation
(which adds numpy headers a real uplink would not send).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedsim import keys
from fedsim.compression.codecs import HEADER_BYTES_PER_SCALAR, VALUES, Encoded


def to_records(encoded: Encoded, payload_kind: str) -> tuple[ArrayRecord, ConfigRecord]:
    """The payload's arrays and its metadata (plus what the tensors are) as Flower records."""
    arrays = ArrayRecord(
        {name: Array(np.ascontiguousarray(part)) for name, part in encoded.arrays.items()}
    )
    meta: dict = {keys.PAYLOAD_KIND: payload_kind}
    for name, values in encoded.meta.items():
        # ConfigRecord lists are homogeneous: shapes are ints, anything else goes as floats.
        ints = all(isinstance(v, (int, np.integer)) for v in values)
        meta[name] = [int(v) for v in values] if ints else [float(v) for v in values]
    return arrays, ConfigRecord(meta)


def from_records(arrays: ArrayRecord, meta: ConfigRecord) -> tuple[Encoded, str]:
    """Inverse of :func:`to_records`: the payload and its kind."""
    parts = {name: array.numpy() for name, array in arrays.items()}
    scalars = {name: tuple(v) for name, v in meta.items() if name != keys.PAYLOAD_KIND}
    return Encoded(parts, scalars), str(meta[keys.PAYLOAD_KIND])


def whole_tensors(arrays: ArrayRecord, names: Iterable[str]) -> ArrayRecord | None:
    """A lossless upload's tensors, sharing the bytes they arrived in, or ``None``.

    :class:`~fedsim.compression.codecs.NoCompression` sends each float32 tensor whole as its
    ``"<tensor>/values"`` part, so the server can hand those bytes on without decoding and
    re-encoding them (three copies per reply otherwise). ``None`` when a part is missing or
    not float32.
    """
    parts = {name: arrays.get(f"{name}/{VALUES}") for name in names}
    if any(part is None or part.dtype != "float32" for part in parts.values()):
        return None
    return ArrayRecord(parts)


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of an ArrayRecord counted as an uncompressed payload: data plus 8 B per dim.

    The same rule :class:`~fedsim.compression.codecs.NoCompression` uses, so downlink and
    uplink figures are comparable.
    """
    total = 0
    for array in record.values():
        shape = tuple(array.shape)
        total += math.prod(shape) * np.dtype(array.dtype).itemsize
        total += HEADER_BYTES_PER_SCALAR * len(shape)
    return total
