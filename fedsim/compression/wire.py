"""An :class:`~fedsim.compression.codecs.Encoded` payload as Flower records, and model bytes.

The payload travels in the reply as it would on a phone's uplink: the codec's arrays (int8
levels, float32 scales, int32 indices, ...) in an ``ArrayRecord`` and its scalar metadata in a
``ConfigRecord`` (:data:`fedsim.keys.PAYLOAD`). Byte counts are the codec's
:attr:`~fedsim.compression.codecs.Encoded.nbytes`, not the size of Flower's serialisation
(which adds numpy headers a real uplink would not send).

The arrays are *packed*: one ``Array`` holding every part's bytes back to back (each part
starting on an 8-byte boundary), its layout in the metadata (:data:`fedsim.keys.PART_NAMES`
and beside it). Flower's own ``Array`` is a ``.npy`` file per tensor; writing one costs ~20 us
and reading one ~36 us, so a reply of the default student's 262 tensors cost ~15 ms of
framing on its two ends, as much as a cross-device phone's training (issue 25). Packed, the
phone copies its tensors once and the server reads each part as a view of the buffer
(:class:`PackedPart`). The bytes of every tensor are the same either way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedsim import keys
from fedsim.compression.codecs import HEADER_BYTES_PER_SCALAR, VALUES, Encoded

_ALIGN = 8  # every part starts on a multiple of this (float64 is the widest part dtype)
_LAYOUT = (keys.PART_NAMES, keys.PART_DTYPES, keys.PART_NDIMS, keys.PART_DIMS)


def to_records(encoded: Encoded, payload_kind: str) -> tuple[ArrayRecord, ConfigRecord]:
    """The payload's arrays packed into one, and its metadata (plus what the tensors are and
    the packing's layout) as Flower records."""
    parts = {name: np.ascontiguousarray(part) for name, part in encoded.arrays.items()}
    chunks = []
    for part in parts.values():
        chunks.append(part.tobytes())
        if part.nbytes % _ALIGN:  # the next part starts on a boundary
            chunks.append(bytes(_ALIGN - part.nbytes % _ALIGN))
    data = b"".join(chunks)
    packed = Array(dtype="uint8", shape=(len(data),), stype=keys.PACKED, data=data)
    meta: dict = {
        keys.PAYLOAD_KIND: payload_kind,
        keys.PART_NAMES: list(parts),
        keys.PART_DTYPES: [part.dtype.str for part in parts.values()],  # "<f4": str() is slow
        keys.PART_NDIMS: [part.ndim for part in parts.values()],
        keys.PART_DIMS: [int(d) for part in parts.values() for d in part.shape],
    }
    for name, values in encoded.meta.items():
        # ConfigRecord lists are homogeneous: shapes are ints, anything else goes as floats.
        ints = all(isinstance(v, (int, np.integer)) for v in values)
        meta[name] = [int(v) for v in values] if ints else [float(v) for v in values]
    return record_of({keys.PACKED: packed}), ConfigRecord(meta)


