"""Whole runs through the real CLI, Hydra, Flower and Ray (small, but nothing is faked)."""

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import WALL_FIELDS, rounds, run_cli

pytestmark = pytest.mark.slow  # every test here starts Ray


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path, str]:
    base = tmp_path_factory.mktemp("runs")
    first = run_cli(base / "a")
    run_cli(base / "b")
    return base / "a", base / "b", first.stdout


def test_run_writes_every_output(two_runs) -> None:
    run_dir, _, stdout = two_runs
    records = rounds(run_dir)
    assert [r["round"] for r in records] == [1, 2]
    for r in records:
        assert {"round", "accuracy", "loss", "sampled", "completed", "failed", "wall_s"} <= set(r)
        assert (r["sampled"], r["completed"], r["failed"]) == (4, 4, 0)
        assert 0.0 <= r["accuracy"] <= 1.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["population"] == 20
    assert summary["clients_per_round"] == 4 and summary["seed"] == 0
    assert summary["final_accuracy"] == records[-1]["accuracy"]
    assert summary["best_accuracy"] == max(r["accuracy"] for r in records)
    assert summary["epsilon"] is None and summary["delta"] is None
    state = torch.load(run_dir / "model.pt")
    assert "classifier.1.weight" in state
    assert (run_dir / "accuracy.png").stat().st_size > 1000
    assert f"results: {run_dir}" in stdout


def test_same_seed_gives_identical_metrics_apart_from_wall_time(two_runs) -> None:
    first, second, _ = two_runs

    def strip(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in WALL_FIELDS} for r in records]

    assert strip(rounds(first)) == strip(rounds(second))
    assert torch.equal(
        torch.load(first / "model.pt")["classifier.1.weight"],
        torch.load(second / "model.pt")["classifier.1.weight"],
    )


def test_user_strategy_by_target(tmp_path: Path) -> None:
    run_cli(tmp_path, "strategy._target_=examples.custom_strategy.NormWeightedFedAvg")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["strategy"] == "NormWeightedFedAvg"
    assert [r["completed"] for r in rounds(tmp_path)] == [4, 4]


def test_user_model_by_target_stops_at_its_target(tmp_path: Path) -> None:
    """McMahan et al.'s CNN from examples/ as the student; any model beats 5 %, so the run ends
    after its first evaluation instead of running its three rounds."""
    run_cli(
        tmp_path, "model._target_=examples.mcmahan_cnn.mcmahan_cnn", "simulation.rounds=3",
        "simulation.target_accuracy=0.05", "simulation.stop_at_target=true",
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["round"] for r in rounds(tmp_path)] == [1]
    assert summary["stopped"] == "target_reached" and summary["round_to_target"] == 1
    state = torch.load(tmp_path / "model.pt")
    assert state["dense.0.weight"].shape == (512, 64 * 2 * 2)  # 8x8 digits, pooled twice


def test_a_diverged_run_stops_at_the_round_its_model_became_nan(tmp_path: Path) -> None:
    """At lr 1e6 the first round's aggregate overflows: the run ends there, not four rounds of
    NaN later, and its summary says why."""
    run_cli(tmp_path, "simulation.rounds=5", "simulation.local.lr=1e6", "lr_schedule=constant")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["round"] for r in rounds(tmp_path)] == [1]
    assert summary["stopped"] == "diverged" and summary["final_accuracy"] < 0.2
    state = torch.load(tmp_path / "model.pt")
    assert not all(torch.isfinite(t).all() for t in state.values())  # the model.pt it stopped at


def test_fleet_memory_budget_modes_and_clock_end_to_end(tmp_path: Path) -> None:
    """A mixed fleet under `adapt` from a pre-trained student, distilling on the phones from a
    teacher only some tiers can hold: each tier trains as it can, and says so."""
    run_cli(
        tmp_path / "run", "fleet=mixed", "budget.policy=adapt",
        "fleet.tiers.low_end.ram_mb=8",  # room for head-only training only
        "fleet.tiers.flagship.finetune=int8_head",  # a per-tier mode
        "simulation.clients_per_round=8", "simulation.target_accuracy=0.05",
        "pretrain=proxy", "pretrain.fraction=0.3", "pretrain.epochs=5", "pretrain.batch_size=8",
        "pretrain.lr=0.02", f"pretrain.cache_dir={tmp_path / 'cache'}", "audit=none",
        # A ResNet-8 at 6x width: 11 MB of fp32 weights, more than a low-end phone's 8 MiB.
        "distill.where=client", "teacher.model.depth=8", "teacher.model.width_mult=6",
        "teacher.epochs=1", f"teacher.cache_dir={tmp_path / 'cache'}",
    )
    records = rounds(tmp_path / "run")
    trained: dict[str, set[str]] = {}
    for r in records:
        assert r["completed"] == 8 and not r["dropped"]
        for tier, entry in r["tiers"].items():
            trained.setdefault(tier, set()).update(entry["trained"])
            if tier == "low_end":  # every low-end phone fell back to plain cross-entropy
                assert entry["no_kd"] == {"memory": entry["sampled"]}
            else:
                assert "no_kd" not in entry
    # Low-end phones hold ~50 digits: the frozen backbone's feature pass over all of them at
    # once does not fit 8 MiB, over 32 at a time it does, and the record says so.
    assert trained == {
        "low_end": {"head@8 chunk=32"}, "mid_range": {"full@8+kd"},
        "flagship": {"int8_head@8+kd"},
    }
    # The clock: cumulative simulated time is the sum of the rounds' durations.
    assert records[1]["sim_time_s"] == pytest.approx(records[0]["round_sim_s"] + records[1]["round_sim_s"])
    assert all(r["round_sim_s"] > 0 and r["energy_j"] > 0 for r in records)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["sim_time_s"] == records[-1]["sim_time_s"]
    assert summary["energy_j"] == pytest.approx(sum(r["energy_j"] for r in records))
    assert summary["time_to_target_s"] == records[0]["sim_time_s"]  # any model beats 5 %
    pretrain = summary["pretrain"]
    assert pretrain["cache"] == "miss" and pretrain["proxy_samples"] == round(0.3 * 1437)
    assert pretrain["test_accuracy"] > 0.5  # chance is 0.1
    teacher, student = summary["distill"]["teacher"], summary["distill"]["student"]
    assert teacher["cache"] == "miss" and teacher["proxy_samples"] == pretrain["proxy_samples"]
    assert teacher["bytes_fp32"] > 8 * 2**20 > student["bytes_fp32"]
    assert teacher["parameters"] > student["parameters"]
    assert student["final_accuracy"] == records[-1]["accuracy"]
    low_end = sum(r["tiers"]["low_end"]["sampled"] for r in records if "low_end" in r["tiers"])
    assert summary["tiers"]["low_end"]["no_kd"] == {"memory": low_end}
