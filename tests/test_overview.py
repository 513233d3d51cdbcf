"""The sweep overview: every job's accuracy curve, one colour per setting, on a synthetic sweep."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedsim.report import overview
from fedsim.report.overview import OVERVIEW, colours, find_curves, setting_labels, write_overview
from fedsim.report.plots import pyplot
from tests.helpers import ROOT

# (job, strategy, seed, accuracies of rounds 1..3 (None: not evaluated), minutes a round)
JOBS = [
    ("0", "fedavg", 0, [0.2, None, 0.6], 1.0),
    ("1", "fedavg", 1, [0.3, None, 0.7], 1.0),
    ("2", "krum", 0, [0.1, None, 0.4], 2.0),
    ("3", "krum", 1, [0.1, None, 0.5], 2.0),
]


def write_job(sweep: Path, name: str, overrides: list[str], accuracies, minutes: float) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    lines = [
        json.dumps({"round": r, "accuracy": a, "sim_time_s": 60.0 * minutes * r})
        for r, a in enumerate(accuracies, 1)
    ]
    (job / "metrics.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    for name, strategy, seed, accuracies, minutes in JOBS:
        write_job(tmp_path, name, ["attack=sign_flip", f"strategy={strategy}",
                                   f"simulation.seed={seed}"], accuracies, minutes)
    write_job(tmp_path, "4", ["attack=sign_flip", "strategy=bulyan", "simulation.seed=0"],
              [None], 1.0)  # killed before its first evaluation: nothing to draw
    return tmp_path


def test_doctests() -> None:
    assert doctest.testmod(overview).failed == 0


def test_curves_read_back_by_hand(sweep: Path) -> None:
    curves = find_curves(sweep)
    assert [c.run_dir.name for c in curves] == ["0", "1", "2", "3"]
    krum = curves[2]
    assert krum.setting == ("attack=sign_flip", "strategy=krum") and krum.seed == "0"
    assert krum.rounds == (1, 3) and krum.accuracy == (0.1, 0.4)
    assert krum.sim_minutes == (2.0, 6.0)  # 120 s and 360 s of simulated time


def test_pooled_sweeps_are_drawn_after_the_first(sweep: Path, tmp_path_factory) -> None:
    # A baseline run as its own sweep, pooled as `python -m fedsim.report SWEEP BASELINE` does.
    baseline = tmp_path_factory.mktemp("baseline")
    write_job(baseline, "0", ["attack=none", "strategy=fedavg", "simulation.seed=0"],
              [0.5, 0.8, 0.9], 1.0)
    curves = find_curves(sweep, [baseline])
    assert [c.run_dir for c in curves] == [sweep / n for n in "0123"] + [baseline / "0"]
    assert curves[-1].setting == ("attack=none", "strategy=fedavg")
    assert curves[-1].accuracy == (0.5, 0.8, 0.9)


def test_seeds_share_a_colour_and_settings_do_not(sweep: Path) -> None:
    curves = find_curves(sweep)
    labels = setting_labels(curves)
    # The attack every job shares is left out of the labels.
    assert list(labels.values()) == ["strategy=fedavg", "strategy=krum"]
    colour = colours(list(labels))
    assert colour[curves[0].setting] == colour[curves[1].setting]
    assert colour[curves[0].setting] != colour[curves[2].setting]


def pixels_near(image: np.ndarray, rgb: tuple, tolerance: float = 0.04) -> int:
    return int((np.abs(image[..., :3] - np.asarray(rgb)) < tolerance).all(axis=-1).sum())


def test_the_page_draws_each_setting_in_its_colour(sweep: Path) -> None:
    write_overview(sweep)
    image = pyplot().imread(sweep / OVERVIEW)
    palette = pyplot().get_cmap("tab10").colors
    # Curves are drawn at alpha 0.85 over white, the legend's swatches opaque.
    drawn = [pixels_near(image, 0.85 * np.asarray(c) + 0.15) + pixels_near(image, c)
             for c in palette[:3]]
    assert drawn[0] > 200 and drawn[1] > 200  # fedavg's and krum's curves in both panels
    assert drawn[2] == 0  # no third setting, so no third colour
    assert image.shape[1] > 1000  # two panels side by side (11 in at 110 dpi, cropped)


def test_cli_writes_the_overview_without_finished_runs(sweep: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedsim.report", str(sweep)], cwd=ROOT, capture_output=True,
        text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"4 runs, no finished run; wrote {sweep / OVERVIEW}"  # no summary.json: no trade-off
    )
    assert (sweep / OVERVIEW).stat().st_size > 10_000
