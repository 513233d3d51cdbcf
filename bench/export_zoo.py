"""The student zoo, deployed: every student exported fp32 and int8, run in each runtime.

For each student in ``conf/model`` a short federated run on digits (``--train``: ``run_sim.py
model=<student> simulation.rounds=<rounds> audit=none``, otherwise an existing run directory
``<runs>/<student>``) is exported by ``python -m fedsim.export`` to each runtime of ``--to``, fp32
and int8 (calibrated on 500 images of the training pool, seed 0), and each exported file is run
in its runtime on the 360 test images: size, accuracy (PyTorch's beside it), top-1 agreement
with PyTorch, median latency per image at batch 1 on one thread, and the ops an int8 file runs
in float (:mod:`fedsim.export`).

Usage: ``python -m bench.export_zoo --runs DIR [--train] [--rounds 10] [--to onnx executorch]``;
prints a markdown table (kept in ``docs/export.md``) and writes every report to
``<runs>/export_zoo.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from fedsim.export.export_run import EXPORTERS, export_run

ROOT = Path(__file__).resolve().parents[1]
STUDENTS = ("mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2", "ghostnet", "squeezenet")
COLUMNS = (
    "student", "format", "size KB", "accuracy", "PyTorch", "agreement", "latency ms",
    "PyTorch ms", "ops left in float (int8)",
)


def train(run_dir: Path, student: str, rounds: int) -> None:
    """The short federated run whose student is exported (skipped if it already finished)."""
    if (run_dir / "model.pt").is_file():
        return
    command = [
        sys.executable, "run_sim.py", f"model={student}", f"simulation.rounds={rounds}",
        "audit=none", "progress=lines", f"hydra.run.dir={run_dir}",
    ]
    print("$", " ".join(command[1:]), file=sys.stderr)
    subprocess.run(command, cwd=ROOT, check=True)


def float_ops(report: dict[str, Any]) -> str:
    """``HardSigmoid x28, ReduceMean x10``; ExecuTorch's non-delegated ops after a ``|``."""
    parts = [", ".join(f"{op} x{n}" for op, n in report.get("float_ops", {}).items())]
    if report.get("not_delegated"):
        kept = ", ".join(f"{op} x{n}" for op, n in report["not_delegated"].items())
        parts.append(f"not delegated: {kept}")
    text = "; ".join(p for p in parts if p)
    return text or ("none" if report["int8"] else "")


def row(report: dict[str, Any]) -> str:
    cells = (
        report["student"],
        f"{report['format']} {'int8' if report['int8'] else 'fp32'}",
        f"{report['size_kb']:.0f}",
        f"{report['accuracy']:.4f}",
        f"{report['pytorch_accuracy']:.4f}",
        f"{report['agreement']:.4f}",
        f"{report['latency_ms']:.3f}",
        f"{report['pytorch_latency_ms']:.3f}",
        float_ops(report),
    )
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="holds <student>/ run dirs")
    parser.add_argument("--train", action="store_true", help="run the missing runs first")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--to", nargs="+", default=["onnx", "executorch"], choices=EXPORTERS)
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=STUDENTS)
    args = parser.parse_args()
    reports = []
    for student in args.students:
        run_dir = args.runs / student
        if args.train:
            train(run_dir, student, args.rounds)
        for runtime in args.to:
            for int8 in (False, True):
                reports.append(export_run(run_dir, runtime, int8=int8))
                print(row(reports[-1]), file=sys.stderr, flush=True)  # progress
    (args.runs / "export_zoo.json").write_text(json.dumps(reports, indent=2) + "\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for report in reports:
        print(row(report))


if __name__ == "__main__":
    main()
