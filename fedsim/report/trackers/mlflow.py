"""``logger=mlflow``: one MLflow run per fedsim run, in a local file store by default.

The run's params are the job's overrides (what sets it apart in a sweep), its metrics every
round's :func:`~fedsim.report.trackers.base.round_scalars` at ``step = round`` and the summary's
numbers, its artifacts the run directory's files (less the checkpoint and ``residuals/``,
which only resuming needs and which can be large). The client is ``MlflowClient``, not the
module-level ``mlflow.start_run``, so no global active run leaks from one sweep job to the next.
MLflow is an optional extra (``pip install -e ".[mlflow]"``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fedsim.report.run_log import RoundRecord
from fedsim.report.trackers.base import (
    TrackedRun, Tracker, TrackerSession, require, round_scalars, summary_scalars,
)

NOT_ARTIFACTS = ("checkpoint.safetensors", "checkpoint.pkl", "residuals", ".fedsim", "mlruns")
RUN_ID_FILE = Path(".fedsim") / "mlflow_run_id"  # a resumed run continues its MLflow run
# How a fedsim run's `stopped` maps to an MLflow run status.
STATUS = {
    "completed": "FINISHED", "privacy_budget": "FINISHED", "target_reached": "FINISHED",
    "diverged": "FAILED", "interrupted": "KILLED",
}


def default_tracking_uri(run_dir: Path) -> str:
    """A file store in the sweep directory for a ``-m`` job (Hydra wrote ``multirun.yaml``
    there), else ``./mlruns``: one store per sweep, which ``mlflow ui`` opens whole."""
    sweep = run_dir.parent if (run_dir.parent / "multirun.yaml").exists() else Path.cwd()
    return (sweep / "mlruns").resolve().as_uri()


def params_of(overrides: tuple[str, ...]) -> dict[str, str]:
    """``key=value`` overrides as MLflow params (Hydra's own and ``resume`` left out).

    >>> params_of(("simulation.seed=1", "+debug=tiny", "hydra.run.dir=x", "logger=mlflow"))
    {'simulation.seed': '1', 'debug': 'tiny', 'logger': 'mlflow'}
    """
    params = {}
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key.startswith("hydra.") or key == "resume":
            continue
        params[key] = value[:6000]  # MLflow's limit on a param's value
    return params


def artifact_files(run_dir: Path) -> list[Path]:
    """The run directory's files an MLflow run keeps, sorted."""
    return sorted(
        p for p in run_dir.rglob("*")
        if p.is_file() and p.relative_to(run_dir).parts[0] not in NOT_ARTIFACTS
    )


class MLflowSession(TrackerSession):
    """One MLflow run, fed through ``MlflowClient``."""

    def __init__(self, tracking_uri: str, experiment: str, run: TrackedRun) -> None:
        if tracking_uri.startswith("file:") or "://" not in tracking_uri:
            # MLflow 3 keeps the file store in maintenance mode behind this switch; fedsim uses
            # it because it needs no database package and sits beside the sweep's files.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.run_dir = run.run_dir
        self.last_round = run.first_round - 1
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            try:
                experiment_id = self.client.create_experiment(experiment)
            except MlflowException:  # a parallel job created it first
                experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            experiment_id = found.experiment_id
        id_file = run.run_dir / RUN_ID_FILE
        if run.first_round > 1 and id_file.exists():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = " ".join(f"{k}={v}" for k, v in params_of(run.overrides).items())
        created = self.client.create_run(
            experiment_id, run_name=(name or run.run_dir.name)[:250],
            tags={"fedsim.run_dir": str(run.run_dir.resolve())},
        )
        self.run_id = created.info.run_id
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(self.run_id + "\n")
        params = [Param(k, v) for k, v in params_of(run.overrides).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        self.client.log_text(self.run_id, run.config_yaml, "config.yaml")

    def _log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in scalars.items()]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def log_round(self, record: RoundRecord) -> None:
        self._log(round_scalars(record), record.round)
        self.last_round = record.round

    def close(self, summary: dict[str, Any]) -> None:
        self._log(summary_scalars(summary), self.last_round)
        for path in artifact_files(self.run_dir):
            parent = path.parent.relative_to(self.run_dir).as_posix()
            self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)
        status = STATUS.get(str(summary.get("stopped")), "FAILED")
        self.client.set_terminated(self.run_id, status=status)


@dataclass(frozen=True)
class MLflow(Tracker):
    """An MLflow run per fedsim run.

    Parameters
    ----------
    tracking_uri : str or None
        Any MLflow tracking URI; ``None``: a file store in the sweep directory for a ``-m``
        job, else ``./mlruns`` (:func:`default_tracking_uri`).
    experiment : str
        The MLflow experiment the runs go into (created if missing).
    """

    name: ClassVar[str] = "mlflow"
    tracking_uri: str | None = None
    experiment: str = "fedsim"

    def __post_init__(self) -> None:
        require("mlflow", self.name)

    def open(self, run: TrackedRun) -> TrackerSession:
        uri = self.tracking_uri or default_tracking_uri(run.run_dir)
        return MLflowSession(uri, self.experiment, run)
