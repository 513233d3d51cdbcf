"""``checkpoint.safetensors``: a file that holds a run's state as data, so opening it runs nothing.

Run directories travel (copied off a cluster, shared with a colleague, downloaded with a
paper's artefacts), so resuming one must not execute what its files say. A checkpoint is one
safetensors file (https://github.com/huggingface/safetensors: a JSON header, then raw tensor
bytes; its reader parses, it never imports or calls anything): the tensors are the global model
and the strategy's arrays, and the header's metadata carries everything else as JSON (round,
the strategy's other values, the privacy accountant, what the run was). It carries a format
name and version and a SHA-256 of its content, so a torn, edited or foreign file is refused in
one line naming what is wrong. A ``checkpoint.pkl`` of an older fedsim is refused by name and
never opened: unpickling runs whatever the file says (the reason PyTorch moved ``torch.load`` to
``weights_only=True``).

Round records are not in the checkpoint: ``metrics.jsonl`` holds them, append-only, and the
checkpoint holds a hash of its first ``round`` lines (:mod:`fedsim.run.state`), so a
checkpoint costs the same at round 10 and at round 100,000.

Writes are atomic (temporary file in the same directory, flush, fsync, rename, fsync of the
directory), so a kill at any instant leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_tensors

from fedsim.errors import UserInputError

CHECKPOINT_FILE = "checkpoint.safetensors"
LEGACY_FILE = "checkpoint.pkl"  # fedsim <= format 1: a pickle, never opened
FORMAT = "fedsim-checkpoint"
VERSION = 2  # bump when the layout changes; other versions are refused by number


class CheckpointError(UserInputError):
    """A checkpoint cannot be used; the message is one line."""


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds: JSON ``content`` and named ``tensors``."""

    content: dict[str, Any]
    tensors: dict[str, np.ndarray]

    @property
    def round(self) -> int:
        return int(self.content["round"])


# numpy dtype -> safetensors dtype (https://github.com/huggingface/safetensors#format)
DTYPES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16",
    "uint32": "U32", "int32": "I32", "uint64": "U64", "int64": "I64",
    "float16": "F16", "float32": "F32", "float64": "F64",
}


def content_hash(content_json: str, index_json: str, data: memoryview | bytes) -> str:
    """SHA-256 over the JSON content, the tensor index (names, dtypes, shapes, offsets), data."""
    digest = hashlib.sha256(content_json.encode())
    digest.update(b"\0" + index_json.encode() + b"\0")
    digest.update(data)
    return digest.hexdigest()


def canonical(index: Mapping[str, Any]) -> str:
    return json.dumps(index, sort_keys=True, separators=(",", ":"))


def encode(content: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> bytes:
    """The checkpoint file's bytes: a safetensors file whose metadata holds ``content``.

    Written here rather than by ``safetensors.numpy.save``, which costs ~30 ms a call in
    per-tensor Python for a model of a few hundred tensors; the layout is the format's own
    (8-byte header length, JSON header, then the tensors' bytes back to back) and files are
    read with the safetensors library, which checks it.
    """
    index, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name], order="C")  # (ascontiguousarray makes 0-d 1-d)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        index[name] = {"dtype": DTYPES[array.dtype.name], "shape": list(array.shape),
                       "data_offsets": [offset, offset + array.nbytes]}
        chunks.append(array.reshape(-1).view(np.uint8).data if array.size else b"")
        offset += array.nbytes
    data = b"".join(chunks)
    content_json = json.dumps(content, sort_keys=True)
    metadata = {
        "format": FORMAT, "version": str(VERSION), "content": content_json,
        "sha256": content_hash(content_json, canonical(index), data),
    }
    header = json.dumps({**index, "__metadata__": metadata}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format aligns the data on 8 bytes
    return b"".join([struct.pack("<Q", len(header)), header, data])


def decode(payload: bytes, path: Path) -> Checkpoint:
    """The checkpoint in ``payload`` (the bytes of ``path``), checked; one line if it is not."""
    try:
        tensors = load_tensors(payload)  # the safetensors reader checks the layout
        (header_size,) = struct.unpack("<Q", payload[:8])
        index = json.loads(payload[8 : 8 + header_size])
        metadata = index.pop("__metadata__", None) or {}
    except (SafetensorError, struct.error, ValueError, AttributeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"resume: {path} is torn or not a checkpoint ({len(payload)} bytes; {reason})"
        ) from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"resume: {path} is not a fedsim checkpoint (no '{FORMAT}' header)")
    if metadata.get("version") != str(VERSION):
        raise CheckpointError(
            f"resume: {path} is a fedsim checkpoint of format version {metadata.get('version')}; "
            f"this fedsim reads version {VERSION}"
        )
    content_json = metadata.get("content", "")
    data = memoryview(payload)[8 + header_size :]
    if metadata.get("sha256") != content_hash(content_json, canonical(index), data):
        raise CheckpointError(
            f"resume: {path} does not match its content hash (edited or damaged after it was "
            "written)"
        )
    try:
        content = json.loads(content_json)
        int(content["round"])
    except (ValueError, TypeError, KeyError):
        raise CheckpointError(f"resume: {path} has no round in its content") from None
    return Checkpoint(content, tensors)


def write_atomically(path: Path, payload: bytes) -> None:
    """Replace ``path`` with ``payload`` so that a crash leaves the old or the new file whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load(run_dir: Path) -> Checkpoint | None:
    """The checkpoint in ``run_dir``, checked; None if the run finished no round before it died.

    A ``checkpoint.pkl`` is refused by name (never opened), whatever else the directory holds.
    """
    legacy, path = run_dir / LEGACY_FILE, run_dir / CHECKPOINT_FILE
    if legacy.exists():
        way = f"remove it to resume from {CHECKPOINT_FILE}" if path.exists() else "rerun the config"
        raise CheckpointError(
            f"resume: {legacy} is a pickle checkpoint of an older fedsim; unpickling can run any "
            f"code, so fedsim never opens one ({way})"
        )
    if not path.is_file():
        return None
    return decode(path.read_bytes(), path)
