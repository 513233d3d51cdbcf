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
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

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


def model_record(content: RecordDict) -> tuple[str, ArrayRecord]:
    """The model's ``(name, ArrayRecord)`` in a message: its one ArrayRecord besides a client
    algorithm's extra tensors (:data:`fedsim.keys.ALGORITHM`)."""
    (name, record), = (
        (name, record) for name, record in content.array_records.items()
        if name != keys.ALGORITHM
    )
    return name, record


def whole_tensors(
    arrays: ArrayRecord, names: Iterable[str], missing: ArrayRecord | None = None
) -> ArrayRecord | None:
    """A lossless upload's tensors, sharing the bytes they arrived in, or ``None``.

    :class:`~fedsim.compression.codecs.NoCompression` sends each float32 tensor whole as its
    ``"<tensor>/values"`` part, so the server can hand those bytes on without decoding and
    re-encoding them (three copies per reply otherwise). A tensor the upload lacks is taken
    from ``missing`` (the model the client received: a partial upload leaves the rest as it
    was). ``None`` when a part is missing without a stand-in, or is not float32.
    """
    parts = {}
    for name in names:
        part = arrays.get(f"{name}/{VALUES}")
        if part is None and missing is not None:
            part = missing.get(name)
        if part is None or part.dtype != "float32":
            return None
        parts[name] = part
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
