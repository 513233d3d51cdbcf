"""``python -m fedsim.report <multirun dir>``: write the sweep's overview and trade-off report.

``overview.png`` draws every job's accuracy against rounds and simulated time
(:mod:`fedsim.report.overview`); ``tradeoff.{csv,md,png}`` tabulates the privacy/accuracy
trade-off of the finished jobs (:mod:`fedsim.report.tradeoff`); ``rounds_to_target.{md,png}``
the rounds each setting needed to reach the jobs' target accuracy, when they have one
(:mod:`fedsim.report.rounds_to_target`; ``--baseline`` sets or replaces the config's
``report.baseline``). All are written automatically
at the end of every ``run_sim.py -m`` sweep by :class:`fedsim.report.callbacks.TradeoffReport`;
this command re-writes them, e.g. for a sweep that was interrupted, or one whose jobs were run
separately into one directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedsim.report import rounds_to_target
from fedsim.report.overview import OVERVIEW, write_overview
from fedsim.report.sweep import find_sweep_jobs
from fedsim.report.tradeoff import OUTPUTS, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedsim.report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory (gets the files)")
    parser.add_argument("more", type=Path, nargs="*", help="more sweeps to include, e.g. a baseline")
    parser.add_argument(
        "--baseline", metavar="OVERRIDE",
        help="rounds-to-target speed-ups against the same setting with this override",
    )
    parser.add_argument(
        "--target", type=float, metavar="ACCURACY",
        help="also report rounds to this accuracy, read from each job's metrics.jsonl "
             "(at most the runs' own target if they stopped at it)",
    )
    args = parser.parse_args(argv)
    for directory in (args.sweep_dir, *args.more):
        if not directory.is_dir():
            print(f"fedsim.report: error: {directory} is not a directory", file=sys.stderr)
            return 2
    written, rows = [], None
    try:
        curves = write_overview(args.sweep_dir, tuple(args.more))
        written.append(args.sweep_dir / OVERVIEW)
    except FileNotFoundError:  # no metrics.jsonl: jobs copied without their round logs
        curves = []
    try:
        rows = write_report(args.sweep_dir, tuple(args.more))
        written += [args.sweep_dir / o for o in OUTPUTS]
    except FileNotFoundError as err:
        if not written:
            print(f"fedsim.report: error: {err}", file=sys.stderr)
            return 2
    if rows is not None:
        print((args.sweep_dir / OUTPUTS[1]).read_text(), end="")
    jobs = find_sweep_jobs(args.sweep_dir, args.more)
    targets = [None] if args.target is None else [None, args.target]
    for target in targets:
        try:
            rows_to_target = rounds_to_target.write_rounds_to_target(
                args.sweep_dir, jobs, args.baseline, target
            )
        except ValueError as err:
            print(f"fedsim.report: error: {err}", file=sys.stderr)
            return 2
        if rows_to_target is not None:
            outputs = rounds_to_target.outputs_for(target)
            written += [args.sweep_dir / o for o in outputs]
            print((args.sweep_dir / outputs[0]).read_text(), end="")
    settings = "no finished run" if rows is None else f"{len(rows)} settings"
    print(f"{len(curves)} runs, {settings}; wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
