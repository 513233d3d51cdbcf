"""``checkpoint.pkl``: everything a run needs to continue after its last finished round.

A checkpoint holds the global model, the stateful part of the server's strategy stack (the
user's strategy with its state, e.g. FedAdam's moments, inside the privacy wrapper with its
own, e.g. the adaptive clipping norm: :attr:`fedsim.strategy.stack.StrategyStack.checkpointed`),
the privacy accountant's state and the round records so far. Nothing else is needed to
continue bit-identically: cohorts, local shuffles and DP noise are pure functions of
``(seed, round, client)``.

Writes are atomic (temporary file in the same directory, flush, fsync, rename, fsync of the
directory), so a kill at any instant leaves either the previous checkpoint or the new one, never
a torn file.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedsim.errors import UserInputError

CHECKPOINT_FILE = "checkpoint.pkl"
FORMAT = 1  # bump when the layout changes; older checkpoints are refused by name


class CheckpointError(UserInputError):
    """A checkpoint cannot be used; the message is one line."""


@dataclass
class Checkpoint:
    """The state after ``round`` finished rounds."""

    round: int
    arrays: ArrayRecord
    strategy: Strategy  # the privacy wrapper (if any) around the user strategy, state and all
    accountant: dict[str, Any] | None  # PrivacyAccountant.state(), or None without DP
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl lines so far
    format: int = FORMAT


def snapshot(checkpoint: Checkpoint) -> bytes:
    """The checkpoint as bytes (taken at a round's end; written to disk only when due)."""
    return pickle.dumps(checkpoint, protocol=pickle.HIGHEST_PROTOCOL)


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


def load(run_dir: Path) -> Checkpoint:
    """The checkpoint in ``run_dir``; a one-line :class:`CheckpointError` if there is none."""
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"resume: {run_dir} has no {CHECKPOINT_FILE} (no round finished?)")
    try:
        checkpoint = pickle.loads(path.read_bytes())
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"resume: {path} is not readable ({type(err).__name__})") from None
    if not isinstance(checkpoint, Checkpoint) or checkpoint.format != FORMAT:
        raise CheckpointError(f"resume: {path} is not a fedsim checkpoint of format {FORMAT}")
    return checkpoint
