"""Every stock strategy option runs 2 rounds end to end through the CLI, Flower and Ray.

One Hydra multirun covers all ``conf/strategy`` options (one process, so imports are paid
once); each strategy is then its own test reading its job's outputs. The jobs upload int8
deltas with sign-flipping attackers, so decoding, compression and the robust aggregators'
assumed attacker count are exercised with every strategy.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedsim.models.state import exchangeable_state
from fedsim.preparation import initial_model, prepare
from tests.test_config import make_cfg, options
from tests.test_end_to_end import ROOT, TINY, WALL_FIELDS, rounds, run_cli

STRATEGIES = options("strategy")
SHARED = ["update.kind=delta", "update.compression=int8", "attack=sign_flip"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("strategies")
    result = subprocess.run(
        [
            sys.executable, "run_sim.py", "-m", *TINY, *SHARED,
            f"strategy={','.join(STRATEGIES)}",
            f"hydra.sweep.dir={base}", "hydra.sweep.subdir=${strategy._target_}",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return base


def job_dir(base: Path, strategy: str) -> Path:
    target = make_cfg(f"strategy={strategy}").strategy._target_
    return base / target


@pytest.fixture(scope="module")
def initial_state() -> dict[str, torch.Tensor]:
    cfg = make_cfg(*(o for o in TINY if not o.startswith("progress")))
    return exchangeable_state(initial_model(prepare(cfg)))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_stock_strategy_runs_two_rounds(sweep, initial_state, strategy: str) -> None:
    run_dir = job_dir(sweep, strategy)
    records = rounds(run_dir)
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["completed"] == 4 and r["failed"] == 0 for r in records)
    assert all(r["accuracy"] is not None for r in records)
    # int8 deltas: each upload is about a quarter of the float32 model sent down.
    assert all(3.9 < r["bytes_down"] / r["bytes_up"] < 4.0 for r in records)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["strategy"] == make_cfg(f"strategy={strategy}").strategy._target_.rsplit(".")[-1]
    assert (summary["update_kind"], summary["compression"]) == ("delta", "Int8Quantization")
    assert summary["attack"] == "SignFlip" and summary["attack_fraction"] == 0.2
    final = torch.load(run_dir / "model.pt")
    assert any(not torch.equal(final[k], initial_state[k]) for k in initial_state)  # it trained


def test_fedsgd_with_topk_error_feedback_and_gaussian_attackers_is_reproducible(tmp_path) -> None:
    # Error-feedback residuals live in files between rounds and the attack draws noise: the
    # same seed must still give the same metrics and model, and the residuals are removed.
    overrides = [
        "strategy=fedadam", "update.kind=gradient", "update.compression=topk",
        "attack=gaussian", "attack.fraction=0.5",
    ]
    for name in ("a", "b"):
        run_cli(tmp_path / name, *overrides)
    first, second = rounds(tmp_path / "a"), rounds(tmp_path / "b")
    strip = [{k: v for k, v in r.items() if k not in WALL_FIELDS} for r in first]
    assert strip == [{k: v for k, v in r.items() if k not in WALL_FIELDS} for r in second]
    assert all(r["bytes_up"] < r["bytes_down"] / 4 for r in first)  # 10% kept: values + indices
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["update_kind"] == "gradient" and summary["attack"] == "GaussianUpdate"
    assert summary["malicious_participations"] > 0
    assert not (tmp_path / "a" / "residuals").exists()
    a, b = torch.load(tmp_path / "a" / "model.pt"), torch.load(tmp_path / "b" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
