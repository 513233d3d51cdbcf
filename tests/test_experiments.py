"""Every point of every committed experiment (conf/experiment/) passes fedsim's checks.

A documented table comes from ``python run_sim.py -m +experiment=<name>``; a point that a later
change broke would fail only in the middle of an hour-long sweep. Here each point of each sweep
(seeds aside: they change no check) is composed and prepared as a run would be before Ray
starts, and its student is built.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from fedsim.data.fashion_mnist import SYSTEM_DIR
from fedsim.run.preparation import prepare
from tests.helpers import ROOT

CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def sweep_points(name: str) -> list[list[str]]:
    """The overrides of each point of the experiment's sweep, one seed."""
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    params = (yaml.safe_load(text).get("hydra") or {}).get("sweeper", {}).get("params", {})
    axes = [[f"{key}={value.strip()}" for value in str(values).split(",")]
            for key, values in params.items() if key != "simulation.seed"]
    return [[f"+experiment={name}", *point] for point in itertools.product(*axes)]


def needs_fashion_mnist(overrides: list[str]) -> bool:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    GlobalHydra.instance().clear()
    return "fashion_mnist" in str(cfg.dataset._target_)


def test_the_experiments_are_found_and_expanded() -> None:
    assert {"default_run", "mcmahan2017", "niid_strategies", "privacy_tradeoff"} <= set(EXPERIMENTS)
    points = sweep_points("mcmahan2017")
    assert len(points) == 2 * 5  # partitions x recipes
    assert ["+experiment=mcmahan2017", "partition=shards",
            "+experiment/mcmahan2017@_global_=fedsgd"] in points


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_point_prepares_and_builds_its_student(name: str, tmp_path: Path) -> None:
    for overrides in sweep_points(name):
        if needs_fashion_mnist(overrides) and not SYSTEM_DIR.is_dir():
            pytest.skip("dataset-fashion-mnist not installed (.ci/run installs it)")
        overrides = overrides + [f"pretrain.cache_dir={tmp_path}"]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        GlobalHydra.instance().clear()
        prepared = prepare(cfg)
        model = prepared.builder()
        assert sum(p.numel() for p in model.parameters()) > 0, overrides
