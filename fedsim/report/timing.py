"""Where a run's host time went: start-up, rounds, and the shut-down, audit and report after them.

``summary.json``'s ``wall_s`` has always been the time from the start of
:func:`fedsim.run.simulation.run` to the summary, before the audit; the closing line and the
``*_s`` keys here split the whole process instead, from the interpreter's start to the final
``summary.json``, so that the figures add up to what a user waits for.
"""

from __future__ import annotations

import time
from typing import Any

from fedsim.report.run_log import RoundRecord


def time_split(
    started: float, first_round: float | None, last_round: float | None, ended: float
) -> dict[str, float]:
    """``startup_s``, ``rounds_s``, ``report_s`` and ``total_s`` from four instants (seconds).

    ``started``: the process started; ``first_round``: the first round of this session began;
    ``last_round``: its last round ended; ``ended``: the final summary was written. A run that
    finished no round spent all its time starting (``rounds_s`` 0, ``report_s`` 0: what came
    after the failed start is part of it).

    Examples
    --------
    >>> time_split(100.0, 112.0, 221.9, 231.2)
    {'startup_s': 12.0, 'rounds_s': 109.9, 'report_s': 9.3, 'total_s': 131.2}
    >>> time_split(0.0, None, None, 5.0)
    {'startup_s': 5.0, 'rounds_s': 0.0, 'report_s': 0.0, 'total_s': 5.0}
    """
    if first_round is None or last_round is None:
        first_round = last_round = ended
    split = {
        "startup_s": first_round - started,
        "rounds_s": last_round - first_round,
        "report_s": ended - last_round,
        "total_s": ended - started,
    }
    return {key: round(value, 3) for key, value in split.items()}


class RunClock:
    """Marks the first and last round of this session as their records arrive.

    ``started`` is the process's start on :func:`time.perf_counter`'s clock (``run_sim.py`` takes
    it before its imports); the first round began ``record.elapsed_wall_s`` before its record.
    """

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_round: float | None = None
        self.last_round: float | None = None

    def on_round(self, record: RoundRecord) -> None:
        now = time.perf_counter()
        if self.first_round is None:
            self.first_round = now - record.elapsed_wall_s
        self.last_round = now

    def split(self) -> dict[str, Any]:
        """The four figures, as of now."""
        return time_split(self.started, self.first_round, self.last_round, time.perf_counter())


def closing_line(summary: dict[str, Any]) -> str:
    """The run's last result line: the accuracy, and what the time covers.

    Examples
    --------
    >>> line = closing_line({"final_accuracy": 0.91944, "rounds": 25, "startup_s": 12.0,
    ...                      "rounds_s": 109.9, "report_s": 9.3, "total_s": 131.2})
    >>> head, times = line.split("; ")
    >>> head
    'final accuracy 0.9194 after 25 rounds'
    >>> times.split(" (")
    ['109.9 s of rounds, 131.2 s in all', 'start-up 12.0, shut-down, audit and report 9.3)']
    """
    accuracy = summary.get("final_accuracy")
    shown = "n/a" if accuracy is None else f"{accuracy:.4f}"
    return (
        f"final accuracy {shown} after {summary['rounds']} rounds; "
        f"{summary['rounds_s']:.1f} s of rounds, {summary['total_s']:.1f} s in all "
        f"(start-up {summary['startup_s']:.1f}, "
        f"shut-down, audit and report {summary['report_s']:.1f})"
    )