def _offsets(sizes: Iterable[int]) -> list[int]:
    """Where each part starts in the packed buffer, then the buffer's length.

    >>> _offsets([3, 8, 0, 4])
    [0, 8, 16, 16, 24]
    """
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + -(-size // _ALIGN) * _ALIGN)
    return offsets


def unpacked(arrays: ArrayRecord, meta: ConfigRecord) -> dict[str, np.ndarray]:
    """The payload's parts as read-only views of the packed buffer (no copy)."""
    buffer = arrays[keys.PACKED].data
    ndims = [int(n) for n in meta[keys.PART_NDIMS]]
    dims = [int(d) for d in meta[keys.PART_DIMS]]
    shapes, at = [], 0
    for ndim in ndims:
        shapes.append(tuple(dims[at:at + ndim]))
        at += ndim
    dtypes = [_dtype(str(d)) for d in meta[keys.PART_DTYPES]]
    sizes = [math.prod(shape) * dtype.itemsize for shape, dtype in zip(shapes, dtypes)]
    return {
        str(name): np.frombuffer(buffer, dtype, math.prod(shape), start).reshape(shape)
        for name, dtype, shape, start in zip(meta[keys.PART_NAMES], dtypes, shapes, _offsets(sizes))
    }


@functools.cache
def _dtype(spelling: str) -> np.dtype:
    return np.dtype(spelling)


@functools.cache
def _name(dtype: np.dtype) -> str:
    return str(dtype)  # "float32", as Flower's Array spells it (str() costs ~3 us a call)


class PackedPart(Array):
    """One part of a packed payload as the Flower ``Array`` a strategy reads.

    ``numpy()`` returns a fresh writable copy, as ``Array.numpy`` does, but copies it out of
    the packed buffer instead of parsing a ``.npy`` file: about 1 us a tensor instead of 36,
    which is most of what a FedAvg over many small replies spends. ``data`` (the ``.npy`` bytes
    a plain ``Array`` holds) is only built if something asks for it.
    """

    def __init__(self, view: np.ndarray) -> None:  # pylint: disable=super-init-not-called
        # Array.__init__ would serialise the view; its fields are set as it would set them.
        self.__dict__.update(
            dtype=_name(view.dtype), shape=view.shape, stype="numpy.ndarray", _view=view
        )

    def numpy(self) -> np.ndarray:
        return self._view.copy()

    @property
    def data(self) -> bytes:  # type: ignore[override]
        return Array(self._view).data


def payload_parts(arrays: ArrayRecord, meta: ConfigRecord) -> dict[str, Array]:
    """The payload's parts as Flower ``Array`` objects (:class:`PackedPart` views)."""
    return {name: PackedPart(view) for name, view in unpacked(arrays, meta).items()}


def from_records(arrays: ArrayRecord, meta: ConfigRecord) -> tuple[Encoded, str]:
    """Inverse of :func:`to_records`: the payload (its parts read-only views) and its kind."""
    scalars = {
        name: tuple(v) for name, v in meta.items()
        if name != keys.PAYLOAD_KIND and name not in _LAYOUT
    }
    return Encoded(unpacked(arrays, meta), scalars), str(meta[keys.PAYLOAD_KIND])


def model_record(content: RecordDict) -> tuple[str, ArrayRecord]:
    """The model's ``(name, ArrayRecord)`` in a message: its one ArrayRecord besides a client
    algorithm's extra tensors (:data:`fedsim.keys.ALGORITHM`)."""
    (name, record), = (
        (name, record) for name, record in content.array_records.items()
        if name != keys.ALGORITHM
    )
    return name, record


def whole_tensors(
    arrays: Mapping[str, Array], names: Iterable[str], missing: ArrayRecord | None = None
) -> ArrayRecord | None:
    """A lossless upload's tensors (``arrays``: its :func:`payload_parts`), sharing the bytes
    they arrived in, or ``None``.

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
    return record_of(parts)


def record_of(arrays: Mapping[str, Array]) -> ArrayRecord:
    """An ArrayRecord holding these very ``Array`` objects (``ArrayRecord(dict)`` rebuilds each
    from its ``.npy`` bytes, which a :class:`PackedPart` would first have to write)."""
    record = ArrayRecord()
    for name, array in arrays.items():
        record[name] = array
    return record


def record_nbytes(record: ArrayRecord | Mapping[str, np.ndarray]) -> int:
    """Bytes of an ArrayRecord (or of numpy arrays by name) counted as an uncompressed payload:
    data plus 8 B per dim.

    The same rule :class:`~fedsim.compression.codecs.NoCompression` uses, so downlink and
    uplink figures are comparable.

    >>> record_nbytes({"c": np.zeros((2, 3), np.float32)})
    40
    """
    total = 0
    for array in record.values():
        shape = tuple(array.shape)
        total += math.prod(shape) * np.dtype(array.dtype).itemsize
        total += HEADER_BYTES_PER_SCALAR * len(shape)
    return total
