"""The ``logger`` group: what TensorBoard and MLflow get, read back with their own readers.

The bulk drives a tracker in-process with hand-made round records; two slow tests go through
``run_sim.py`` (one tiny run, and a two-job ``-m`` sweep that TensorBoard must see as two runs).
"""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedsim.errors import ConfigError
from fedsim.report.run_log import RoundRecord
from fedsim.report.trackers import base
from fedsim.report.trackers import mlflow as mlflow_tracker
from fedsim.report.trackers.base import TrackedRun, Tracker, Tracking, round_scalars
from fedsim.report.trackers.mlflow import MLflow, default_tracking_uri
from fedsim.report.trackers.tensorboard import TensorBoard
from fedsim.run.options import instantiate_option
from tests.helpers import ROOT, TINY, make_cfg, rounds, run_cli

TIERS = {"mid": {"sampled": 4, "trained": {"full@8": 3}, "dropped": {"oom": 1}}}


def record(round_: int, accuracy: float | None, **changes) -> RoundRecord:
    """4 sampled phones, 3 trained, 1 dropped for memory; ``changes`` replace any field."""
    fields = dict(
        round=round_, accuracy=accuracy, loss=None if accuracy is None else 1.0 - accuracy,
        train_loss=0.5, sampled=4, completed=3, failed=0, dropped={"oom": 1},
        sim_time_s=60.0 * round_, energy_j=2.5 * round_, bytes_up=1000, bytes_down=4000,
        tiers=TIERS,
    )
    return RoundRecord(**(fields | changes))


RECORDS = [record(1, 0.25), record(2, None, dropped={}), record(3, 0.75, epsilon=1.5)]
SUMMARY = {"final_accuracy": 0.75, "rounds": 3, "total_s": 12.5, "stopped": "completed",
           "dataset": "Digits"}


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [(e.step, round(e.value, 6)) for e in events.Scalars(tag)]


def texts(run_dir: Path, tag: str) -> list[str]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [e.tensor_proto.string_val[0].decode() for e in events.Tensors(f"{tag}/text_summary")]


def tracked(run_dir: Path, first_round: int = 1, overrides=("simulation.seed=3",)) -> TrackedRun:
    return TrackedRun(run_dir, "simulation:\n  seed: 3\n", tuple(overrides), first_round)


def log(tracker: Tracker, run: TrackedRun, records: list[RoundRecord], summary: dict) -> None:
    tracking = Tracking(tracker, run)
    for r in records:
        tracking.log_round(r)
    tracking.close(summary)


# --- what every tracker logs ------------------------------------------------------------------


def test_doctests() -> None:
    assert doctest.testmod(base).failed == 0 and doctest.testmod(mlflow_tracker).failed == 0


def test_round_scalars_by_hand() -> None:
    s = round_scalars(RECORDS[2])
    assert s["test/accuracy"] == 0.75 and s["test/loss"] == 0.25 and s["train/loss"] == 0.5
    assert s["privacy/epsilon"] == 1.5 and "privacy/clipping_norm" not in s
    assert (s["traffic/bytes_up"], s["traffic/bytes_down"]) == (1000.0, 4000.0)
    assert (s["time/sim_time_s"], s["energy/energy_j"]) == (180.0, 7.5)
    assert [k for k in s if k.startswith("dropped/")] == [
        "dropped/offline", "dropped/oom", "dropped/straggler", "dropped/overcommit"
    ]
    assert s["tiers/mid/trained/full_batch8"] == 3.0 and s["tiers/mid/dropped/oom"] == 1.0
    assert "test/accuracy" not in round_scalars(RECORDS[1])  # not evaluated: no point at all


# --- TensorBoard ------------------------------------------------------------------------------


def test_tensorboard_event_file_holds_every_round(tmp_path: Path) -> None:
    log(TensorBoard(), tracked(tmp_path), RECORDS, SUMMARY)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1  # in the run dir itself
    assert scalars(tmp_path, "test/accuracy") == [(1, 0.25), (3, 0.75)]
    assert scalars(tmp_path, "dropped/oom") == [(1, 1.0), (2, 0.0), (3, 1.0)]
    assert scalars(tmp_path, "time/sim_time_s") == [(1, 60.0), (2, 120.0), (3, 180.0)]
    assert scalars(tmp_path, "privacy/epsilon") == [(3, 1.5)]
    assert scalars(tmp_path, "tiers/mid/sampled") == [(1, 4.0), (2, 4.0), (3, 4.0)]
    assert scalars(tmp_path, "summary/final_accuracy") == [(3, 0.75)]
    assert "seed: 3" in texts(tmp_path, "config")[0]
    assert texts(tmp_path, "overrides")[0].strip() == "simulation.seed=3"
    assert '"dataset": "Digits"' in texts(tmp_path, "summary")[0]


def test_tensorboard_log_dir_option(tmp_path: Path) -> None:
    log(TensorBoard(log_dir=str(tmp_path / "tb")), tracked(tmp_path / "run"), RECORDS[:1], SUMMARY)
    assert scalars(tmp_path / "tb", "test/accuracy") == [(1, 0.25)]


def test_a_resumed_run_replaces_the_rounds_it_redoes(tmp_path: Path) -> None:
    # The first session logged rounds 1-3, but its checkpoint had only round 2; the resumed
    # session redoes round 3 (here with another accuracy) and goes on to round 4.
    log(TensorBoard(), tracked(tmp_path), RECORDS, SUMMARY)
    log(TensorBoard(), tracked(tmp_path, first_round=3),
        [record(3, 0.5), record(4, 0.875)], SUMMARY)
    assert scalars(tmp_path, "test/accuracy") == [(1, 0.25), (3, 0.5), (4, 0.875)]


