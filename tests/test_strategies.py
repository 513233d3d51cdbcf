"""Every stock strategy option aggregates two rounds of real client replies; three of them run
end to end through the CLI, Flower and Ray.

Every ``conf/strategy`` option is prepared from the config and driven in-process through
fedsim's strategy stack (``VirtualClients`` around ``DecodeUpdates`` around the strategy) with
replies from the real ClientApp function: int8 deltas from sign-flipping attackers, so decoding,
compression and the robust aggregators' assumed attacker count are exercised with every
strategy. One Hydra multirun (one process, so imports are paid once) then takes a plain
averager, a stateful server optimiser and a robust aggregator through Ray: what differs between
strategies is their aggregation, which the in-process test covers; what Ray adds is the same
for all of them.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.models.state import exchangeable_state
from fedsim.run.preparation import prepare
from fedsim.run.starting_point import initial_model
from fedsim.compression.error_feedback import ResidualFiles
from fedsim.server.rounds import traffic
from fedsim.strategy.decode_updates import DecodeUpdates
from tests.helpers import (
    ROOT, TINY, WALL_FIELDS, environment, initial, make_cfg, one_round, options, parameters,
    prepared, rounds, run_cli,
)

# TINY's workload as overrides prepare() accepts (progress is a run_sim option).
TINY_IN_PROCESS = [o for o in TINY if not o.startswith("progress")]

STRATEGIES = options("strategy")
THROUGH_RAY = ["fedavg", "fedadam", "bulyan"]
SHARED = ["update.kind=delta", "update.compression=int8", "attack=sign_flip"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_stock_strategy_aggregates_two_rounds_of_real_replies(strategy: str, tmp_path) -> None:
    prep = prepared(*TINY_IN_PROCESS, *SHARED, f"strategy={strategy}")
    model, global_arrays = initial(prep)
    stack = DecodeUpdates(prep.strategy, prep.update, parameters(model))
    env = environment(
        prep, prep.update, threat=prep.threat, residuals=ResidualFiles(str(tmp_path / "res"))
    )
    start = {k: v.numpy().copy() for k, v in global_arrays.items()}
    arrays = global_arrays
    for server_round in (1, 2):
        aggregated, messages, replies = one_round(env, stack, prep.sampler, arrays, server_round)
        assert len(replies) == 4 and not any(r.has_error() for r in replies)
        up, down = traffic(messages, replies)
        assert 3.9 < down / up < 4.0  # int8 deltas: a quarter of the float32 model sent down
        assert aggregated is not None and {a.dtype for a in aggregated.values()} == {"float32"}
        arrays = aggregated
    assert any(not np.array_equal(arrays[k].numpy(), start[k]) for k in start)  # it trained
    assert all(np.isfinite(arrays[k].numpy()).all() for k in start)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("strategies")
    result = subprocess.run(
        [
            sys.executable, "run_sim.py", "-m", *TINY, *SHARED,
            f"strategy={','.join(THROUGH_RAY)}",
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


@pytest.mark.slow  # one Ray sweep over THROUGH_RAY
@pytest.mark.parametrize("strategy", THROUGH_RAY)
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


@pytest.mark.slow  # starts Ray
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
