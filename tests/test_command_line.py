"""Mistyped overrides: each is refused in one line naming the key, with the closest valid one."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsim.command_line import check_overrides, closest, expand_sweeps
from fedsim.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# (overrides, the start of fedsim's one line)
TYPOS = [
    # top level, added with + (Hydra would run the default job) or set plainly
    (["+simulaton.rounds=1"],
     "simulaton: fedsim has no config group or key 'simulaton' (did you mean 'simulation'?)"),
    (["simulaton.rounds=1"], "simulaton.rounds: no key 'simulaton' in the config (did you mean 'simulation'?)"),
    (["+experiment=no_such_recipe"], "experiment: "),
    (["~privacyy"], "privacyy: no key 'privacyy' in the config (did you mean 'privacy'?)"),
    # inside simulation
    (["simulation.local.lrr=0.1"],
     "simulation.local.lrr: no key 'lrr' in 'simulation.local' (did you mean 'simulation.local.lr'?)"),
    (["simulation.rouds=3"], "simulation.rouds: no key 'rouds' in 'simulation' (did you mean 'simulation.rounds'?)"),
    # inside a group's option, and a key that only another option of the group has
    (["privacy=central_dp", "privacy.noise_multipler=1.0"],
     "privacy.noise_multipler: no key 'noise_multipler' in 'privacy' (did you mean 'privacy.noise_multiplier'?)"),
    (["privacy.noise_multipler=1.0"],
     "privacy.noise_multipler: no key 'noise_multipler' in 'privacy' (did you mean 'privacy.noise_multiplier'? "
     "it belongs to privacy=central_dp"),
    (["partition=dirichlet", "partition.alpah=0.1"], "partition.alpah: no key 'alpah' in 'partition' (did you mean 'partition.alpha'?)"),
    (["budget.polcy=adapt"], "budget.polcy: no key 'polcy' in 'budget' (did you mean 'budget.policy'?)"),
    # + on a _target_ node: the class's parameters are listed
    (["+strategy.etaa=0.1"], "strategy.etaa: flwr.serverapp.strategy.FedAvg has no parameter 'etaa'; it accepts fraction_train"),
    (["strategy=fedadam", "+strategy.etaa=0.1"], "strategy.etaa: flwr.serverapp.strategy.FedAdam has no parameter 'etaa' (did you mean 'eta'?)"),
    (["strategy=fedadam", "+strategy.eta=0.1"], "strategy.eta: already in the config; set it without the '+'"),
    # group option names, plain and dotted groups
    (["strategy=fedavgg"], "strategy: no option 'fedavgg' (did you mean 'fedavg'?) (choose from bulyan,"),
    (["update.compression=int9"], "update.compression: no option 'int9' (did you mean 'int8'?)"),
    (["fleet=mixd"], "fleet: no option 'mixd' (did you mean 'mixed'?)"),
    # syntax
    (["simulation.rounds=("], "bad override syntax: "),
    # a sweep with one bad value among good ones
    (["simulation.seed=0,1,2", "strategy=fedavg,krumm"], "strategy: no option 'krumm' (did you mean 'krum'?)"),
]


@pytest.mark.parametrize(("overrides", "expected"), TYPOS, ids=[" ".join(o) for o, _ in TYPOS])
def test_a_typo_is_one_line_naming_the_key_and_what_was_meant(overrides, expected):
    with pytest.raises(ConfigError) as err:
        check_overrides(overrides, CONF)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(expected)


@pytest.mark.parametrize("overrides", [
    [],
    ["simulation.rounds=2", "strategy=fedprox", "strategy.proximal_mu=0.1"],
    ["privacy=central_dp", "privacy.noise_multiplier=0.5", "simulation.seed=0,1,2"],
    ["strategy=fedavg,krum", "attack=sign_flip"],
    ["update.compression=topk", "update.compression.fraction=0.05"],
    ["hydra.run.dir=/tmp/x", "+strategy.fraction_train=0.5"],
    ["strategy._target_=examples.custom_strategy.NormWeightedFedAvg"],
])
def test_valid_command_lines_pass(overrides):
    check_overrides(overrides, CONF)


def test_sweeps_are_checked_value_by_value_not_as_a_product():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(["a=1,2,3", "b=x,y", "c=5"])
    variants = list(expand_sweeps(parsed))
    assert variants == [
        ["a=1", "b=x", "c=5"], ["a=2", "b=x", "c=5"], ["a=3", "b=x", "c=5"], ["a=1", "b=y", "c=5"],
    ]


def test_closest_needs_a_real_resemblance():
    assert closest("noise_multipler", ["noise_multiplier", "clipping_norm"]) == "noise_multiplier"
    assert closest("zzz", ["rounds", "seed"]) is None


def run_sim(*args: str, cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "run_sim.py", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
    )
    return result, time.perf_counter() - started


@pytest.mark.parametrize("args", [
    ["+simulaton.rounds=1"],
    ["simulaton.rounds=1"],
    ["privacy.noise_multipler=1.0"],
    ["strategy=fedavgg"],
])
def test_the_command_line_exits_2_with_fedsims_one_line(args, tmp_path):
    result, seconds = run_sim(*args, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsim: error: ")
    assert "did you mean" in lines[0]
    assert not (tmp_path / "run").exists()  # nothing started
    assert seconds < 20  # about a second on an idle machine; the bound only catches a Ray start


def test_a_sweep_with_one_bad_value_starts_no_job(tmp_path):
    result, _ = run_sim("-m", "simulation.seed=0,1", "strategy=fedavg,krumm",
                        f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("fedsim: error: strategy: no option 'krumm'")
    assert not (tmp_path / "sweep").exists()


def test_verbose_shows_hydras_own_message(tmp_path):
    result, _ = run_sim("simulaton.rounds=1", "verbose=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "Could not override 'simulaton.rounds'" in result.stderr


@pytest.mark.parametrize(("key", "expected"), [
    ("simulation.roudns", "simulation.roudns: Key 'roudns' not in 'Simulation' (did you mean 'simulation.rounds'?)"),
    ("simulation.local.lrr", "simulation.local.lrr: Key 'lrr' not in 'LocalTraining' (did you mean 'simulation.local.lr'?)"),
])
def test_a_key_added_to_a_schema_node_is_named_with_the_field_meant(key, expected):
    from omegaconf import OmegaConf, open_dict

    from fedsim.config import parse_simulation

    cfg = OmegaConf.load(CONF / "config.yaml")
    with open_dict(cfg):
        OmegaConf.update(cfg, key, 3, force_add=True)
    with pytest.raises(ConfigError) as err:
        parse_simulation(cfg)
    assert str(err.value) == expected


def test_a_wrong_value_of_a_right_key_suggests_nothing():
    from omegaconf import OmegaConf

    from fedsim.config import parse_simulation

    cfg = OmegaConf.load(CONF / "config.yaml")
    cfg.simulation.rounds = "abc"
    with pytest.raises(ConfigError) as err:
        parse_simulation(cfg)
    assert "did you mean" not in str(err.value)
