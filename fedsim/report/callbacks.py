"""Hydra callbacks: the overview and the trade-off report at the end of every multirun."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class TradeoffReport(Callback):
    """After ``run_sim.py -m ...`` finishes, write ``overview.png`` (every job's accuracy curve),
    ``tradeoff.{csv,md,png}`` and, when the jobs have a target accuracy,
    ``rounds_to_target.{md,png}`` into the sweep dir.

    A report failure must not look like a failed sweep: it is one line on stderr, and
    ``python -m fedsim.report <dir>`` can write it again.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Imported here: keep `run_sim.py` start fast.
        from fedsim.report.overview import OVERVIEW, write_overview
        from fedsim.report.rounds_to_target import write_rounds_to_target
        from fedsim.report.sweep import find_jobs
        from fedsim.report.tradeoff import OUTPUTS, write_report

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            curves = write_overview(sweep_dir)
            print(f"fedsim: {len(curves)} runs -> {sweep_dir / OVERVIEW}")
        except Exception as err:  # noqa: BLE001 - reported, never raised: the jobs are done
            print(f"fedsim: overview not written: {err}", file=sys.stderr)
        try:
            rows = write_report(sweep_dir)
        except Exception as err:  # noqa: BLE001 - reported, never raised: the jobs are done
            print(f"fedsim: trade-off report not written: {err}", file=sys.stderr)
            return
        print(f"fedsim: {len(rows)} settings -> {sweep_dir / OUTPUTS[1]}")
        try:
            if write_rounds_to_target(sweep_dir, find_jobs(sweep_dir)) is not None:
                print(f"fedsim: rounds to target -> {sweep_dir / 'rounds_to_target.md'}")
        except Exception as err:  # noqa: BLE001 - reported, never raised: the jobs are done
            print(f"fedsim: rounds-to-target report not written: {err}", file=sys.stderr)
