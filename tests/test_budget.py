"""The memory-budget policy (fedsim.fleet.budget) with a hand-made estimate."""

import pytest

from fedsim.fleet.budget import (
    MemoryBudget,
    TrainPlan,
    fallback_modes,
    fit_chunk,
    halved_batches,
)
from fedsim.errors import ConfigError

PER_SAMPLE = {"full": 10, "bias": 6, "head": 1}


def estimate(mode: str, batch_size: int, chunk: int = 256) -> int:
    return PER_SAMPLE[mode] * batch_size  # no pass over the shard: the chunk changes nothing


class Recording:
    """The estimate, remembering every (mode, batch) it was asked about (at the first chunk)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, mode: str, batch_size: int, chunk: int = 256) -> int:
        if chunk == 256:
            self.calls.append((mode, batch_size))
        return estimate(mode, batch_size)


def test_strict_keeps_exactly_what_fits():
    strict = MemoryBudget("strict")
    assert strict.plan(estimate, 320, "full", 32) == TrainPlan("full", 32, 320)  # == budget fits
    assert strict.plan(estimate, 319, "full", 32) is None
    assert strict.plan(estimate, 32, "head", 32) == TrainPlan("head", 32, 32)


def test_strict_drops_exactly_the_phones_over_budget():
    budgets = [100, 200, 300, 319, 320, 321, 1000]
    kept = [b for b in budgets if MemoryBudget("strict").plan(estimate, b, "full", 32)]
    assert kept == [320, 321, 1000]


def test_halving_sequence():
    assert list(halved_batches(32, 8)) == [32, 16, 8]
    assert list(halved_batches(30, 8)) == [30, 15]
    assert list(halved_batches(5, 8)) == [5]  # the requested batch is tried even below the floor
    assert list(halved_batches(8, 1)) == [8, 4, 2, 1]


def test_fallback_order():
    fallback = ("full", "bias", "head")
    assert fallback_modes("full", fallback) == ["full", "bias", "head"]
    assert fallback_modes("bias", fallback) == ["bias", "head"]
    assert fallback_modes("head", fallback) == ["head"]
    assert fallback_modes("qat", fallback) == ["qat", "full", "bias", "head"]


def test_adapt_halves_then_falls_back():
    adapt = MemoryBudget("adapt", min_batch_size=8)
    assert adapt.plan(estimate, 320, "full", 32) == TrainPlan("full", 32, 320)
    assert adapt.plan(estimate, 200, "full", 32) == TrainPlan("full", 16, 160)
    assert adapt.plan(estimate, 80, "full", 32) == TrainPlan("full", 8, 80)
    # full@8 = 80 > 79; bias: 192, 96, 48 -> bias@8
    assert adapt.plan(estimate, 79, "full", 32) == TrainPlan("bias", 8, 48)
    # bias@8 = 48 > 40; head: 32 fits at the full batch
    assert adapt.plan(estimate, 40, "full", 32) == TrainPlan("head", 32, 32)
    assert adapt.plan(estimate, 7, "full", 32) is None  # head@8 = 8 > 7, and no lower than 8


def test_adapt_tries_in_the_documented_order():
    record = Recording()
    assert MemoryBudget("adapt", min_batch_size=8).plan(record, 7, "full", 32) is None
    assert record.calls == [
        ("full", 32), ("full", 16), ("full", 8),
        ("bias", 32), ("bias", 16), ("bias", 8),
        ("head", 32), ("head", 16), ("head", 8),
    ]


def test_adapt_never_goes_to_a_costlier_mode():
    record = Recording()
    assert MemoryBudget("adapt").plan(record, 1, "bias", 8) is None
    assert record.calls == [("bias", 8), ("head", 8)]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"policy": "lenient"}, "budget.policy"),
        ({"min_batch_size": 0}, "budget.min_batch_size"),
        ({"fallback": ["full", "turbo"]}, "budget.fallback"),
        ({"fallback": []}, "budget.fallback"),
    ],
)
def test_bad_budget_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        MemoryBudget(**kwargs)
    assert str(err.value).startswith(f"{key}: ") and "\n" not in str(err.value)


def test_unknown_mode_refused():
    with pytest.raises(ConfigError, match="finetune.mode"):
        MemoryBudget("adapt").plan(estimate, 100, "turbo", 8)


def pass_estimate(mode: str, batch_size: int, chunk: int) -> int:
    """A training step of 10 a sample, and a pass over the shard of 1 a sample."""
    return max(10 * batch_size, chunk)


def test_a_pass_too_large_gets_the_largest_halved_chunk_that_fits_under_either_policy():
    # head@8: the step needs 80, the 256-sample pass 256; 100 bytes fit a 64-sample pass.
    for policy in ("strict", "adapt"):
        plan = MemoryBudget(policy).plan(pass_estimate, 100, "head", 8)
        assert plan == TrainPlan("head", 8, 80, 64)
    plan = MemoryBudget("strict").plan(pass_estimate, 300, "head", 8)
    assert plan == TrainPlan("head", 8, 256, 256)
    # The chunk never goes below the batch: at 79 bytes, head@8 does not fit at all.
    assert MemoryBudget("strict").plan(pass_estimate, 79, "head", 8) is None


def test_fit_chunk_halves_past_a_shard_smaller_than_the_chunk():
    asked: list[int] = []

    def need(chunk: int) -> int:
        asked.append(chunk)
        return min(chunk, 100)  # a shard of 100 samples: chunks above it all cost 100

    assert fit_chunk(need, 64, 256, 8) == (64, 64)
    assert asked == [256, 128, 64]
    asked.clear()
    assert fit_chunk(need, 7, 256, 8) is None  # a pass of 8 needs 8: nothing fits
    assert asked == [256, 128, 64, 32, 16, 8]
