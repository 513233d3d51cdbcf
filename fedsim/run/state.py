"""What a run has produced so far, and the checkpoints that let it continue.

:class:`RunState` is the thin stateful shell the round loop reports to: each finished round is
appended to ``metrics.jsonl`` (fsynced) and captured as an in-memory snapshot of the server's
whole state; every ``checkpoint_every`` rounds, at the end and on Ctrl-C the latest snapshot is
written atomically to ``checkpoint.pkl``. A snapshot is taken at a round's end, never mid-round,
so a checkpoint always describes finished rounds only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedsim.run.checkpoint import CHECKPOINT_FILE, Checkpoint, snapshot, write_atomically
from fedsim.privacy.plan import PrivacyPlan
from fedsim.report.run_log import RoundRecord, RunLog


class RunState:
    """Records rounds and keeps the latest checkpoint of a run in ``out_dir``.

    Parameters
    ----------
    out_dir : Path
        The run directory.
    strategy : Strategy
        The stack's stateful part, which a checkpoint captures
        (:attr:`fedsim.strategy.stack.StrategyStack.checkpointed`).
    privacy : PrivacyPlan
        Its accountant's state goes into every checkpoint.
    arrays : ArrayRecord
        The global model before the first round this invocation runs.
    checkpoint_every : int
        Write ``checkpoint.pkl`` every this many rounds.
    restored : list[RoundRecord]
        Rounds a resumed run already has (``metrics.jsonl`` is rewritten to exactly these).
    on_checkpoint : callable, optional
        Called with the round of each checkpoint written (error feedback prunes its files).
    """

    def __init__(
        self, out_dir: Path, strategy: Strategy, privacy: PrivacyPlan, arrays: ArrayRecord,
        checkpoint_every: int, restored: list[RoundRecord] | None = None,
        on_checkpoint: Callable[[int], None] | None = None,
    ) -> None:
        self.path = out_dir / CHECKPOINT_FILE
        self.strategy = strategy
        self.privacy = privacy
        self.arrays = arrays
        self.checkpoint_every = checkpoint_every
        self.log = RunLog(out_dir / "metrics.jsonl", restored or [])
        self._record_dicts = [asdict(r) for r in self.log.records]  # converted once each
        self.on_checkpoint = on_checkpoint
        self._snapshot: bytes | None = None
        self._snapshot_round = 0
        self._written = True  # nothing new to write yet

    @property
    def records(self) -> list[RoundRecord]:
        return self.log.records

    def on_round(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        """Snapshot the server's state, checkpoint when due, then append ``record``.

        Checkpoint first: a kill between the two leaves a checkpoint one round ahead of
        ``metrics.jsonl``, which resuming rewrites from the checkpoint's own records.
        """
        self.arrays = arrays
        self._record_dicts.append(asdict(record))
        accountant = self.privacy.accountant
        self._snapshot = snapshot(
            Checkpoint(
                round=record.round,
                arrays=arrays,
                strategy=self.strategy,
                accountant=accountant.state() if accountant is not None else None,
                records=list(self._record_dicts),
            )
        )
        self._snapshot_round = record.round
        self._written = False
        if record.round % self.checkpoint_every == 0:
            self.write_checkpoint()
        self.log.append(record)

    def write_checkpoint(self) -> None:
        """Write the latest snapshot to disk (atomically) unless it already is."""
        if self._snapshot is not None and not self._written:
            write_atomically(self.path, self._snapshot)
            self._written = True
            if self.on_checkpoint is not None:
                self.on_checkpoint(self._snapshot_round)
