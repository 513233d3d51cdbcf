"""Codecs that shrink a client update for upload, and the exact byte count of what is sent.

An update is ``dict[str, np.ndarray]`` of float32 tensors keyed by parameter name. A codec is a
frozen dataclass with two pure methods: ``encode(update) -> Encoded`` on the phone and
``decode(encoded) -> update`` on the server.

Byte accounting (:attr:`Encoded.nbytes`)
----------------------------------------
``nbytes`` = sum of ``.nbytes`` of every payload array + ``HEADER_BYTES_PER_SCALAR`` (8) bytes
per scalar of metadata. The only metadata the codecs here send is each tensor's shape, so a
tensor of shape ``(64, 32, 3, 3)`` costs a 32-byte header. Parameter names are not counted:
both ends know the model, so tensors travel in an agreed order. Per tensor of ``n`` elements
(``d`` dimensions, ``c`` output channels, ``k`` kept entries):

===========================  =================================================
codec                        bytes
===========================  =================================================
``NoCompression``            ``4n + 8d``
``Int8Quantization()``       ``n + 4 + 8d`` (int8 values, one float32 scale)
``Int8Quantization(True)``   ``n + 4c + 8d`` (one float32 scale per channel)
``TopK(f)``                  ``8k + 8d`` (float32 values + int32 indices)
``Chain(TopK(f), Int8())``   ``4k + k + 4 + 8d + 8`` (int32 indices, int8 values, one
                             scale, and the values' own 1-d shape from the inner codec)
===========================  =================================================

Quantization is symmetric round-to-nearest int8 (as in QSGD's deterministic limit, Alistarh
et al., NeurIPS 2017; per-channel scales as in Krishnamoorthi, arXiv:1806.08342, 2018).
Top-k sparsification keeps the largest magnitudes (Aji & Heafield, EMNLP 2017; Stich et al.,
NeurIPS 2018); it is biased, so pair it with :mod:`fedsim.compression.error_feedback`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedsim.compression import CompressionConfigError

# Each metadata scalar (a shape dimension) is sent as one 64-bit integer or float.
HEADER_BYTES_PER_SCALAR = 8
# Largest int8 magnitude used: symmetric, so -128 is never produced and 0 is exact.
_INT8_MAX = 127
_SHAPE = "shape"
VALUES = "values"  # the part holding a tensor's float32 values (whole, or top-k's kept ones)

Update = dict[str, np.ndarray]


@dataclass(frozen=True)
class Encoded:
    """Exactly what a client uploads: named payload arrays plus small scalar metadata.

    Parameters
    ----------
    arrays : Mapping[str, np.ndarray]
        Payload arrays keyed ``"<tensor>/<part>"`` (e.g. ``"conv.weight/q"``). Read-only by
        convention: codecs never mutate them.
    meta : Mapping[str, tuple[int | float, ...]]
        Scalar metadata keyed ``"<tensor>/<field>"``; every codec here records
        ``"<tensor>/shape"``, which is also how ``decode`` finds the tensor names.
    """

    arrays: Mapping[str, np.ndarray]
    meta: Mapping[str, tuple[int | float, ...]]

    @property
    def header_nbytes(self) -> int:
        """Bytes of metadata: ``HEADER_BYTES_PER_SCALAR`` per scalar."""
        return HEADER_BYTES_PER_SCALAR * sum(len(values) for values in self.meta.values())

    @property
    def nbytes(self) -> int:
        """Upload size in bytes: payload arrays' ``nbytes`` plus the metadata header."""
        return sum(int(array.nbytes) for array in self.arrays.values()) + self.header_nbytes

    def tensor_names(self) -> list[str]:
        """Names of the encoded tensors, in encoding order."""
        suffix = "/" + _SHAPE
        return [key[: -len(suffix)] for key in self.meta if key.endswith(suffix)]

    def shape(self, name: str) -> tuple[int, ...]:
        """Original shape of tensor ``name``."""
        return tuple(int(dim) for dim in self.meta[f"{name}/{_SHAPE}"])


class Codec(Protocol):
    """What the client and server sides need of a codec."""

    def encode(self, update: Mapping[str, np.ndarray]) -> Encoded: ...

    def decode(self, encoded: Encoded) -> Update: ...


def _as_float32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def _shape_meta(name: str, array: np.ndarray) -> dict[str, tuple[int, ...]]:
    return {f"{name}/{_SHAPE}": tuple(int(dim) for dim in array.shape)}


