"""``python -m fedsim.export <run dir> --to onnx|executorch|litert [--int8]``: deploy the student.

Writes ``<run dir>/export/student[.int8].<ext>`` and ``<file>.json`` (format, size, int8 or not,
accuracy of the file run by its own runtime on the run's test split, top-1 agreement with the
PyTorch student, median batch-1 latency on one thread, the calibration set) and prints one line.
Bad input (no such run, no ``model.pt``, a runtime that is not installed, a student the exporter
cannot handle) is one line on stderr and exit code 2. ``docs/export.md`` has measured tables.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from fedsim.export.calibration import DEFAULT_SAMPLES, DEFAULT_SEED
from fedsim.export.export_run import EXPORTERS, export_run, report_path
from fedsim.export.parity import LATENCY_RUNS
from fedsim.export.runtime import ExportError

PROG = "python -m fedsim.export"


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(
        prog=PROG,
        description="Export a finished run's student to a mobile runtime, fp32 or int8, and "
        "measure the exported file in that runtime on the run's test split.",
    )
    parse.add_argument("run_dir", type=Path, help="a finished run directory (gets export/)")
    parse.add_argument("--to", required=True, choices=sorted(EXPORTERS), help="the runtime")
    parse.add_argument("--int8", action="store_true", help="post-training int8 quantization")
    parse.add_argument(
        "--calibration-samples", type=positive, default=DEFAULT_SAMPLES,
        help=f"int8 calibration images: the proxy split, else the training pool (default "
        f"{DEFAULT_SAMPLES})",
    )
    parse.add_argument("--calibration-seed", type=int, default=DEFAULT_SEED,
                       help=f"seed of the calibration draw (default {DEFAULT_SEED})")
    parse.add_argument("--latency-runs", type=positive, default=LATENCY_RUNS,
                       help=f"timed batch-1 calls (default {LATENCY_RUNS})")
    parse.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    return parse


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        report = export_run(
            args.run_dir, args.to, args.int8, args.calibration_samples, args.calibration_seed,
            args.latency_runs,
        )
    except ExportError as err:
        if args.verbose:
            traceback.print_exc()
        print(f"fedsim.export: error: {err}", file=sys.stderr)
        return 2
    print(
        f"{report['student']} -> {report['file']}: {report['size_kb']} KB, accuracy "
        f"{report['accuracy']:.4f} (PyTorch {report['pytorch_accuracy']:.4f}), agreement "
        f"{report['agreement']:.4f}, {report['latency_ms']:.3f} ms/image ({report['runtime']})"
    )
    print(f"report: {report_path(args.run_dir / report['file'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
