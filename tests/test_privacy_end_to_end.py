"""Privacy options through the real CLI: a two-job sweep, its report, epsilon per round, audit."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsim.privacy.local_accounting import LocalDPAccountant
from fedsim.server.sampler import CohortSampler
from tests.helpers import ROOT, TINY
from tests.helpers import rounds as read_rounds

pytestmark = pytest.mark.slow  # every test here shares one Ray sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("sweep")
    result = subprocess.run(
        [sys.executable, "run_sim.py", "-m", *TINY, "simulation.rounds=3",
         "privacy=local_dp,central_dp_adaptive", "secagg=secagg_plus",
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return sweep_dir


def job_dir(sweep: Path, privacy: str) -> Path:
    for summary in sweep.glob("*/summary.json"):
        if json.loads(summary.read_text())["privacy"] == privacy:
            return summary.parent
    raise AssertionError(f"no {privacy} job in {sweep}")


def test_local_dp_epsilon_is_the_most_sampled_clients(sweep: Path) -> None:
    run = job_dir(sweep, "local_dp")
    ledger = LocalDPAccountant(1.0, 1 / 20, CohortSampler(20, 4, 0, "fixed"), "pld")
    expected = []
    for _ in range(3):
        ledger.step()
        expected.append(ledger.epsilon())
    records = read_rounds(run)
    assert [r["epsilon"] for r in records] == pytest.approx(expected, rel=1e-9)
    assert all(r["clipping_norm"] == 1.0 for r in records)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epsilon"] == pytest.approx(expected[-1]) and summary["delta"] == 0.05
    assert 0.0 <= summary["clipped_fraction"] <= 1.0


def test_adaptive_clipping_records_the_norm_it_used_each_round(sweep: Path) -> None:
    run = job_dir(sweep, "central_dp_adaptive")
    norms = [r["clipping_norm"] for r in read_rounds(run)]
    assert norms[0] == 0.1  # initial_clipping_norm
    assert len(set(norms)) == 3  # it moved every round
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_clipping_norm"] != 0.1


def test_every_run_is_audited_and_costed(sweep: Path) -> None:
    for privacy in ("local_dp", "central_dp_adaptive"):
        run = job_dir(sweep, privacy)
        summary = json.loads((run / "summary.json").read_text())
        members = {c for r in read_rounds(run) for c in r["clients"]}
        assert summary["mia_members"] == len(members) and summary["mia_nonmembers"] == 20
        assert all(c < 20 for c in members)  # held-out clients (ids 20..39) never train
        assert 0.0 <= summary["mia_auc"] <= 1.0
        assert (run / "membership_roc.png").exists()
        assert summary["secagg"].startswith("SecAgg+ cost model")
        assert all(r["secagg"]["round_trips"] == 4 for r in read_rounds(run))


def test_the_sweep_writes_its_tradeoff_report(sweep: Path) -> None:
    table = (sweep / "tradeoff.md").read_text()
    assert "`privacy=local_dp`" in table and "`privacy=central_dp_adaptive`" in table
    assert (sweep / "tradeoff.csv").exists() and (sweep / "tradeoff.png").exists()
    rows = (sweep / "tradeoff.csv").read_text().splitlines()[1:]
    epsilons = sorted(float(row.split(",")[3]) for row in rows)
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert epsilons == pytest.approx(sorted(s["epsilon"] for s in summaries))
    assert np.isfinite(epsilons).all()