@dataclass(frozen=True)
class NoCompression:
    """Send float32 tensors as they are; the baseline every ratio is measured against."""

    def encode(self, update: Mapping[str, np.ndarray]) -> Encoded:
        """Wrap each tensor as float32 (a float64 input is narrowed: float32 is the wire type)."""
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, tuple[int | float, ...]] = {}
        for name, tensor in update.items():
            arrays[f"{name}/{VALUES}"] = _as_float32(tensor)
            meta.update(_shape_meta(name, tensor))
        return Encoded(arrays, meta)

    def decode(self, encoded: Encoded) -> Update:
        """The float32 tensors."""
        return {
            name: encoded.arrays[f"{name}/{VALUES}"].reshape(encoded.shape(name))
            for name in encoded.tensor_names()
        }


def int8_scale(tensor: np.ndarray, per_channel: bool) -> np.ndarray:
    """Symmetric scale ``max|x| / 127``: shape ``(1,)`` per tensor, ``(c,)`` per channel.

    Per channel means per slice along axis 0 (the output channel of conv and linear weights).
    Tensors with fewer than 2 dimensions (biases, norm parameters, scalars) always get one
    scale: a scale per element would cost 5 bytes per value, more than float32's 4.
    """
    magnitude = np.abs(_as_float32(tensor))
    if per_channel and tensor.ndim >= 2:
        peak = magnitude.reshape(tensor.shape[0], -1).max(axis=1, initial=0.0)
    else:
        peak = np.array([magnitude.max(initial=0.0)], dtype=np.float32)
    scale = (peak / np.float32(_INT8_MAX)).astype(np.float32)
    if not np.all(np.isfinite(scale)):
        # A NaN cast to int8 is undefined behaviour: fail loudly rather than upload garbage.
        raise ValueError("cannot quantize an update with non-finite values")
    return scale


def _broadcastable(scale: np.ndarray, ndim: int) -> np.ndarray:
    # (c,) -> (c, 1, ..., 1) so it divides slices along axis 0; one scale stays a scalar.
    if scale.size == 1:
        return scale.reshape(())
    return scale.reshape((scale.size,) + (1,) * (ndim - 1))


def quantize_int8(tensor: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``rint(x / scale)`` as int8; all-zero slices (scale 0) quantize to 0 without dividing.

    ``np.rint`` rounds halves to even (63.5 -> 64, 62.5 -> 62); the error bound
    ``|x - q * scale| <= scale / 2`` holds either way.
    """
    tensor = _as_float32(tensor)
    step = _broadcastable(scale, tensor.ndim)
    safe_step = np.where(step > 0, step, np.float32(1.0))  # x is 0 wherever step is 0
    levels = np.rint(tensor / safe_step)
    # |x| <= max|x| makes |x / step| <= 127 up to float rounding; clip guards that last ulp.
    return np.clip(levels, -_INT8_MAX, _INT8_MAX).astype(np.int8)


def dequantize_int8(levels: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``q * scale`` in float32."""
    return (levels.astype(np.float32) * _broadcastable(scale, levels.ndim)).astype(np.float32)


@dataclass(frozen=True)
class Int8Quantization:
    """Symmetric int8 quantization: ``q = rint(x / s)``, ``s = max|x| / 127``; ~4x smaller.

    Parameters
    ----------
    per_channel : bool
        One scale per output channel (axis 0) of tensors with >= 2 dimensions instead of one
        per tensor. Costs ``4c`` bytes per tensor; tightens the error where channels differ
        in range.
    """

    per_channel: bool = False

    def encode(self, update: Mapping[str, np.ndarray]) -> Encoded:
        """Per tensor: int8 levels ``"<name>/q"`` and float32 scales ``"<name>/scale"``."""
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, tuple[int | float, ...]] = {}
        for name, tensor in update.items():
            scale = int8_scale(tensor, self.per_channel)
            arrays[f"{name}/q"] = quantize_int8(tensor, scale)
            arrays[f"{name}/scale"] = scale
            meta.update(_shape_meta(name, tensor))
        return Encoded(arrays, meta)

    def decode(self, encoded: Encoded) -> Update:
        """``q * scale`` per tensor; each element is within ``scale / 2`` of the original."""
        return {
            name: dequantize_int8(
                encoded.arrays[f"{name}/q"], encoded.arrays[f"{name}/scale"]
            ).reshape(encoded.shape(name))
            for name in encoded.tensor_names()
        }


