"""The ``lr_schedule`` group: the phones' learning rate each round (fedsim/run/learning_rate.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord

from clients.client_app import recipe_for_round
from clients.training import LocalRecipe
from fedsim import keys
from fedsim.config import parse_simulation
from fedsim.errors import ConfigError
from fedsim.run.learning_rate import Constant, Cosine, LearningRateInstruction
from tests.helpers import make_cfg, prepared

COHORT = np.array([3, 7])


def test_cosine_spans_the_base_rate_to_its_final_fraction() -> None:
    schedule = Cosine(final_fraction=0.1)
    assert schedule.factor(1, 25) == pytest.approx(1.0)
    # Halfway (round 13 of 25: progress 12/24) the cosine term is 1/2: 0.1 + 0.9 * 0.5.
    assert schedule.factor(13, 25) == pytest.approx(0.55)
    assert schedule.factor(25, 25) == pytest.approx(0.1)
    # Round 7 of 25: progress 0.25, (1 + cos(pi/4)) / 2 = 0.853553.
    assert schedule.factor(7, 25) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)


def test_warm_up_ramps_linearly_before_the_decay() -> None:
    schedule = Cosine(final_fraction=0.0, warmup_rounds=2)
    assert [schedule.factor(r, 12) for r in (1, 2, 3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert schedule.factor(12, 12) == pytest.approx(0.0)


def test_a_one_round_run_trains_at_the_base_rate() -> None:
    assert Cosine().factor(1, 1) == 1.0


def test_the_instruction_sends_the_rounds_rate_unless_the_strategy_set_one() -> None:
    instruction = LearningRateInstruction(Cosine(final_fraction=0.1), base_lr=0.02, rounds=25)
    assert instruction(13, 3, COHORT, ConfigRecord({})) == {
        keys.LEARNING_RATE: pytest.approx(0.011)
    }
    assert instruction(13, 3, COHORT, ConfigRecord({keys.LEARNING_RATE: 0.5})) == {}
    constant = LearningRateInstruction(Constant(), base_lr=0.02, rounds=25)
    assert constant(25, 3, COHORT, ConfigRecord({})) == {keys.LEARNING_RATE: 0.02}


def test_the_phone_trains_at_the_rate_it_is_told() -> None:
    base = LocalRecipe(epochs=1, batch_size=8, lr=0.05)
    told = recipe_for_round(base, ConfigRecord({keys.LEARNING_RATE: 0.011}))
    assert told.lr == 0.011 and told.batch_size == 8


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"final_fraction": 1.5}, "lr_schedule.final_fraction"),
     ({"warmup_rounds": -1}, "lr_schedule.warmup_rounds")],
)
def test_bad_schedules_are_one_line_errors(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Cosine(**fields)


def test_the_config_group_builds_the_runs_instruction() -> None:
    instruction = prepared(
        "lr_schedule=cosine", "lr_schedule.final_fraction=0.2", "simulation.local.lr=0.03",
        "simulation.rounds=5", "audit=none",
    ).learning_rate
    assert instruction == LearningRateInstruction(Cosine(final_fraction=0.2), 0.03, 5)
    assert instruction(5, 0, COHORT, ConfigRecord({}))[keys.LEARNING_RATE] == pytest.approx(0.006)


@pytest.mark.parametrize(("overrides", "lr"), [
    ((), 0.02),                                  # from scratch
    (("pretrain=proxy",), 0.01),                 # from the pre-trained student
    (("distill.where=server_pre",), 0.01),       # from the distilled student
    (("distill.where=server_ensemble",), 0.02),  # from scratch; the server refines
    (("pretrain=proxy", "simulation.local.lr=0.05"), 0.05),
    (("distill.where=server_pre", "simulation.local.lr=0.05"), 0.05),
])
def test_a_pre_trained_or_distilled_start_fine_tunes_at_its_rate_unless_one_is_set(
    overrides: tuple[str, ...], lr: float
) -> None:
    assert parse_simulation(make_cfg(*overrides)).local.lr == lr
