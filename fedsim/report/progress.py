"""Progress display: a rich bar on a terminal, plain lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fedsim.report.run_log import RoundRecord


class RoundProgress:
    """Shows round, accuracy and elapsed time as rounds finish."""

    def __init__(self, rounds: int, mode: str = "auto") -> None:
        self.rounds = rounds
        self.fancy = mode == "bar" or (mode == "auto" and sys.stdout.isatty())
        self._bar: Progress | None = None
        self._task = None
        self._last_accuracy: float | None = None
        self._last_evaluated = 0

    def start(self) -> None:
        if self.fancy:
            self._bar = Progress(
                TextColumn("round {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[accuracy]}"),
                TimeElapsedColumn(),
            )
            self._bar.start()
            self._task = self._bar.add_task("rounds", total=self.rounds, accuracy="acc -")

    def update(self, record: RoundRecord) -> None:
        if record.accuracy is not None:
            self._last_accuracy, self._last_evaluated = record.accuracy, record.round
        # Between evaluations, show the latest accuracy with the round it was measured at.
        accuracy = (
            "-" if self._last_accuracy is None
            else f"{self._last_accuracy:.4f}" if self._last_evaluated == record.round
            else f"{self._last_accuracy:.4f}@r{self._last_evaluated}"
        )
        if self._bar is not None:
            self._bar.update(self._task, completed=record.round, accuracy=f"acc {accuracy}")
        elif self.fancy is False:
            failed = f" failed={record.failed}" if record.failed else ""
            dropped = "".join(f" {reason}={n}" for reason, n in record.dropped.items())
            print(
                f"round {record.round}/{self.rounds} acc={accuracy} "
                f"clients={record.completed}/{record.sampled}{failed}{dropped} "
                f"sim={record.sim_time_s:.0f}s "
                f"elapsed={record.elapsed_wall_s:.1f}s",
                flush=True,
            )

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
