"""Trade-off report: grouping by setting, mean and sample std over seeds, the three files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedsim.report.tradeoff import aggregate, find_jobs, write_report

ROOT = Path(__file__).resolve().parents[1]


def job(root: Path, name: str, overrides: list[str], **summary) -> None:
    (root / name / ".hydra").mkdir(parents=True)
    (root / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (root / name / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    for i, (z, seed, acc, auc, eps) in enumerate(
        [
            (0.0, 0, 0.80, 0.60, float("inf")),
            (0.0, 1, 0.90, 0.70, float("inf")),
            (1.0, 0, 0.50, 0.50, 2.5),
            (1.0, 1, 0.70, 0.52, 2.5),
            (1.0, 2, 0.60, 0.54, 2.5),
        ]
    ):
        job(
            tmp_path, str(i), ["privacy=central_dp", f"privacy.noise_multiplier={z}",
                               f"simulation.seed={seed}"],
            final_accuracy=acc, mia_auc=auc, epsilon=eps, delta=0.01, privacy="central_dp",
            noise_multiplier=z, seed=seed,
        )
    job(tmp_path, "5", ["privacy=none", "simulation.seed=0"], final_accuracy=0.95, mia_auc=0.8,
        epsilon=None, privacy="none", seed=0)
    job(tmp_path, "6", ["privacy=none", "simulation.seed=1"], final_accuracy=None, privacy="none")
    return tmp_path


def test_rows_group_seeds_and_average_by_hand(sweep: Path) -> None:
    rows = aggregate(find_jobs(sweep))  # the unfinished job (no accuracy) is left out
    assert [r.setting for r in rows] == [
        "privacy=none", "privacy=central_dp privacy.noise_multiplier=0.0",
        "privacy=central_dp privacy.noise_multiplier=1.0",
    ]
    none, clip_only, dp = rows
    assert none.epsilon is None and none.seeds == 1 and none.accuracy_std == 0.0
    assert clip_only.epsilon == float("inf")
    assert clip_only.accuracy_mean == pytest.approx(0.85)
    assert clip_only.accuracy_std == pytest.approx(0.0707107, rel=1e-5)  # ddof 1
    assert dp.seeds == 3 and dp.epsilon == 2.5
    assert dp.accuracy_mean == pytest.approx(0.6) and dp.accuracy_std == pytest.approx(0.1)
    assert dp.mia_auc_mean == pytest.approx(0.52) and dp.mia_auc_std == pytest.approx(0.02)


def test_cli_writes_csv_markdown_and_plot(sweep: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedsim.report", str(sweep)], cwd=ROOT, capture_output=True,
        text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "| `privacy=central_dp privacy.noise_multiplier=1.0` | central_dp | 1 | 2.5 |" in (
        sweep / "tradeoff.md"
    ).read_text()
    assert "0.6000 ± 0.1000" in result.stdout
    csv_lines = (sweep / "tradeoff.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("setting,privacy,noise_multiplier")
    assert (sweep / "tradeoff.png").stat().st_size > 10_000


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    for args in ([str(tmp_path / "missing")], [str(tmp_path)]):
        result = subprocess.run(
            [sys.executable, "-m", "fedsim.report", *args], cwd=ROOT, capture_output=True,
            text=True, timeout=120,
        )
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.stderr.startswith("fedsim.report: error: ")


def test_a_second_directory_joins_the_table(sweep: Path, tmp_path_factory) -> None:
    other = tmp_path_factory.mktemp("baseline")
    job(other, "0", ["privacy=none", "norm=group", "simulation.seed=0"], final_accuracy=0.9,
        privacy="none", seed=0)
    rows = write_report(sweep, (other,))
    assert "norm=group" in " ".join(r.setting for r in rows)