def test_missing_package_is_one_line(monkeypatch) -> None:
    monkeypatch.setattr(base.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as err:
        instantiate_option("logger", make_cfg("logger=tensorboard").logger)
    assert str(err.value) == (
        'logger=tensorboard needs the tensorboard package: pip install -e ".[tensorboard]"'
    )
    with pytest.raises(ConfigError, match=r'^logger=mlflow needs the mlflow package: .*\[mlflow\]'):
        instantiate_option("logger", make_cfg("logger=mlflow").logger)


def test_every_logger_option_instantiates() -> None:
    made = {name: instantiate_option("logger", make_cfg(f"logger={name}").logger)
            for name in ("none", "tensorboard", "mlflow")}
    assert [type(t).__name__ for t in made.values()] == ["Tracker", "TensorBoard", "MLflow"]
    assert made["mlflow"].tracking_uri is None and made["mlflow"].experiment == "fedsim"


def test_a_failing_tracker_stops_tracking_not_the_run(tmp_path: Path, capsys) -> None:
    class Broken(base.TrackerSession):
        calls = 0

        def log_round(self, record: RoundRecord) -> None:
            Broken.calls += 1
            raise OSError("No space left on device")

    class BrokenTracker(Tracker):
        name = "broken"

        def open(self, run: TrackedRun) -> base.TrackerSession:
            return Broken()

    log(BrokenTracker(), tracked(tmp_path), RECORDS, SUMMARY)
    assert Broken.calls == 1  # tried once, then left alone
    assert capsys.readouterr().err == (
        "fedsim: logger=broken stopped tracking (OSError: No space left on device)\n"
    )


# --- MLflow -----------------------------------------------------------------------------------


def test_mlflow_run_has_overrides_rounds_and_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "sweep" / "0"
    (run_dir / "residuals").mkdir(parents=True)
    for name in ("summary.json", "model.pt", "checkpoint.pkl", "residuals/7.npz"):
        (run_dir / name).write_text("x")
    store = tmp_path / "store"
    overrides = ("+debug=tiny", "simulation.seed=3", "hydra.run.dir=somewhere")
    run = tracked(run_dir, overrides=overrides)
    log(MLflow(tracking_uri=store.as_uri()), run, RECORDS, SUMMARY)

    client = MlflowClient(tracking_uri=store.as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("fedsim").experiment_id])
    assert run.data.params == {"debug": "tiny", "simulation.seed": "3"}
    assert run.info.run_name == "debug=tiny simulation.seed=3"
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "test/accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.25), (3, 0.75)]
    drops = client.get_metric_history(run.info.run_id, "dropped/oom")
    assert sorted((m.step, m.value) for m in drops) == [(1, 1.0), (2, 0.0), (3, 1.0)]
    assert run.data.metrics["summary/total_s"] == 12.5
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "summary.json", "model.pt"}  # no checkpoint, residuals


def test_mlflow_resumed_run_continues_its_mlflow_run(tmp_path: Path) -> None:
    store = (tmp_path / "store").as_uri()
    log(MLflow(tracking_uri=store), tracked(tmp_path), RECORDS[:2], {"stopped": "interrupted"})
    log(MLflow(tracking_uri=store), tracked(tmp_path, first_round=3), RECORDS[2:], SUMMARY)
    client = MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name("fedsim").experiment_id])
    history = client.get_metric_history(run.info.run_id, "test/accuracy")
    assert sorted(m.step for m in history) == [1, 3] and run.info.status == "FINISHED"


def test_mlflow_default_store_is_the_sweep_dir_or_cwd(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    (tmp_path / "sweep" / "multirun.yaml").write_text("{}")  # what Hydra leaves in a sweep dir
    sweep_store = (tmp_path / "sweep" / "mlruns").as_uri()
    assert default_tracking_uri(tmp_path / "sweep" / "0") == sweep_store
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri(tmp_path / "outputs" / "x") == (tmp_path / "mlruns").as_uri()


# --- through run_sim.py -----------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_run_with_tensorboard(tmp_path: Path) -> None:
    run_cli(tmp_path, "logger=tensorboard")
    logged = scalars(tmp_path, "test/accuracy")
    assert [s for s, _ in logged] == [1, 2]
    expected = [r["accuracy"] for r in rounds(tmp_path)]
    assert [v for _, v in logged] == pytest.approx(expected, abs=1e-6)  # float32 in the file
    config = texts(tmp_path, "config")[0]  # the composed config, as Markdown code
    assert "    logger:\n      _target_: fedsim.report.trackers.tensorboard.TensorBoard" in config


@pytest.mark.slow
def test_a_sweep_is_one_tensorboard_run_per_job(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "run_sim.py", "-m", *TINY, "logger=tensorboard", "simulation.seed=0,1",
         f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = EventMultiplexer().AddRunsFromDirectory(str(sweep))
    runs.Reload()
    assert sorted(runs.Runs()) == ["0", "1"]
    for job in ("0", "1"):
        seed = yaml.safe_load((sweep / job / ".hydra" / "overrides.yaml").read_text())[-1]
        assert seed == f"simulation.seed={job}"
        accuracy = [e.value for e in runs.Scalars(job, "test/accuracy")]
        assert accuracy == pytest.approx([r["accuracy"] for r in rounds(sweep / job)], abs=1e-6)
    assert (sweep / "overview.png").stat().st_size > 10_000
