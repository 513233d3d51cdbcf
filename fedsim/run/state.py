"""What a run has produced so far, and the checkpoints that let it continue.

:class:`RunState` is the thin stateful shell the round loop reports to. Each finished round is
appended to ``metrics.jsonl`` (fsynced) first, then captured as an in-memory snapshot of the
server's state (:mod:`fedsim.run.checkpoint`: the model, the strategy's state as data, the
accountant); every ``checkpoint_every`` rounds, at the end and on Ctrl-C the latest snapshot is
written atomically. A snapshot is taken at a round's end, never mid-round, so a checkpoint
always describes finished rounds only.

The records themselves stay in ``metrics.jsonl``: the checkpoint holds how many lines of it are
its rounds and a SHA-256 of those lines (kept as a running hash, O(1) a round).
:func:`restored_records` reads them back on resume and checks the hash; lines after them (a run
killed between the two writes, or between checkpoints) are dropped, and the resumed run
redoes those rounds.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord

from fedsim.privacy.plan import PrivacyPlan
from fedsim.report.run_log import RoundRecord, RunLog
from fedsim.run.checkpoint import (
    CHECKPOINT_FILE, Checkpoint, CheckpointError, encode, write_atomically,
)
from fedsim.strategy.saved_state import StackState, StateError, numpy_view

METRICS_FILE = "metrics.jsonl"


class RunState:
    """Records rounds and keeps the latest checkpoint of a run in ``out_dir``.

    Parameters
    ----------
    out_dir : Path
        The run directory.
    stack : StackState
        The stateful layers of the strategy stack (:mod:`fedsim.strategy.saved_state`).
    privacy : PrivacyPlan
        Its accountant's state goes into every checkpoint.
    arrays : ArrayRecord
        The global model before the first round this invocation runs.
    checkpoint_every : int
        Write the checkpoint every this many rounds.
    identity : dict
        What the run is (:func:`run_identity`); a resume checks it against its config.
    restored : list[RoundRecord]
        Rounds a resumed run already has (``metrics.jsonl`` is rewritten to exactly these).
    on_checkpoint : callable, optional
        Called with the round of each checkpoint written (error feedback prunes its files).
    """

    def __init__(
        self, out_dir: Path, stack: StackState, privacy: PrivacyPlan, arrays: ArrayRecord,
        checkpoint_every: int, identity: dict[str, Any],
        restored: list[RoundRecord] | None = None,
        on_checkpoint: Callable[[int], None] | None = None,
    ) -> None:
        self.path = out_dir / CHECKPOINT_FILE
        self.stack = stack
        self.privacy = privacy
        self.arrays = arrays
        self.checkpoint_every = checkpoint_every
        self.identity = identity
        self.log = RunLog(out_dir / METRICS_FILE, restored or [])
        self._metrics = hashlib.sha256()  # of the lines in metrics.jsonl, as RunLog wrote them
        for record in self.log.records:
            self._metrics.update((record.to_json() + "\n").encode())
        self.on_checkpoint = on_checkpoint
        self._snapshot: bytes | None = None
        self._snapshot_round = 0
        self._written = True  # nothing new to write yet
        self._noted = False

    @property
    def records(self) -> list[RoundRecord]:
        return self.log.records

    def on_round(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        """Append ``record``, snapshot the server's state, then checkpoint when due.

        Record first: a kill between the two leaves ``metrics.jsonl`` a round ahead of the
        checkpoint, and resuming drops that line and redoes the round.
        """
        self.log.append(record)
        self._metrics.update((record.to_json() + "\n").encode())
        strategy, tensors = self.stack.capture(round_start=self.arrays)
        if strategy["unsaved"] and not self._noted:
            self._noted = True
            print(f"fedsim: note: {strategy['unsaved']} changes between rounds and its class has "
                  "no state_dict()/load_state_dict(); this run cannot be resumed "
                  "(docs/reliability.md#a-strategys-state)", file=sys.stderr)
        tensors.update({f"model/{name}": numpy_view(array) for name, array in arrays.items()})
        accountant = self.privacy.accountant
        content = {
            "round": record.round,
            "run": self.identity,
            "model": list(arrays.keys()),
            "strategy": strategy,
            "accountant": accountant.state() if accountant is not None else None,
            "metrics": {"lines": len(self.log.records), "sha256": self._metrics.hexdigest()},
        }
        self._snapshot = encode(content, tensors)
        self._snapshot_round = record.round
        self.arrays = arrays
        self._written = False
        if record.round % self.checkpoint_every == 0:
            self.write_checkpoint()

    def write_checkpoint(self) -> None:
        """Write the latest snapshot to disk (atomically) unless it already is."""
        if self._snapshot is not None and not self._written:
            write_atomically(self.path, self._snapshot)
            self._written = True
            if self.on_checkpoint is not None:
                self.on_checkpoint(self._snapshot_round)


def run_identity(seed: int, sampler: object, privacy: PrivacyPlan) -> dict[str, Any]:
    """What a checkpoint must agree with to be this run's: the seed, the sampler, the ledger."""
    accountant = privacy.accountant
    settings = None if accountant is None else {
        k: v for k, v in accountant.state().items() if k != "rounds"
    }
    return {"seed": seed, "sampler": repr(sampler), "accountant": settings}


