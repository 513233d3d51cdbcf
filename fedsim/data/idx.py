"""Reader for IDX, the format MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao et al. 2017,
arXiv:1708.07747) ship in.

An IDX file is a 4-byte magic ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32
dimension sizes, then the row-major payload in big-endian byte order, usually gzip-compressed.
Every way a file can be broken (missing, truncated, corrupt gzip, bad header, payload of the wrong
length) raises a one-line :class:`~fedsim.data.datasets.DatasetError` naming the file: a
half-finished download is the common case, and a zlib traceback does not say which file to delete.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from fedsim.data.splits import DatasetError

# dtype code (third magic byte) -> big-endian element type, from the format's specification.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file, gzip-compressed or raw.

    A name ending in ``.gz`` must be gzip; another name is decompressed if it starts like gzip.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.

    Returns
    -------
    np.ndarray
        Array of the header's shape in native byte order. ``uint8`` data (all of MNIST) is a
        zero-copy, read-only view of the decompressed bytes; ``.copy()`` it to modify it.

    Raises
    ------
    DatasetError
        If the file is missing, unreadable, not valid gzip, or not a well-formed IDX file.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise DatasetError(f"{name}: cannot read IDX file ({exc.strerror or exc})") from None
    if name.endswith(".gz") or blob.startswith(_GZIP_MAGIC):
        if not blob.startswith(_GZIP_MAGIC):
            raise DatasetError(
                f"{name}: not a gzip file (no gzip magic bytes); delete it and fetch it again"
            )
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as exc:
            # EOFError: truncated download; zlib.error / BadGzipFile (an OSError): corrupt bytes.
            raise DatasetError(
                f"{name}: corrupt or truncated gzip ({exc}); delete it and fetch it again"
            ) from None
    return parse_idx(blob, name)


def parse_idx(blob: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode uncompressed IDX bytes; ``name`` only labels error messages.

    Parameters
    ----------
    blob : bytes
        The whole uncompressed file.
    name : str
        What to call the source in errors.

    Returns
    -------
    np.ndarray
        See :func:`read_idx`.
    """
    if len(blob) < 4:
        raise DatasetError(
            f"{name}: IDX file is {len(blob)} bytes, shorter than its 4-byte magic number"
        )
    zero_a, zero_b, code, ndim = blob[:4]
    if zero_a != 0 or zero_b != 0:
        raise DatasetError(
            f"{name}: bad IDX magic number 0x{blob[:4].hex()} (must start with 0000)"
        )
    if code not in IDX_DTYPES:
        raise DatasetError(
            f"{name}: unknown IDX dtype code 0x{code:02x} (known: 08 09 0b 0c 0d 0e)"
        )
    header_len = 4 + 4 * ndim
    if len(blob) < header_len:
        raise DatasetError(
            f"{name}: IDX header declares {ndim} dims but the file ends after {len(blob)} bytes"
        )
    dims = tuple(int(d) for d in np.frombuffer(blob, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(blob) - header_len
    if payload != expected:
        raise DatasetError(
            f"{name}: IDX header says shape {dims} ({expected} payload bytes) but the file "
            f"holds {payload}" + (" (truncated)" if payload < expected else " (trailing bytes)")
        )
    data = np.frombuffer(blob, dtype=dtype, offset=header_len).reshape(dims)
    # Single bytes have no byte order; wider types are converted so callers never see '>' dtypes.
    return data if dtype.itemsize == 1 else data.astype(dtype.newbyteorder("="))
