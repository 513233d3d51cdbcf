"""``logger=tensorboard``: TensorBoard event files in each run's directory.

A sweep's jobs each write into their own directory, so ``tensorboard --logdir
multirun/<date>/<time>`` lists one run per job (named by the job's directory) and overlays their
curves. The writer is PyTorch's ``torch.utils.tensorboard.SummaryWriter``; the ``tensorboard``
package it needs is an optional extra (``pip install -e ".[tensorboard]"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fedsim.report.run_log import RoundRecord
from fedsim.report.trackers.base import (
    TrackedRun, Tracker, TrackerSession, require, round_scalars, summary_scalars,
)


def as_markdown_code(text: str) -> str:
    """``text`` as a Markdown code block (TensorBoard renders text summaries as Markdown)."""
    return "\n".join("    " + line for line in text.splitlines())


class TensorBoardSession(TrackerSession):
    """One run's event file: every round's scalars at ``step = round``."""

    def __init__(self, log_dir: Path, run: TrackedRun) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ~0.5 s beyond torch: only when chosen

        # purge_step: a resumed run redoes the rounds after its checkpoint; TensorBoard then
        # drops what an earlier session logged from that round on, so no round shows twice.
        self.writer = SummaryWriter(
            log_dir=str(log_dir), purge_step=run.first_round if run.first_round > 1 else None,
        )
        self.last_round = run.first_round - 1
        if run.first_round == 1:
            self.writer.add_text("config", as_markdown_code(run.config_yaml), 0)
            self.writer.add_text("overrides", as_markdown_code("\n".join(run.overrides)), 0)

    def log_round(self, record: RoundRecord) -> None:
        for tag, value in round_scalars(record).items():
            self.writer.add_scalar(tag, value, record.round)
        self.last_round = record.round
        self.writer.flush()  # a sweep's TensorBoard shows each round as it ends

    def close(self, summary: dict[str, Any]) -> None:
        for tag, value in summary_scalars(summary).items():
            self.writer.add_scalar(tag, value, self.last_round)
        text = json.dumps(summary, indent=2, default=str)
        self.writer.add_text("summary", as_markdown_code(text), self.last_round)
        self.writer.close()


@dataclass(frozen=True)
class TensorBoard(Tracker):
    """TensorBoard event files, by default in the run directory.

    Parameters
    ----------
    log_dir : str or None
        Where the event files go; ``None``: the run directory.
    """

    name: ClassVar[str] = "tensorboard"
    log_dir: str | None = None

    def __post_init__(self) -> None:
        require("tensorboard", self.name)

    def open(self, run: TrackedRun) -> TrackerSession:
        return TensorBoardSession(Path(self.log_dir) if self.log_dir else run.run_dir, run)
