"""Every row of the README's bad-input table: one line on stderr, exit code 2, no traceback.

Rows that can be caught before Ray starts are checked to be (no Ray output, under ~10 s); a
strategy that raises mid-run stops the run with one line and keeps the rounds it finished.
"""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.serverapp.strategy import FedAvg

from tests.helpers import ROOT, TINY


class RaisesInRoundTwo(FedAvg):
    """A user strategy with a bug that shows in round 2."""

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        if server_round == 2:
            raise ValueError("weights do not add up")
        return super().aggregate_train(server_round, replies)


def cli(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run_sim.py", *args, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )


def corrupt_fashion_mnist(tmp_path: Path) -> str:
    data = tmp_path / "fmnist"
    data.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(data / f"{name}.gz", "wb") as fh:
            fh.write(b"\x00\x00\x08\x03 not an IDX file")
    return str(data)


ROWS = [
    ("wrong type", ["simulation.rounds=abc"], "simulation.rounds: Value 'abc'"),
    ("out of range", ["simulation.population=-5"], "simulation.population: must be >= 1"),
    ("unknown group option", ["strategy=fedxyz"], "strategy: no option 'fedxyz'"),
    ("unknown key", ["+simulation.roudns=3"], "simulation.roudns: Key 'roudns' not in"),
    ("unimportable _target_", ["strategy._target_=nope.Strategy"],
     "strategy._target_: cannot import 'nope.Strategy'"),
    ("not a Strategy", ["strategy._target_=collections.OrderedDict"],
     "strategy._target_: 'collections.OrderedDict' is not a flwr.serverapp.strategy.Strategy"),
    ("missing dataset file", ["dataset=fashion_mnist", "dataset.data_dir=/nonexistent",
                              "dataset.download=false"], "fashion-mnist: files not found in /nonexistent"),
    ("partition leaves a phone without data", ["simulation.population=2000",
                                               "simulation.clients_per_round=10"], "partition"),
    ("DP with an unprotectable layer", ["privacy=central_dp", "norm=batch", "finetune=full"],
     "norm: privacy=central_dp cannot protect BatchNorm"),
    ("resume dir that is not a run dir", ["resume=/tmp"], "resume: /tmp is not a fedsim run"),
    ("device profile with impossible numbers", ["fleet=mixed", "fleet.tiers.low_end.ram_mb=0"],
     "fleet.tiers.low_end.ram_mb (conf/device/low_end.yaml): must be > 0, got 0"),
    ("fleet shares that do not sum to 1", ["fleet=mixed", "fleet.mix.low_end=0.9"],
     "fleet.mix: shares must sum to 1, got 1.4"),
    ("unknown fine-tuning mode", ["finetune.mode=lora"], "finetune.mode: no mode 'lora'"),
    ("missing availability trace", ["availability=trace", "availability.path=/nonexistent.csv"],
     "availability.path: /nonexistent.csv"),
    ("over-selection with DP", ["privacy=central_dp", "norm=group", "simulation.overcommit=0.5"],
     "simulation.overcommit: over-selection keeps the fastest phones"),
    ("distillation place that does not exist", ["distill.where=everywhere"],
     "distill.where: no option 'everywhere'"),
    ("distillation setting out of range", ["distill.alpha=1.5"],
     "distill.alpha: must be in [0, 1], got 1.5"),
    ("distillation reading what DP hides", ["privacy=central_dp", "norm=group",
                                            "distill.where=server_ensemble",
                                            "distill.ensemble=clients"],
     "distill.ensemble: 'clients' reads every client model, which central DP does not protect"),
    ("teacher without a network", ["teacher.model._target_=null"],
     "teacher.model: needs a _target_"),
]


@pytest.mark.parametrize(("row", "args", "message"), ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_before_ray(tmp_path: Path, row: str, args: list, message: str) -> None:
    result = cli(tmp_path, *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-1500:]
    assert len(lines) == 1 and lines[0].startswith("fedsim: error: "), lines
    assert message in lines[0]
    assert "Traceback" not in result.stderr and "ray" not in result.stdout.lower()


def test_corrupt_dataset_file_names_it(tmp_path: Path) -> None:
    result = cli(tmp_path, "dataset=fashion_mnist", f"dataset.data_dir={corrupt_fashion_mnist(tmp_path)}",
                 "dataset.download=false")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "train-images-idx3-ubyte" in line


@pytest.mark.slow  # starts Ray
def test_a_strategy_that_raises_keeps_the_finished_rounds(tmp_path: Path) -> None:
    result = cli(tmp_path, *TINY, "simulation.rounds=3",
                 "strategy._target_=tests.test_bad_input.RaisesInRoundTwo")
    assert result.returncode == 2
    # Ray may log a line of its own while its actors shut down; fedsim says one thing.
    ours = [line for line in result.stderr.splitlines() if line.startswith("fedsim:")]
    assert ours == [
        "fedsim: error: strategy: RaisesInRoundTwo.aggregate_train raised in round 2: "
        "ValueError: weights do not add up"
    ]
    assert "Traceback" not in result.stderr
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["stopped"] == "incomplete"
