"""What a phone keeps from one participation to its next, on disk: :class:`PhoneFiles`.

Two things use it: error feedback's residuals (:mod:`fedsim.compression.error_feedback`) and a
client algorithm's per-phone state (SCAFFOLD's control variate, :mod:`clients.algorithms`).
Nothing exists for a phone until it first participates, so a population of 1,000,000 costs
nothing up front; a resumed run ignores what the rounds it redoes left before the crash.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class PhoneFiles:
    """Per-phone arrays on disk, one ``<client id>.r<round>.npz`` per participation, reachable
    from any process.

    A virtual client runs in whichever Ray actor is free, so state kept in one actor's memory
    would not be seen by the phone's next participation in another. This store is only a
    directory path (cheap to pickle into every actor);
    files exist only for clients that have uploaded. Each file carries the round that wrote it,
    and a client in round ``r`` reads its newest state from a round before ``r``: a run
    resumed from a checkpoint at round ``k`` redoes rounds after ``k`` and must not see the
    states those rounds left before the crash. :meth:`prune` (called at each checkpoint)
    keeps, per client, the newest file from rounds up to the checkpoint and any later ones, so
    disk use stays about ``participants x model size x 4`` bytes and memory one state per
    busy actor. Writes go to a temporary file and are renamed into place (atomic on POSIX). The
    directory must be shared by all processes (a local run, or a shared filesystem on a
    multi-node cluster).

    Parameters
    ----------
    directory : str
        Where the files live; created on first write.
    """

    directory: str

    def path(self, client_id: int, server_round: int) -> Path:
        return Path(self.directory) / f"{int(client_id)}.r{int(server_round)}.npz"

    def _rounds(self, client_id: int) -> list[int]:
        """Rounds with a stored state of ``client_id``, ascending."""
        prefix = f"{int(client_id)}.r"
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(
            int(n[len(prefix):-4]) for n in names if n.startswith(prefix) and n.endswith(".npz")
        )

    def get(self, client_id: int, server_round: int) -> Arrays | None:
        """``client_id``'s state from its newest participation before ``server_round``."""
        earlier = [r for r in self._rounds(client_id) if r < server_round]
        if not earlier:
            return None
        # allow_pickle=False: a run directory's files are data; a pickle in one could run code.
        with np.load(self.path(client_id, earlier[-1]), allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}

    def put(self, client_id: int, server_round: int, state: Mapping[str, np.ndarray]) -> None:
        """Atomically store ``client_id``'s state after ``server_round`` (float32)."""
        os.makedirs(self.directory, exist_ok=True)
        arrays = {name: np.asarray(t, dtype=np.float32) for name, t in state.items()}
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, self.path(client_id, server_round))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def prune(self, checkpoint_round: int) -> None:
        """Drop files no resume from ``checkpoint_round`` or later can need."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        by_client: dict[int, list[int]] = {}
        for name in names:
            if name.endswith(".npz") and ".r" in name:
                client, rnd = name[:-4].split(".r")
                by_client.setdefault(int(client), []).append(int(rnd))
        for client, rounds in by_client.items():
            settled = sorted(r for r in rounds if r <= checkpoint_round)
            for rnd in settled[:-1]:  # superseded before the checkpoint: never read again
                self.path(client, rnd).unlink(missing_ok=True)
