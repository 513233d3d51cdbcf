"""``python -m fedsim.report <multirun dir>``: write the sweep's privacy/accuracy trade-off.

The same report is written automatically at the end of every ``run_sim.py -m`` sweep by
:class:`fedsim.report.callbacks.TradeoffReport`; this command re-writes it, e.g. for a
sweep that was interrupted, or one whose jobs were run separately into one directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedsim.report.tradeoff import OUTPUTS, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedsim.report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory (gets the files)")
    parser.add_argument("more", type=Path, nargs="*", help="more sweeps to include, e.g. a baseline")
    args = parser.parse_args(argv)
    for directory in (args.sweep_dir, *args.more):
        if not directory.is_dir():
            print(f"fedsim.report: error: {directory} is not a directory", file=sys.stderr)
            return 2
    try:
        rows = write_report(args.sweep_dir, tuple(args.more))
    except FileNotFoundError as err:
        print(f"fedsim.report: error: {err}", file=sys.stderr)
        return 2
    print((args.sweep_dir / OUTPUTS[1]).read_text(), end="")
    print(f"{len(rows)} settings; wrote " + ", ".join(str(args.sweep_dir / o) for o in OUTPUTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
