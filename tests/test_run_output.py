"""What a run prints, and the host time it reports: fedsim's own lines only, and a split of the
whole process that adds up (start-up, rounds, shut-down with audit and report)."""

from __future__ import annotations

import doctest
import json
import re
from pathlib import Path

import pytest

from fedsim.report import timing
from fedsim.report.timing import closing_line, time_split
from tests.helpers import rounds, run_cli

PROGRESS = re.compile(r"round \d+/2 acc=\S+ clients=\d+/\d+ sim=\d+s elapsed=[\d.]+s")


def test_time_split_and_closing_line_by_hand() -> None:
    assert doctest.testmod(timing).failed == 0
    # Interrupted before its first round ended: all of it was start-up.
    assert time_split(10.0, None, None, 12.5) == {
        "startup_s": 2.5, "rounds_s": 0.0, "report_s": 0.0, "total_s": 2.5
    }
    line = closing_line({"final_accuracy": None, "rounds": 0, "startup_s": 2.5, "rounds_s": 0.0,
                         "report_s": 0.0, "total_s": 2.5})
    assert line.startswith("final accuracy n/a after 0 rounds; 0.0 s of rounds, 2.5 s in all")


@pytest.mark.slow
def test_a_run_prints_only_its_own_lines_and_times_the_whole_process(tmp_path: Path) -> None:
    result = run_cli(tmp_path)  # +debug=tiny, with the default audit
    summary = json.loads((tmp_path / "summary.json").read_text())
    *progress, closing, results = result.stdout.splitlines()
    assert len(progress) == 2 and all(PROGRESS.fullmatch(line) for line in progress), progress
    assert closing == closing_line(summary)
    assert results == f"results: {tmp_path}"
    assert result.stderr == ""  # no warning from torch, Flower, Ray or Hydra, no Ray notice

    parts = summary["startup_s"], summary["rounds_s"], summary["report_s"]
    assert all(p > 0 for p in parts)
    assert sum(parts) == pytest.approx(summary["total_s"], abs=0.01)
    # The rounds run from the first round's start to the last one's record (its round loop's
    # own clock: elapsed_wall_s), give or take the writing of that record.
    assert summary["rounds_s"] == pytest.approx(rounds(tmp_path)[-1]["elapsed_wall_s"], abs=0.5)
    # wall_s begins after the imports and ends before the audit: inside the whole.
    assert summary["wall_s"] < summary["total_s"]
