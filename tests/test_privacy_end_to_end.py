"""Privacy options through the real CLI: a two-job sweep, its report, epsilon per round, audit."""

import csv
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
    ledger = LocalDPAccountant(1.0, 20**-1.1, CohortSampler(20, 4, 0, "fixed"), "pld")
    expected = []
    for _ in range(3):
        ledger.step()
        expected.append(ledger.epsilon())
    records = read_rounds(run)
    assert [r["epsilon"] for r in records] == pytest.approx(expected, rel=1e-9)
    assert all(r["clipping_norm"] == 1.0 for r in records)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epsilon"] == pytest.approx(expected[-1])
    assert summary["delta"] == pytest.approx(20**-1.1)  # population^-1.1 = 0.0371
    assert summary["epsilon_simulated"] == summary["epsilon"]  # no borrowed cohort noise
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
        # The default audit is example-level: as many training examples of the phones that
        # trained as test examples (digits' test split: 360; >= 4 phones of ~72 trained).
        assert summary["audit"] == "example"
        assert 288 <= summary["mia_members"] == summary["mia_nonmembers"] <= 360
        assert summary["mia_tpr_at_fpr_0.01"] is not None
        assert summary["mia_tpr_at_fpr_0.001"] is None  # 1/360 > 0.001: not read at FPR 0
        low, high = summary["mia_auc_ci"]
        assert 0.0 <= low <= summary["mia_auc"] <= high <= 1.0
        assert (run / "membership_roc.png").exists()
        assert summary["secagg"].startswith("SecAgg+ cost model")
        assert all(r["secagg"]["round_trips"] == 4 for r in read_rounds(run))


def test_the_sweep_writes_its_tradeoff_report(sweep: Path) -> None:
    table = (sweep / "tradeoff.md").read_text()
    assert "`privacy=local_dp`" in table and "`privacy=central_dp_adaptive`" in table
    assert (sweep / "tradeoff.csv").exists() and (sweep / "tradeoff.png").exists()
    with (sweep / "tradeoff.csv").open() as fh:
        epsilons = sorted(float(row["epsilon_mean"]) for row in csv.DictReader(fh))
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert epsilons == pytest.approx(sorted(s["epsilon"] for s in summaries))
    assert np.isfinite(epsilons).all()
