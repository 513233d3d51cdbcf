"""Device profiles (fedsim.fleet.profile, conf/device) and availability models (fedsim.fleet.availability)."""

from dataclasses import replace
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fedsim.fleet.availability import AlwaysOnline, Diurnal, TraceAvailability
from fedsim.errors import ConfigError
from fedsim.fleet.fleet import Fleet
from fedsim.fleet.profile import DeviceProfile

CONF = Path(__file__).resolve().parents[1] / "conf"
TIERS = ("low_end", "mid_range", "flagship", "wearable")


def profile(**changes) -> DeviceProfile:
    fields = dict(
        name="toy", ram_mb=32.0, fp32_gflops=1.0, int8_gflops=2.0, int8_accelerator="none",
        uplink_mbps=10.0, downlink_mbps=10.0, latency_ms=100.0, energy_j_per_gflop=1.0,
        energy_j_per_gflop_int8=0.5, energy_j_per_mb=2.0, availability=[0.5] * 24,
    )
    fields.update(changes)
    return DeviceProfile(**fields)


def test_profile_converts_availability_list_to_tuple():
    p = profile(availability=OmegaConf.create([0.25] * 24))
    assert p.availability == (0.25,) * 24
    hash(p)  # frozen and hashable


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ram_mb", 0), ("ram_mb", -1), ("fp32_gflops", 0), ("int8_gflops", -2.0),
        ("uplink_mbps", 0), ("downlink_mbps", float("nan")), ("latency_ms", -1),
        ("energy_j_per_gflop", -0.1), ("energy_j_per_gflop_int8", -1), ("energy_j_per_mb", -1),
        ("int8_accelerator", "tpu"), ("availability", [0.5] * 23), ("availability", [1.5] * 24),
        ("availability", [-0.1] * 24), ("availability", "night"),
    ],
)
def test_impossible_profile_numbers_name_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        profile(**{field: value})
    message = str(err.value)
    name = profile().name
    assert message.startswith(f"fleet.tiers.{name}.{field} (conf/device/{name}.yaml): ")
    assert "\n" not in message


def test_a_tier_mode_no_phone_knows_is_refused_by_the_fleet():
    # The profile holds a mode's name; the fleet it is built into checks it (clients.finetune).
    with pytest.raises(ConfigError) as err:
        Fleet({"toy": profile(finetune="turbo")}, {"toy": 1.0})
    assert str(err.value) == (
        "fleet.tiers.toy.finetune (conf/device/toy.yaml): no mode 'turbo' "
        "(choose from full, head, bias, frozen_stats, qat, int8_head)"
    )


def test_zero_latency_and_energy_are_allowed():
    p = profile(latency_ms=0, energy_j_per_gflop=0, energy_j_per_mb=0, finetune="head")
    assert p.finetune == "head"


@pytest.mark.parametrize("tier", TIERS)
def test_device_yamls_instantiate(tier):
    p = instantiate(OmegaConf.load(CONF / "device" / f"{tier}.yaml"))
    assert isinstance(p, DeviceProfile) and p.name == tier
    assert len(p.availability) == 24
    assert max(p.availability[0:6]) > max(p.availability[9:17])  # busier at night than by day


def test_device_ram_orders_the_tiers():
    ram = {t: OmegaConf.load(CONF / "device" / f"{t}.yaml").ram_mb for t in TIERS}
    assert ram == {"wearable": 16, "low_end": 32, "mid_range": 128, "flagship": 256}


# --- availability ---------------------------------------------------------------------------


def test_always_online():
    assert all(AlwaysOnline().is_online(cid, profile(), 1e6, 3, 0) for cid in range(100))


def test_diurnal_all_zero_and_all_one():
    never, always = profile(availability=[0.0] * 24), profile(availability=[1.0] * 24)
    model = Diurnal(start_hour=0)
    assert not any(model.is_online(cid, never, 0.0, 1, 0) for cid in range(1000))
    assert all(model.is_online(cid, always, 0.0, 1, 0) for cid in range(1000))


def test_diurnal_reads_the_current_local_hour():
    # Online only 02:00-03:00. Start at 23:00: 3 h in it is 02:00, 2 h in it is 01:00.
    hours = [0.0] * 24
    hours[2] = 1.0
    p, model = profile(availability=hours), Diurnal(start_hour=23)
    assert model.is_online(7, p, 3 * 3600.0, 1, 0)
    assert model.is_online(7, p, 3 * 3600.0 + 3599.0, 1, 0)
    assert not model.is_online(7, p, 2 * 3600.0, 1, 0)
    assert not model.is_online(7, p, 4 * 3600.0, 1, 0)


def test_diurnal_half_share_and_determinism():
    p, model = profile(availability=[0.5] * 24), Diurnal(start_hour=12)
    online = [model.is_online(cid, p, 0.0, 1, 0) for cid in range(20_000)]
    assert abs(sum(online) / 20_000 - 0.5) < 0.02
    assert online == [model.is_online(cid, p, 0.0, 1, 0) for cid in range(20_000)]
    other_round = [model.is_online(cid, p, 0.0, 2, 0) for cid in range(20_000)]
    assert online != other_round  # a fresh draw per round


def test_diurnal_refuses_bad_start_hour():
    with pytest.raises(ConfigError, match="availability.start_hour"):
        Diurnal(start_hour=24)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return str(path)


def test_trace_windows(tmp_path):
    trace = TraceAvailability(write(
        tmp_path, "client_id,start_s,end_s\n3,0,100\n3,200,300\n3,250,400\n5,50,60\n\n"
    ))
    p = profile()
    online = lambda cid, t: trace.is_online(cid, p, t, 1, 0)  # noqa: E731
    assert online(3, 0) and online(3, 99.5) and not online(3, 100)  # half-open
    assert not online(3, 150) and online(3, 200) and online(3, 350) and not online(3, 400)
    assert online(5, 55) and not online(5, 45)
    assert not online(4, 55)  # absent from the file: never online


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("client,start,end\n1,0,1\n", "line 1"),
        ("", "line 1"),
        ("client_id,start_s,end_s\n1,0,10\n2,zero,10\n", "line 3"),
        ("client_id,start_s,end_s\n1,20,10\n", "line 2"),
        ("client_id,start_s,end_s\n1,0\n", "line 2"),
        ("client_id,start_s,end_s\n-1,0,10\n", "line 2"),
    ],
)
def test_bad_trace_is_one_line_naming_file_and_line(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        TraceAvailability(path)
    message = str(err.value)
    assert message.startswith("availability.path: ") and path in message and where in message
    assert "\n" not in message


def test_missing_trace_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        TraceAvailability(str(tmp_path / "absent.csv"))


def test_availability_yamls_instantiate(tmp_path):
    sim = {"simulation": {"start_hour": 6.0}}
    diurnal = OmegaConf.merge(sim, {"a": OmegaConf.load(CONF / "availability" / "diurnal.yaml")})
    assert instantiate(diurnal.a).start_hour == 6.0
    always = OmegaConf.load(CONF / "availability" / "always.yaml")
    assert isinstance(instantiate(always), AlwaysOnline)
    trace = OmegaConf.load(CONF / "availability" / "trace.yaml")
    assert OmegaConf.is_missing(trace, "path")
    trace.path = write(tmp_path, "client_id,start_s,end_s\n1,0,10\n")
    assert instantiate(trace).is_online(1, replace(profile()), 5.0, 1, 0)
