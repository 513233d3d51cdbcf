"""The fleet (fedsim.fleet.fleet) and its Hydra configs (conf/fleet)."""

import math
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from fedsim.errors import ConfigError
from fedsim.fleet.profile import DeviceProfile
from fedsim.fleet.fleet import Fleet, hashed_uniform, tier_counts

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def profile(name: str) -> DeviceProfile:
    return DeviceProfile(
        name=name, ram_mb=32.0, fp32_gflops=1.0, int8_gflops=2.0, int8_accelerator="none",
        uplink_mbps=1.0, downlink_mbps=1.0, latency_ms=0.0, energy_j_per_gflop=1.0,
        energy_j_per_gflop_int8=1.0, energy_j_per_mb=1.0, availability=(1.0,) * 24,
    )


def fleet(mix: dict, **kwargs) -> Fleet:
    return Fleet(tiers={t: profile(t) for t in mix}, mix=mix, **kwargs)


MIX = {"low_end": 0.5, "mid_range": 0.35, "flagship": 0.15}


def test_tier_shares_follow_the_mix():
    counts = tier_counts(fleet(MIX), range(20_000))
    assert sum(counts.values()) == 20_000
    for tier, share in MIX.items():
        assert abs(counts[tier] / 20_000 - share) < 0.02, (tier, counts)


def test_zero_share_tier_gets_nobody():
    counts = tier_counts(fleet({"a": 0.0, "b": 1.0, "c": 0.0}), range(2_000))
    assert counts == {"a": 0, "b": 2_000, "c": 0}


def test_tier_is_deterministic_and_depends_on_the_seed():
    a, b = fleet(MIX, seed=1), fleet(MIX, seed=1)
    ids = range(500)
    assert [a.tier_of(i) for i in ids] == [b.tier_of(i) for i in ids]
    c = fleet(MIX, seed=2)
    differ = sum(a.tier_of(i) != c.tier_of(i) for i in ids)
    assert differ > 100  # ~ 1 - (0.5^2 + 0.35^2 + 0.15^2) = 61 % of phones change tier
    assert a.profile_of(7) is a.tiers[a.tier_of(7)]


def test_a_million_phones_cost_no_per_client_memory():
    f = fleet(MIX, speed_sigma=0.5)
    assert f.tier_of(999_999) in MIX and f.speed_of(999_999) > 0
    for name, value in vars(f).items():
        size = len(value) if hasattr(value, "__len__") else 0
        assert size <= len(MIX), name  # only per-tier state
    assert sys.getsizeof(f.__dict__) < 10_000


def test_speed_sigma_zero_is_exactly_one():
    f = fleet(MIX, speed_sigma=0.0)
    assert {f.speed_of(i) for i in range(1000)} == {1.0}


def test_speed_is_lognormal_with_median_one():
    f = fleet(MIX, speed_sigma=0.5, seed=3)
    logs = sorted(math.log(f.speed_of(i)) for i in range(20_000))
    assert abs(logs[10_000]) < 0.02  # median 1
    mean = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs))
    assert abs(sd - 0.5) < 0.02
    assert f.speed_of(11) == fleet(MIX, speed_sigma=0.5, seed=3).speed_of(11)


def test_hashed_uniform_is_uniform_in_open_interval():
    draws = [hashed_uniform(0, 1, i) for i in range(20_000)]
    assert all(0 < u < 1 for u in draws)
    assert abs(sum(draws) / len(draws) - 0.5) < 0.01
    assert hashed_uniform(0, 1, 5) != hashed_uniform(1, 1, 5) != hashed_uniform(0, 2, 5)


@pytest.mark.parametrize(
    "mix",
    [
        {"low_end": 0.5, "mid_range": 0.35, "flagship": 0.1},  # sums to 0.95
        {"low_end": 1.2, "mid_range": -0.2, "flagship": 0.0},  # negative share
    ],
)
def test_bad_mix_is_one_line_naming_fleet_mix(mix):
    with pytest.raises(ConfigError) as err:
        Fleet(tiers={t: profile(t) for t in MIX}, mix=mix)
    assert str(err.value).startswith("fleet.mix: ") and "\n" not in str(err.value)


def test_mix_keys_must_equal_tiers():
    with pytest.raises(ConfigError, match="fleet.mix: keys"):
        Fleet(tiers={t: profile(t) for t in MIX}, mix={"low_end": 1.0})


def test_negative_speed_sigma_refused():
    with pytest.raises(ConfigError, match="fleet.speed_sigma"):
        fleet(MIX, speed_sigma=-1)


# --- Hydra -------------------------------------------------------------------------------------


def compose_fleet(overrides: list[str]):
    # Compose the fleet group alone (no primary config), so this test does not depend on the
    # rest of conf/config.yaml.
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(overrides=overrides)


@pytest.mark.parametrize(
    ("option", "mix"),
    [
        ("uniform_mid", {"mid_range": 1.0}),
        ("mixed", {"low_end": 0.5, "mid_range": 0.35, "flagship": 0.15}),
        ("stress_low_end", {"low_end": 0.7, "wearable": 0.2, "mid_range": 0.1}),
    ],
)
def test_fleet_yamls_compose_and_instantiate(option, mix):
    cfg = compose_fleet([f"+fleet={option}"])
    f = instantiate(cfg.fleet, seed=4)
    assert isinstance(f, Fleet) and f.seed == 4 and f.mix == mix
    assert set(f.tiers) == set(mix)
    for tier, p in f.tiers.items():
        assert isinstance(p, DeviceProfile) and p.name == tier


def test_mix_override():
    cfg = compose_fleet([
        "+fleet=mixed", "fleet.mix.low_end=0.7", "fleet.mix.mid_range=0.2",
        "fleet.mix.flagship=0.1", "fleet.tiers.low_end.ram_mb=48",
    ])
    f = instantiate(cfg.fleet, seed=0)
    assert f.mix == {"low_end": 0.7, "mid_range": 0.2, "flagship": 0.1}
    assert f.tiers["low_end"].ram_mb == 48
    counts = tier_counts(f, range(10_000))
    assert abs(counts["low_end"] / 10_000 - 0.7) < 0.02


def test_mix_override_not_summing_to_one_fails_at_instantiate():
    cfg = compose_fleet(["+fleet=mixed", "fleet.mix.low_end=0.7"])
    with pytest.raises(Exception) as err:  # Hydra wraps the ConfigError it raised
        instantiate(cfg.fleet, seed=0)
    cause = err.value if isinstance(err.value, ConfigError) else err.value.__cause__
    assert isinstance(cause, ConfigError) and str(cause).startswith("fleet.mix: ")
