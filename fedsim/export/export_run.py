"""Export one finished run to one runtime, measure the file in that runtime, write the report.

:func:`export_run` is the whole of ``python -m fedsim.export``: it checks the run directory and
the runtime, rebuilds the student (:mod:`fedsim.export.trained_run`), writes
``<run dir>/export/student[.int8].<ext>`` with the runtime's exporter, loads that file back in
its runtime, measures it against the PyTorch student (:mod:`fedsim.export.parity`), and writes
the report beside it as ``<file>.json``. A student the exporter cannot handle becomes one line
(:func:`fedsim.export.runtime.cannot_export`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedsim.export.calibration import DEFAULT_SAMPLES, DEFAULT_SEED
from fedsim.export.parity import LATENCY_RUNS, measure
from fedsim.export.runtime import Exporter, ExportError, cannot_export
from fedsim.export.to_executorch import ExecuTorchExporter
from fedsim.export.to_litert import LiteRTExporter
from fedsim.export.to_onnx import OnnxExporter
from fedsim.export.trained_run import TrainedRun, load_run, read_config

# The --to names. A table, not a _target_: this is a command-line choice, not a run's config.
EXPORTERS: dict[str, type[Exporter]] = {
    "onnx": OnnxExporter,
    "executorch": ExecuTorchExporter,
    "litert": LiteRTExporter,
}
EXPORT_DIR = "export"
QAT_NOTE = (
    "finetune=qat trains through fake quantisation whose activation ranges stay in the phones' "
    "training step (clients.quantize.FakeQuantMode): they are not in model.pt, so the int8 "
    "ranges here are calibrated on the QAT-trained weights"
)


def export_run(
    run_dir: Path, to: str, int8: bool = False, samples: int = DEFAULT_SAMPLES,
    seed: int = DEFAULT_SEED, latency_runs: int = LATENCY_RUNS,
) -> dict[str, Any]:
    """Export ``run_dir``'s student with the ``to`` runtime; the report (also written as JSON).

    Parameters
    ----------
    run_dir : Path
        A finished run directory (``.hydra/config.yaml`` and ``model.pt``).
    to : str
        A key of :data:`EXPORTERS`.
    int8 : bool
        Post-training int8 quantization, calibrated on ``samples`` images drawn by ``seed``
        (:mod:`fedsim.export.calibration`).
    latency_runs : int
        Batch-1 forward passes timed for the median latency.
    """
    if to not in EXPORTERS:
        raise ExportError(f"--to: unknown runtime {to!r} (choose from {', '.join(EXPORTERS)})")
    read_config(run_dir)  # a missing model or config fails before anything is imported
    exporter = EXPORTERS[to]()
    exporter.check_installed()
    run = load_run(run_dir, samples, seed)
    path = run_dir / EXPORT_DIR / exporter.file_name(int8)
    path.parent.mkdir(exist_ok=True)
    calibration = run.calibration if int8 else None
    try:
        conversion = exporter.export(
            run.model, run.example, path, None if calibration is None else calibration.x
        )
    except ExportError:
        raise
    except Exception as err:  # the exporter's own error, whatever its type: one line
        raise cannot_export(run.student, f"--to {to}", err) from err
    parity = measure(exporter.load(path), run.model, run.test, latency_runs)
    report = {
        **describe(run, exporter, path, int8),
        **parity.as_dict(),
        "threads": 1,
        "calibration": None if calibration is None else calibration.describe(),
        **conversion,
    }
    if int8 and run.finetune == "qat":
        report["qat_ranges"] = QAT_NOTE
    report_path(path).write_text(json.dumps(report, indent=2) + "\n")
    return report


def describe(run: TrainedRun, exporter: Exporter, path: Path, int8: bool) -> dict[str, Any]:
    """The report's head: which run, student and file."""
    size = path.stat().st_size
    return {
        "run_dir": str(run.run_dir),
        "student": run.student,
        "dataset": run.dataset,
        "finetune": run.finetune,
        "format": exporter.name,
        "runtime": exporter.version(),
        "int8": int8,
        "file": str(path.relative_to(run.run_dir)),
        "size_bytes": size,
        "size_kb": round(size / 1024, 1),
    }


def report_path(path: Path) -> Path:
    """``student.int8.onnx`` -> ``student.int8.onnx.json``."""
    return path.with_name(path.name + ".json")