def check_identity(saved: Checkpoint, identity: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint of another run (copied into this directory) in one line."""
    theirs = json.loads(json.dumps(saved.content.get("run")))
    ours = json.loads(json.dumps(identity))  # the same JSON round trip the saved one took
    for key in ours:
        if not isinstance(theirs, dict) or theirs.get(key) != ours[key]:
            found = theirs.get(key) if isinstance(theirs, dict) else None
            raise CheckpointError(
                f"resume: {path} belongs to another run: its {key} is {found}, this run's "
                f"config gives {ours[key]}"
            )


def saved_model(saved: Checkpoint, like: ArrayRecord, path: Path) -> ArrayRecord:
    """The checkpoint's global model; refused if its tensors are not the config's model's."""
    names = saved.content.get("model")
    if names != list(like.keys()) or any(
        saved.tensors[f"model/{n}"].shape != tuple(like[n].shape)
        or saved.tensors[f"model/{n}"].dtype.str != like[n].numpy().dtype.str
        for n in names
    ):
        raise CheckpointError(f"resume: {path} holds another model than the run's config builds")
    return ArrayRecord({n: Array(saved.tensors[f"model/{n}"].copy()) for n in names})


def restore_strategy(saved: Checkpoint, stack: StackState, path: Path) -> None:
    """Put the checkpoint's strategy state into the freshly built layers (one line if unfit)."""
    try:
        stack.restore(saved.content["strategy"], saved.tensors)
    except StateError as err:
        raise CheckpointError(f"resume: {path}: {err}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise CheckpointError(
            f"resume: {path}: its strategy state does not fit the run's strategy "
            f"({type(err).__name__}: {err})"
        ) from None


def restored_records(out_dir: Path, saved: Checkpoint) -> list[RoundRecord]:
    """The checkpoint's rounds from ``metrics.jsonl``, checked against its hash of them."""
    path = out_dir / METRICS_FILE
    expected = saved.content["metrics"]
    needed, lines = int(expected["lines"]), []
    if path.exists():
        with open(path, "rb") as fh:
            for line in fh:  # lines after the checkpoint's, possibly torn, are never parsed
                if len(lines) == needed or not line.endswith(b"\n"):
                    break
                lines.append(line)
    digest = hashlib.sha256(b"".join(lines))
    if len(lines) < needed:
        raise CheckpointError(
            f"resume: {path} has {len(lines)} complete rounds, fewer than the "
            f"{expected['lines']} its checkpoint was written after"
        )
    if digest.hexdigest() != expected["sha256"]:
        raise CheckpointError(
            f"resume: the first {len(lines)} rounds of {path} are not those its checkpoint was "
            "written after (edited?)"
        )
    try:
        return [RoundRecord(**json.loads(line)) for line in lines]
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"resume: {path} has a record fedsim cannot read ({err})") from None
