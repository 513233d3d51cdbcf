"""Checkpoint and resume (kill -9, Ctrl-C), injected faults: every failure accounted for."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.run.checkpoint import CHECKPOINT_FILE, write_atomically
from fedsim.config import Faults
from fedsim.errors import ConfigError
from fedsim.run.resume import resume_config
from fedsim.server.faults import FaultPlan
from fedsim.server.sampler import CohortSampler
from tests.helpers import ROOT, TINY, WALL_FIELDS, run_cli
from tests.helpers import rounds as read_rounds

ROUNDS = ["simulation.rounds=4"]
CLIENT_TIMEOUT_S = 25.0


def strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL_FIELDS} for r in records]


def start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    """A run in its own process group, so that kill -9 takes Ray down with the driver."""
    return subprocess.Popen(
        [sys.executable, "run_sim.py", *TINY, *ROUNDS, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )


def wait_for_rounds(run_dir: Path, count: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    path = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    raise TimeoutError(f"{count} rounds did not finish")


def resume(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run_sim.py", f"resume={run_dir}", *overrides,
         f"hydra.run.dir={run_dir}/resumed-{time.monotonic_ns()}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("whole")
    run_cli(run_dir, *ROUNDS)
    return run_dir


@pytest.mark.slow  # starts Ray
# Killed while bundling, it still ends bit-identical to the per-phone run: bundles are transport.
@pytest.mark.parametrize("bundle", ["false", "true"])
def test_kill_minus_9_then_resume_is_bit_identical(
    uninterrupted: Path, tmp_path: Path, bundle: str
) -> None:
    proc = start(tmp_path, f"simulation.bundle={bundle}")
    wait_for_rounds(tmp_path, 1, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray, mid-round 2
    proc.wait()
    done = len(read_rounds(tmp_path))
    assert 1 <= done < 4
    result = resume(tmp_path, "progress=lines")
    assert result.returncode == 0, result.stderr[-2000:]
    assert strip(read_rounds(tmp_path)) == strip(read_rounds(uninterrupted))
    for name, tensor in torch.load(uninterrupted / "model.pt").items():
        assert torch.equal(tensor, torch.load(tmp_path / "model.pt")[name]), name
    assert json.loads((tmp_path / "summary.json").read_text())["stopped"] == "completed"


# A strategy with moments and a privacy wrapper whose clipping norm moves: both saved as data.
STATEFUL = ["strategy=fedavgm", "strategy.server_momentum=0.9", "privacy=central_dp_adaptive",
            "norm=group"]


@pytest.mark.slow  # starts Ray
def test_stateful_strategy_resumes_bit_identically(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    run_cli(whole, *ROUNDS, *STATEFUL)
    proc = start(tmp_path / "killed", *STATEFUL)
    wait_for_rounds(tmp_path / "killed", 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "killed" / CHECKPOINT_FILE).exists()
    result = resume(tmp_path / "killed")
    assert result.returncode == 0, result.stderr[-2000:]
    assert strip(read_rounds(tmp_path / "killed")) == strip(read_rounds(whole))
    for name, tensor in torch.load(whole / "model.pt").items():
        assert torch.equal(tensor, torch.load(tmp_path / "killed" / "model.pt")[name]), name
    summaries = [json.loads((d / "summary.json").read_text()) for d in (whole, tmp_path / "killed")]
    assert summaries[0]["final_clipping_norm"] == summaries[1]["final_clipping_norm"]
    assert summaries[0]["clipped_fraction"] == summaries[1]["clipped_fraction"]


@pytest.mark.slow  # starts Ray
def test_ctrl_c_checkpoints_and_resumes_identically(uninterrupted: Path, tmp_path: Path) -> None:
    proc = start(tmp_path)
    # After the first of four rounds: a tiny round takes about a second, and on a loaded machine
    # this process can see the record late, so waiting for more left the run too little to do.
    wait_for_rounds(tmp_path, 1, proc)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"] == "interrupted"
    assert (tmp_path / CHECKPOINT_FILE).exists()
    assert resume(tmp_path).returncode == 0
    assert strip(read_rounds(tmp_path)) == strip(read_rounds(uninterrupted))


@pytest.mark.slow  # its run starts Ray
def test_resume_refuses_overrides_that_change_results(uninterrupted: Path) -> None:
    with pytest.raises(ConfigError, match="^resume: 'simulation.seed=3' would change the results"):
        resume_config(uninterrupted, ["simulation.seed=3"])
    cfg = resume_config(uninterrupted, ["progress=bar", "simulation.backend.client_cpus=2"])
    assert cfg.progress == "bar" and cfg.simulation.rounds == 4
    result = resume(uninterrupted, "strategy=fedprox")
    assert result.returncode == 2
    assert result.stderr.startswith("fedsim: error: resume: 'strategy=fedprox' would change")


@pytest.mark.slow  # starts Ray
# One message per phone, one per slot, or one per slot summing its phones' models.
@pytest.mark.parametrize("transport", [
    ["simulation.bundle=false"], ["simulation.bundle=true"],
    ["simulation.bundle=true", "simulation.partial_sums=true"],
], ids=["per_phone", "bundles", "partial_sums"])
def test_injected_faults_are_each_accounted_for(tmp_path: Path, transport: list[str]) -> None:
    faults = Faults(client_error_rate=0.3, slow_client_rate=0.2, kill_actor_at_round=2)
    run_cli(
        tmp_path, *ROUNDS, "faults.client_error_rate=0.3", "faults.slow_client_rate=0.2",
        *transport,
        # A normal client-round takes about a second here; the timeout leaves room for a
        # loaded CI box (a fresh actor's first call, two runs' worth of CPU demand) so that
        # only the injected slow rounds (timeout + 2 s) overrun it.
        "faults.kill_actor_at_round=2", f"simulation.client_timeout_s={CLIENT_TIMEOUT_S}",
    )
    plan, sampler = FaultPlan(faults, 0, CLIENT_TIMEOUT_S), CohortSampler(20, 4, 0)
    for record in read_rounds(tmp_path):
        cohort = sampler.cohort(record["round"])
        told = {int(c): plan(record["round"], int(c), cohort).get("fedsim.fault") for c in cohort}
        errors = sorted(c for c, f in told.items() if f == "error")
        slow = sorted(c for c, f in told.items() if f == "slow")
        expected = {"client_exception": len(errors), "timeout": len(slow)}
        assert record["failures"] == {k: v for k, v in expected.items() if v}, record
        assert record["clients"] == sorted(set(told) - set(errors) - set(slow))
        assert record["completed"] + record["failed"] == record["sampled"] == 4
        assert record["recovered"] == (1 if record["round"] == 2 else 0)  # the killed actor's


def test_checkpoint_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_FILE
    write_atomically(path, b"first")
    write_atomically(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]  # no temp file left


def test_fault_draws_depend_only_on_seed_round_and_client() -> None:
    plan = FaultPlan(Faults(0.5, 0.0, None), seed=7, client_timeout_s=None)
    cohort = np.arange(10)
    first = [plan(3, c, cohort) for c in range(10)]
    assert first == [plan(3, c, cohort) for c in range(10)]
    assert 2 <= sum(bool(x) for x in first) <= 8
