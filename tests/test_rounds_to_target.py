"""The rounds-to-target report on a fake sweep, every number checkable by hand.

FedSGD needs 60, 90 and (seed 2) more than its 100 rounds on IID data; FedAvg 2, 4 and 3: its
mean is 3, the baseline's at least (60 + 90 + 100) / 3 = 83.3, so the speed-up is >= 27.8x. On
the shards FedSGD needs 80 and 100 (mean 90), FedAvg 10 and 20 (mean 15, std 7.07): 6.0x.
"""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedsim.report import rounds_to_target
from fedsim.report.rounds_to_target import OUTPUTS, write_rounds_to_target
from fedsim.report.sweep import find_jobs
from tests.helpers import ROOT

RECIPE = "+experiment/mcmahan2017@_global_"
BASELINE = f"{RECIPE}=fedsgd"


def job(root: Path, name: str, partition: str, recipe: str, seed: int, reached: int | None,
        rounds: int, baseline: str | None = BASELINE, stopped: str = "completed") -> None:
    directory = root / name / ".hydra"
    directory.mkdir(parents=True)
    overrides = ["+experiment=mcmahan2017", f"simulation.seed={seed}", f"partition={partition}",
                 f"{RECIPE}={recipe}"]
    (directory / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (directory / "config.yaml").write_text(yaml.safe_dump({"report": {"baseline": baseline}}))
    summary = {"final_accuracy": 0.75 if reached else 0.7, "round_to_target": reached,
               "rounds": rounds, "target_accuracy": 0.75, "seed": seed, "stopped": stopped}
    (root / name / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    runs = [
        ("iid", "fedsgd", [60, 90, None]), ("iid", "e5_b10", [2, 4, 3]),
        ("shards", "fedsgd", [80, 100]), ("shards", "e5_b10", [10, 20]),
    ]
    n = 0
    for partition, recipe, reached in runs:
        for seed, r in enumerate(reached):
            job(tmp_path, str(n), partition, recipe, seed, r, r if r else 100)
            n += 1
    return tmp_path


def table(sweep: Path) -> dict[str, list[str]]:
    lines = (sweep / OUTPUTS[0]).read_text().splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    return {row[0]: row[1:] for row in cells[1:]}


def test_rounds_speedups_and_misses_by_hand(sweep: Path) -> None:
    rows = write_rounds_to_target(sweep, find_jobs(sweep))
    assert rows is not None and len(rows) == 4
    cells = table(sweep)
    assert cells[f"partition=iid {BASELINE}"] == [
        "3", "75.0 ± 21.2 (2 of 3; 1 not within 100)", "baseline", "0.7333 ± 0.0289",
    ]
    assert cells[f"partition=iid {RECIPE}=e5_b10"][1:3] == ["3.0 ± 1.0", ">= 27.8x"]
    assert cells[f"partition=shards {BASELINE}"][1:3] == ["90.0 ± 14.1", "baseline"]
    assert cells[f"partition=shards {RECIPE}=e5_b10"][1:3] == ["15.0 ± 7.1", "6.0x"]
    assert (sweep / OUTPUTS[1]).stat().st_size > 1000


def test_no_target_no_report_and_no_baseline_no_speedup(tmp_path: Path) -> None:
    job(tmp_path, "0", "iid", "e1_b10", 0, 5, 5, baseline=None)
    job(tmp_path, "1", "iid", "fedsgd", 0, 50, 50, baseline=None)
    write_rounds_to_target(tmp_path, find_jobs(tmp_path))
    assert [row[2] for row in table(tmp_path).values()] == ["-", "-"]
    # A baseline given on the command line instead: 50 / 5 = 10x.
    write_rounds_to_target(tmp_path, find_jobs(tmp_path), baseline=BASELINE)
    assert table(tmp_path)[f"{RECIPE}=e1_b10"][2] == "10.0x"
    summary = json.loads((tmp_path / "0" / "summary.json").read_text())
    summary["target_accuracy"] = None
    for name in ("0", "1"):
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    (tmp_path / OUTPUTS[0]).unlink()
    assert write_rounds_to_target(tmp_path, find_jobs(tmp_path)) is None
    assert not (tmp_path / OUTPUTS[0]).exists()


def test_a_diverged_seed_is_named_not_counted_as_slow(sweep: Path) -> None:
    # A third recipe on the shards: one seed reaches the target in 40 rounds, one diverges at
    # round 12 (its model became NaN), so no speed-up is claimed for it.
    job(sweep, "20", "shards", "e5_b50", 0, 40, 40)
    job(sweep, "21", "shards", "e5_b50", 1, None, 12, stopped="diverged")
    job(sweep, "22", "iid", "e1_b50", 0, None, 12, stopped="diverged")
    write_rounds_to_target(sweep, find_jobs(sweep))
    cells = table(sweep)
    assert cells[f"partition=shards {RECIPE}=e5_b50"][:3] == [
        "2", "40.0 ± 0.0 (1 of 2; 1 diverged)", "-",
    ]
    assert cells[f"partition=iid {RECIPE}=e1_b50"][1:3] == ["diverged (round 12)", "-"]


def test_command_line_writes_it_beside_the_tradeoff_report(sweep: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedsim.report", str(sweep)], cwd=ROOT, capture_output=True,
        text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert ">= 27.8x" in result.stdout and str(sweep / OUTPUTS[0]) in result.stdout


def log_rounds(root: Path, name: str, accuracy: dict[int, float]) -> None:
    """``metrics.jsonl`` with an evaluation at each round of ``accuracy``."""
    lines = [json.dumps({"round": r, "accuracy": a}) for r, a in sorted(accuracy.items())]
    (root / name / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_a_lower_target_is_read_from_the_round_logs(tmp_path: Path) -> None:
    # FedSGD (evaluated every 10th round) misses 0.75 in 100 rounds in both seeds, so against
    # it FedAvg's speed-up at 0.75 is only a bound; both FedSGD seeds pass 0.7, at rounds 40
    # and 60 (mean 50). FedAvg stopped at 0.75 in rounds 4 and 6 and passed 0.7 at 2 and 4
    # (mean 3): 50 / 3 = 16.7x, measured. A third recipe diverged at round 5 after passing
    # 0.7 at round 3: for 0.7 it counts as reached.
    for seed, at in enumerate((40, 60)):
        job(tmp_path, f"{seed}", "iid", "fedsgd", seed, None, 100)
        log_rounds(tmp_path, f"{seed}", {r: 0.5 if r < at else 0.72 for r in range(10, 101, 10)})
    for seed, (at, stop) in enumerate(((2, 4), (4, 6))):
        job(tmp_path, f"{2 + seed}", "iid", "e5_b10", seed, stop, stop, stopped="target_reached")
        log_rounds(tmp_path, f"{2 + seed}",
                   {r: 0.6 if r < at else 0.7 if r < stop else 0.76 for r in range(1, stop + 1)})
    job(tmp_path, "4", "iid", "e5_b50", 0, None, 5, stopped="diverged")
    log_rounds(tmp_path, "4", {1: 0.5, 2: 0.6, 3: 0.71, 4: 0.1, 5: 0.1})

    write_rounds_to_target(tmp_path, find_jobs(tmp_path))  # the runs' own 0.75
    assert table(tmp_path)[f"{RECIPE}=e5_b10"][1:3] == ["5.0 ± 1.4", ">= 20.0x"]
    rows = write_rounds_to_target(tmp_path, find_jobs(tmp_path), target=0.7)
    assert rows is not None
    lines = (tmp_path / "rounds_to_target_0.7.md").read_text()
    assert "first reached 0.7 (the first such round in each run's metrics.jsonl)" in lines
    cells = {row[0]: row[1:] for row in (
        [c.strip() for c in line.strip("|").split("|")] for line in lines.splitlines()
        if line.startswith("| ")
    )}
    assert cells[BASELINE][1:3] == ["50.0 ± 14.1", "baseline"]
    assert cells[f"{RECIPE}=e5_b10"][1:3] == ["3.0 ± 1.4", "16.7x"]
    assert cells[f"{RECIPE}=e5_b50"][1:3] == ["3.0 ± 0.0", "16.7x"]
    assert (tmp_path / "rounds_to_target_0.7.png").stat().st_size > 1000
    assert table(tmp_path)[f"{RECIPE}=e5_b10"][2] == ">= 20.0x"  # the 0.75 report is kept

    # 0.8: the FedAvg runs stopped at 0.75, so whether they would have reached it is unknown.
    with pytest.raises(ValueError, match=r"--target 0.8: .* stopped when it reached 0.75"):
        write_rounds_to_target(tmp_path, find_jobs(tmp_path), target=0.8)
    result = subprocess.run(
        [sys.executable, "-m", "fedsim.report", str(tmp_path), "--target", "0.8"], cwd=ROOT,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("fedsim.report: error: --target 0.8: ")


def test_doctests() -> None:
    assert doctest.testmod(rounds_to_target).failed == 0
