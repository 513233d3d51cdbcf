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
from omegaconf import OmegaConf

from fedsim.data.fashion_mnist import SYSTEM_DIR
from fedsim.run.preparation import prepare
from tests.helpers import ROOT

CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def sweep_points(name: str) -> list[list[str]]:
    """The overrides of each point of the experiment's sweep, one seed, in the order a job of
    ``python run_sim.py -m +experiment=<name>`` has them (its ``.hydra/overrides.yaml``): the
    swept values first, the experiment last, so the experiment's file is merged over a point's."""
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    params = (yaml.safe_load(text).get("hydra") or {}).get("sweeper", {}).get("params", {})
    axes = [[f"{key}={value.strip()}" for value in str(values).split(",")]
            for key, values in params.items() if key != "simulation.seed"]
    return [[*point, f"+experiment={name}"] for point in itertools.product(*axes)]


def leaves(node: dict, prefix: str = "") -> dict[str, object]:
    """A config file's values by dotted key, without its ``defaults`` list.

    >>> leaves({"defaults": ["x"], "simulation": {"local": {"lr": 0.05}}})
    {'simulation.local.lr': 0.05}
    """
    out: dict[str, object] = {}
    for key, value in (node or {}).items():
        if key == "defaults":
            continue
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def needs_fashion_mnist(overrides: list[str]) -> bool:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    GlobalHydra.instance().clear()
    return "fashion_mnist" in str(cfg.dataset._target_)


def test_the_experiments_are_found_and_expanded() -> None:
    assert {"default_run", "mcmahan2017", "niid_strategies", "privacy_tradeoff"} <= set(EXPERIMENTS)
    points = sweep_points("mcmahan2017")
    assert len(points) == 2 * 5  # partitions x recipes
    assert ["partition=shards", "+experiment/mcmahan2017@_global_=fedsgd",
            "+experiment=mcmahan2017"] in points


# (experiment, point): every file of conf/experiment/<name>/ whose experiment sweeps it.
POINTS = sorted(
    (folder.name, point.stem)
    for folder in (CONF / "experiment").iterdir()
    if folder.is_dir() and (CONF / "experiment" / f"{folder.name}.yaml").exists()
    for point in folder.glob("*.yaml")
)


def test_the_points_are_found() -> None:
    assert ("mcmahan2017", "e5_b10") in POINTS and ("finetune_modes", "full") in POINTS


@pytest.mark.parametrize(("experiment", "point"), POINTS)
def test_what_a_point_file_sets_is_what_its_jobs_run(experiment: str, point: str) -> None:
    # A job lists the experiment after its point, so a value the experiment's own file also
    # sets would silently win over the point's (the B=10 recipes of mcmahan2017 once ran at
    # the experiment's 0.1 instead of their 0.05 this way).
    values = leaves(yaml.safe_load((CONF / "experiment" / experiment / f"{point}.yaml").read_text()))
    overrides = [f"+experiment/{experiment}@_global_={point}", f"+experiment={experiment}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    GlobalHydra.instance().clear()
    composed = {key: OmegaConf.select(cfg, key) for key in values}
    assert composed == values


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