def topk_count(fraction: float, size: int) -> int:
    """``k = max(1, ceil(fraction * size))``, at most ``size``.

    The product is rounded to 9 decimals first so that float noise cannot add an entry
    (``0.07 * 100`` is ``7.000000000000001`` in binary floating point).
    """
    return min(size, max(1, math.ceil(round(fraction * size, 9))))


def topk_indices(flat: np.ndarray, k: int) -> np.ndarray:
    """Sorted int32 indices of the ``k`` largest ``|flat|``; exactly ``k`` even under ties."""
    if flat.size >= np.iinfo(np.int32).max:
        raise ValueError(f"top-k: a tensor of {flat.size} elements overflows int32 indices")
    # argpartition is O(n) and returns exactly k positions, breaking ties arbitrarily but
    # deterministically for a given input; sorting makes the payload canonical.
    kept = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]
    return np.sort(kept).astype(np.int32)


@dataclass(frozen=True)
class TopK:
    """Keep the ``k = max(1, ceil(fraction * size))`` largest-magnitude entries of each tensor.

    Parameters
    ----------
    fraction : float
        Share of each tensor's entries kept, in ``(0, 1]``.
    """

    fraction: float

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise CompressionConfigError(
                f"compression.fraction: must be in (0, 1], got {self.fraction}"
            )

    def encode(self, update: Mapping[str, np.ndarray]) -> Encoded:
        """Per tensor: float32 ``"<name>/values"`` and int32 ``"<name>/indices"`` (flat)."""
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, tuple[int | float, ...]] = {}
        for name, tensor in update.items():
            flat = _as_float32(tensor).reshape(-1)
            indices = topk_indices(flat, topk_count(self.fraction, flat.size))
            arrays[f"{name}/{VALUES}"] = flat[indices]
            arrays[f"{name}/indices"] = indices
            meta.update(_shape_meta(name, tensor))
        return Encoded(arrays, meta)

    def decode(self, encoded: Encoded) -> Update:
        """Dense float32 tensors, zero except at the kept indices."""
        update: Update = {}
        for name in encoded.tensor_names():
            shape = encoded.shape(name)
            dense = np.zeros(math.prod(shape), dtype=np.float32)
            dense[encoded.arrays[f"{name}/indices"]] = encoded.arrays[f"{name}/{VALUES}"]
            update[name] = dense.reshape(shape)
        return update


@dataclass(frozen=True)
class Chain:
    """``first``, then ``second`` on the float32 arrays of ``first``'s payload.

    Other arrays (top-k's int32 indices) pass through untouched, so ``Chain(TopK(0.1),
    Int8Quantization())`` sends int32 indices, int8 values and one float32 scale per tensor.
    Keys are prefixed ``"first/"`` (pass-through arrays and ``first``'s metadata) and
    ``"second/"`` (``second``'s payload), which is how ``decode`` splits them again. Decoding
    runs in reverse: ``second.decode`` then ``first.decode``.

    Parameters
    ----------
    first : Codec
        Applied to the update.
    second : Codec
        Applied to ``first``'s float32 payload arrays, treated as tensors of their own.
    """

    first: Codec
    second: Codec

    def encode(self, update: Mapping[str, np.ndarray]) -> Encoded:
        """Encode with ``first``, then re-encode its float32 arrays with ``second``."""
        inner = self.first.encode(update)
        floats = {key: a for key, a in inner.arrays.items() if a.dtype == np.float32}
        outer = self.second.encode(floats)
        arrays = {f"first/{k}": a for k, a in inner.arrays.items() if k not in floats}
        arrays.update({f"second/{k}": a for k, a in outer.arrays.items()})
        meta = {f"first/{k}": v for k, v in inner.meta.items()}
        meta.update({f"second/{k}": v for k, v in outer.meta.items()})
        return Encoded(arrays, meta)

    def decode(self, encoded: Encoded) -> Update:
        """``first.decode`` of the pass-through arrays plus ``second.decode`` of the rest."""
        inner_arrays = dict(self.second.decode(_strip(encoded, "second/")))
        first = _strip(encoded, "first/")
        inner_arrays.update(first.arrays)
        return self.first.decode(Encoded(inner_arrays, first.meta))


def _strip(encoded: Encoded, prefix: str) -> Encoded:
    """The part of ``encoded`` under ``prefix``, with the prefix removed from its keys."""

    def take(mapping: Mapping) -> dict:
        return {k[len(prefix) :]: v for k, v in mapping.items() if k.startswith(prefix)}

    return Encoded(take(encoded.arrays), take(encoded.meta))
