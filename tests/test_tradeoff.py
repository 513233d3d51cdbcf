"""The sweep report on fake sweeps: settings, mean ± sample std, deployments, the three files.

Every number below is checkable by hand: three seeds of 0.90, 0.92, 0.94 have mean 0.92 and
sample std 0.02; two seeds of 0.80, 0.84 have mean 0.82 and sample std 0.04 / sqrt(2) = 0.0283.
"""

from __future__ import annotations

import csv
import doctest
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedsim.report import deployment, rows, sweep, table, tradeoff_plot
from fedsim.report.deployment import epsilon_lines
from fedsim.report.plots import pyplot
from fedsim.report.rows import aggregate
from fedsim.report.sweep import IGNORED_KEYS, find_jobs, is_ignored
from fedsim.report.tradeoff import write_report
from fedsim.report.tradeoff_plot import plot_against_epsilon, plot_tradeoff
from tests.helpers import ROOT

EXPERIMENT = "+experiment=dp_digits"
FEW = "ε for 10 of 100 clients a round (fixed sampling)"
MANY = ("ε for 1000 of 10000 clients a round (fixed sampling); the simulated 10 of 100 get "
        "the noise of that cohort")


def job(root: Path, name: str, overrides: list[str], **summary) -> None:
    (root / name / ".hydra").mkdir(parents=True)
    (root / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (root / name / "summary.json").write_text(json.dumps(summary))


def dp(z: float, seed: int, accuracy: float, epsilon: float, cohort: int | None = None,
       **more) -> tuple[list[str], dict]:
    """The overrides and summary of a central-DP job (fixed sampling, 10 of 100 a round)."""
    overrides = [EXPERIMENT, "privacy=central_dp", f"privacy.noise_multiplier={z}"]
    summary = dict(privacy="central_dp", noise_multiplier=z, epsilon=epsilon, delta=0.01,
                   final_accuracy=accuracy, sampling="fixed", population=100,
                   clients_per_round=10, seed=seed, noise_cohort_size=None, **more)
    if cohort is not None:
        overrides.append(f"privacy.noise_cohort_size={cohort}")
        summary.update(noise_cohort_size=cohort, accounting_population=10 * cohort)
    return overrides + [f"simulation.seed={seed}"], summary


@pytest.fixture
def dp_sweep(tmp_path: Path) -> Path:
    """No DP (3 seeds); z=0 (2); z=1 and z=2 with 10 of 100 a round; the same with the noise of
    a 1000-client cohort; and a job that never finished."""
    for seed, acc, last_k, auc, minutes, cpus in [
        (0, 0.90, 0.91, 0.70, 10, 1), (1, 0.92, 0.93, 0.72, 11, 2), (2, 0.94, 0.95, 0.74, 12, 1),
    ]:
        # Display and Ray resources are no part of the setting: one row for all three seeds.
        job(tmp_path, str(seed), [EXPERIMENT, "privacy=none", f"simulation.seed={seed}",
                                  "progress=lines", f"simulation.backend.client_cpus={cpus}"],
            privacy="none", final_accuracy=acc, last_k_accuracy=last_k, last_k=5,
            best_accuracy=0.96, mia_auc=auc, mia_auc_ci=[auc - 0.07, auc + 0.07],
            audit="membership", sim_time_s=60.0 * minutes, bytes_up=2e6 * (seed + 1),
            epsilon=None, delta=None, seed=seed)
    jobs = [
        dp(0.0, 0, 0.88, math.inf), dp(0.0, 1, 0.90, math.inf),
        dp(1.0, 0, 0.80, 2.0), dp(1.0, 1, 0.84, 2.0, epsilon_simulated=None),  # not reported
        dp(2.0, 0, 0.70, 0.8, epsilon_simulated=0.8),
        dp(1.0, 0, 0.60, 0.5, 1000, epsilon_simulated=30.0),
        dp(1.0, 1, 0.64, 0.5, 1000, epsilon_simulated=30.0),
        dp(2.0, 0, 0.50, 0.2, 1000, epsilon_simulated=9.0),
    ]
    for i, (overrides, summary) in enumerate(jobs, 3):
        job(tmp_path, str(i), overrides, **summary)
    job(tmp_path, "11", [EXPERIMENT, "privacy=none", "simulation.seed=3"], privacy="none",
        final_accuracy=None)
    return tmp_path


def test_doctests() -> None:
    for module in (sweep, rows, table, deployment, tradeoff_plot):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_ignored_keys_cover_display_resources_and_restarts() -> None:
    for override in ("progress=bar", "verbose=true", "logger=mlflow", "logger.experiment=x",
                     "hydra.sweep.dir=/tmp/x", "simulation.backend.num_cpus=2",
                     "++simulation.checkpoint_every=5", "resume=/runs/a",
                     "simulation.eval_batch_size=100", "simulation.slots=2"):
        assert is_ignored(override), override
    for override in ("simulation.rounds=3", "privacy.noise_multiplier=1", "simulation.seed=0",
                     "+experiment=x", "simulation.local.batch_size=4"):
        assert not is_ignored(override), override
    assert "progress" in IGNORED_KEYS


def test_jobs_are_keyed_on_result_relevant_overrides(dp_sweep: Path) -> None:
    jobs = find_jobs(dp_sweep)
    assert len(jobs) == 11  # the unfinished job is left out
    assert jobs[0].setting == (EXPERIMENT, "privacy=none")
    assert jobs[1].ignored == ("progress=lines", "simulation.backend.client_cpus=2")
    assert [j.seed for j in jobs[:3]] == [0, 1, 2]


def test_rows_are_averaged_over_seeds_by_hand(dp_sweep: Path) -> None:
    table_rows = aggregate(find_jobs(dp_sweep))
    assert [r.label for r in table_rows] == [
        "privacy=none",  # no DP first, then ε = ∞, then each deployment from large ε to small
        "privacy=central_dp privacy.noise_multiplier=0.0",
        "privacy=central_dp privacy.noise_multiplier=1.0",
        "privacy=central_dp privacy.noise_multiplier=2.0",
        "privacy=central_dp privacy.noise_multiplier=1.0 privacy.noise_cohort_size=1000",
        "privacy=central_dp privacy.noise_multiplier=2.0 privacy.noise_cohort_size=1000",
    ]
    none, clip_only, z1, z2, z1_many, _ = table_rows
    assert none.seeds == (0, 1, 2) and none.deployment is None and none.epsilon is None
    accuracy = none.stat("final_accuracy")
    assert (accuracy.mean, accuracy.std, accuracy.n) == pytest.approx((0.92, 0.02, 3))
    assert none.stat("last_k_accuracy").mean == pytest.approx(0.93)
    assert none.stat("best_accuracy").std == 0.0
    assert none.stat("sim_time_s").mean == pytest.approx(660.0)
    assert none.stat("sim_time_s").std == pytest.approx(60.0)
    assert none.intervals["mia_auc"] == pytest.approx((0.65, 0.79))
    assert none.stat("epsilon") is None and none.audit == "membership"
    assert clip_only.epsilon == math.inf
    assert z1.stat("final_accuracy").mean == pytest.approx(0.82)
    assert z1.stat("final_accuracy").std == pytest.approx(0.04 / math.sqrt(2))
    assert z1.epsilon == 2.0 and z1.stat("epsilon").std == 0.0
    assert z1.stat("epsilon_simulated").mean == 2.0  # no borrowed noise: the same ε
    assert z2.seeds == (0,) and z2.stat("final_accuracy").std == 0.0
    assert z1.deployment.note == FEW and z1_many.deployment.note == MANY
    assert z1_many.stat("epsilon_simulated").mean == 30.0 and z1_many.epsilon == 0.5


def test_one_line_per_deployment_labelled_by_its_note(dp_sweep: Path) -> None:
    jobs = find_jobs(dp_sweep)
    lines = epsilon_lines(aggregate(jobs), (EXPERIMENT,))
    assert [line.label for line in lines] == [FEW, MANY]
    assert [[r.epsilon for r in line.rows] for line in lines] == [[2.0, 0.8], [0.5, 0.2]]


def test_lines_split_on_other_overrides_and_say_so(tmp_path: Path) -> None:
    for i, (clip, z, eps) in enumerate([(0.5, 1.0, 2.0), (0.5, 2.0, 1.0), (1.0, 1.0, 2.0)]):
        overrides, summary = dp(z, 0, 0.8, eps)
        job(tmp_path, str(i), overrides[:-1] + [f"privacy.clipping_norm={clip}"], **summary)
    lines = epsilon_lines(aggregate(find_jobs(tmp_path)), (EXPERIMENT, "privacy=central_dp"))
    assert [line.label for line in lines] == [
        f"privacy.clipping_norm=0.5: {FEW}", f"privacy.clipping_norm=1.0: {FEW}",
    ]


def test_an_experiments_points_of_one_deployment_form_one_line(tmp_path: Path) -> None:
    # +experiment=privacy_tradeoff selects each point by a subgroup; the point's noise and
    # deployment are in its summary, so points that share a deployment share a line.
    points = [("m100_z0.4", 0.4, 7.6, 100), ("m100_z0.85", 0.85, 0.66, 100),
              ("m1000_z1.0", 1.0, 0.59, 1000)]
    for i, (point, z, eps, cohort) in enumerate(points):
        _, summary = dp(z, 0, 0.96, eps, cohort)
        job(tmp_path, str(i), [EXPERIMENT, f"+experiment/privacy_tradeoff@_global_={point}",
                               "simulation.seed=0"], **summary)
    lines = epsilon_lines(aggregate(find_jobs(tmp_path)), (EXPERIMENT,))
    assert [[r.epsilon for r in line.rows] for line in lines] == [[7.6, 0.66], [0.59]]
    assert [line.label.split(";")[0] for line in lines] == [
        "ε for 100 of 1000 clients a round (fixed sampling)",
        "ε for 1000 of 10000 clients a round (fixed sampling)",
    ]


def test_the_accuracy_axis_is_fitted_to_the_data(dp_sweep: Path) -> None:
    table_rows = aggregate(find_jobs(dp_sweep))
    plt = pyplot()
    fig, ax = plt.subplots()
    plot_against_epsilon(table_rows, [ax], (EXPERIMENT,))
    low, high = ax.get_ylim()
    plt.close(fig)
    # The lowest drawn value is 0.50 (one seed), the highest 0.93 + 0.02 (the top of no DP's
    # last-5 band); 10% of that 0.45 span is added on each side.
    assert (low, high) == pytest.approx((0.50 - 0.045, 0.95 + 0.045))


def test_legends_hold_every_character(tmp_path: Path) -> None:
    long = [f"simulation.local.{k}=0.123456789" for k in ("lr", "momentum", "weight_decay")]
    job(tmp_path, "0", [EXPERIMENT, *long, "simulation.seed=0"], privacy="none",
        final_accuracy=0.9, seed=0)
    overrides, summary = dp(1.0, 0, 0.8, 2.0)
    job(tmp_path, "1", overrides, **summary)
    entries = plot_tradeoff(aggregate(find_jobs(tmp_path)), tmp_path / "t.png", "title")
    label = "no DP: " + " ".join(long)
    assert len(label) > 100
    assert label in [entry.replace("\n", " ") for entry in entries]
    assert all(len(line) <= 110 for entry in entries for line in entry.splitlines())


def run_report(*dirs: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedsim.report", *map(str, dirs)], cwd=ROOT, capture_output=True,
        text=True, timeout=120,
    )


def test_cli_writes_the_tables_and_the_plot(dp_sweep: Path) -> None:
    result = run_report(dp_sweep)
    assert result.returncode == 0, result.stderr
    md = (dp_sweep / "tradeoff.md").read_text()
    assert result.stdout.startswith(md)  # printed, then the closing line
    assert "Every run: `+experiment=dp_digits`" in md
    assert ("result-irrelevant (`fedsim.report.sweep.IGNORED_KEYS`): `progress=lines "
            "simulation.backend.client_cpus=1 simulation.backend.client_cpus=2`") in md
    assert "| setting | seeds | deployment | z | ε | ε simulated | δ | final accuracy | " \
           "last-5 accuracy | best accuracy | MIA AUC [CI] | sim. time (min) | up (MB) |" in md
    assert ("| `privacy=none` | 3 | no DP | — | — | — | — | 0.9200 ± 0.0200 | "
            "0.9300 ± 0.0200 | 0.9600 ± 0.0000 | 0.720 ± 0.020 [0.650, 0.790] | 11 ± 1 | "
            "4 ± 2 |") in md
    assert (f"| `privacy=central_dp privacy.noise_multiplier=1.0 privacy.noise_cohort_size=1000`"
            f" | 2 | {MANY} | 1 | 0.5 | 30 | 0.01 | 0.6200 ± 0.0283 |") in md
    assert f"| 2 | {FEW} | 0 | ∞ | ∞ | 0.01 |" in md  # z = 0: DP without noise
    with (dp_sweep / "tradeoff.csv").open() as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == 6
    many = records[4]
    assert many["overrides"] == ("+experiment=dp_digits privacy=central_dp "
                                 "privacy.noise_multiplier=1.0 privacy.noise_cohort_size=1000")
    assert (many["seeds"], many["seed_list"], many["deployment"]) == ("2", "0 1", MANY)
    assert float(many["final_accuracy_mean"]) == pytest.approx(0.62)
    assert float(many["final_accuracy_std"]) == pytest.approx(0.0282843, rel=1e-5)
    assert float(many["epsilon_simulated_mean"]) == 30.0 and many["mia_auc_mean"] == ""
    assert float(records[0]["mia_auc_ci_lo"]) == pytest.approx(0.65)
    assert records[1]["epsilon_mean"] == "inf"
    assert (dp_sweep / "tradeoff.png").stat().st_size > 10_000


def test_a_sweep_without_dp_gets_a_generic_report(tmp_path: Path) -> None:
    for i, (strategy, seed, acc) in enumerate(
        [("fedavg", 0, 0.8), ("fedavg", 1, 0.9), ("krum", 0, 0.6), ("krum", 1, 0.7)]
    ):
        job(tmp_path, str(i), ["+experiment=robust", f"strategy={strategy}",
                               f"simulation.seed={seed}"],
            privacy="none", final_accuracy=acc, last_k_accuracy=acc, last_k=2, seed=seed,
            energy_j=1500.0 * (seed + 1), bytes_down=3e6)
    result = run_report(tmp_path)
    assert result.returncode == 0, result.stderr
    md = (tmp_path / "tradeoff.md").read_text()
    assert "Every run: `+experiment=robust`" in md
    assert "| setting | seeds | final accuracy | last-5 accuracy | down (MB) | energy (kJ) |" in md
    assert "| `strategy=krum` | 2 | 0.6500 ± 0.0707 | 0.6500 ± 0.0707 (k=2) | 3 ± 0 | " \
           "2.25 ± 1.06 |" in md
    assert "ε" not in md.split("| setting")[1]  # no DP: no privacy columns
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    for args in ([tmp_path / "missing"], [tmp_path]):
        result = run_report(*args)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.stderr.startswith("fedsim.report: error: ")


def test_a_second_directory_joins_the_table(dp_sweep: Path, tmp_path_factory) -> None:
    other = tmp_path_factory.mktemp("baseline")
    job(other, "0", [EXPERIMENT, "privacy=none", "norm=group", "simulation.seed=0"],
        final_accuracy=0.9, privacy="none", seed=0)
    table_rows = write_report(dp_sweep, (other,))
    assert "privacy=none norm=group" in [r.label for r in table_rows]
    assert "Every run: `+experiment=dp_digits`" in (dp_sweep / "tradeoff.md").read_text()
