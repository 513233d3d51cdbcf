"""The simulated clock (fedsim.fleet.clock), checked against numbers worked out by hand."""

import pytest

from fedsim.fleet.clock import ClientCost, client_round_cost, hour_of, round_duration
from fedsim.fleet.profile import DeviceProfile

# 10 Mbit/s both ways, 100 ms latency, 1 GFLOP/s fp32, 4 GFLOP/s int8.
TOY = DeviceProfile(
    name="toy", ram_mb=64.0, fp32_gflops=1.0, int8_gflops=4.0, int8_accelerator="dsp",
    uplink_mbps=10.0, downlink_mbps=10.0, latency_ms=100.0, energy_j_per_gflop=0.5,
    energy_j_per_gflop_int8=0.1, energy_j_per_mb=2.0, availability=(1.0,) * 24,
)


def test_client_round_cost_matches_the_formula():
    # 2.5e6 bytes = 20 Mbit: 2 s at 10 Mbit/s, + 0.1 s latency.
    # 3 GFLOP fp32 at 1 GFLOP/s = 3 s; 8 GFLOP int8 at 4 GFLOP/s = 2 s.
    # 1.25e6 bytes up = 10 Mbit: 1 s + 0.1 s.
    # Energy: 3 x 0.5 + 8 x 0.1 + 3.75 MB x 2 = 1.5 + 0.8 + 7.5 = 9.8 J.
    cost = client_round_cost(TOY, 1.0, 3e9, 8e9, 2_500_000, 1_250_000)
    assert cost.download_s == pytest.approx(2.1)
    assert cost.compute_s == pytest.approx(5.0)
    assert cost.upload_s == pytest.approx(1.1)
    assert cost.total_s == pytest.approx(8.2)
    assert cost.energy_j == pytest.approx(9.8)


def test_speed_scales_compute_only():
    slow = client_round_cost(TOY, 0.5, 3e9, 8e9, 2_500_000, 1_250_000)
    assert slow.compute_s == pytest.approx(10.0)
    assert slow.download_s == pytest.approx(2.1) and slow.upload_s == pytest.approx(1.1)
    assert slow.energy_j == pytest.approx(9.8)  # same work, same joules


def test_nothing_to_do_costs_two_latencies():
    cost = client_round_cost(TOY, 1.0, 0, 0, 0, 0)
    assert cost == ClientCost(download_s=0.1, compute_s=0.0, upload_s=0.1, energy_j=0.0)


@pytest.mark.parametrize(
    ("totals", "deadline", "straggler", "expected"),
    [
        ([3.0, 5.0, 4.0], None, False, 5.0),  # slowest kept phone
        ([3.0, 5.0], 10.0, False, 5.0),  # everyone in time: no need to wait for the deadline
        ([3.0, 5.0], 10.0, True, 10.0),  # someone missed it: the server waited until then
        ([], None, False, 0.0),  # nothing ran, no deadline
        ([], 10.0, False, 10.0),  # nobody finished: the server waited until the deadline
    ],
)
def test_round_duration(totals, deadline, straggler, expected):
    assert round_duration(totals, deadline, straggler) == expected


@pytest.mark.parametrize(
    ("sim_time_s", "start_hour", "expected"),
    [(0.0, 22.0, 22.0), (3 * 3600.0, 22.0, 1.0), (5400.0, 0.0, 1.5), (86_400.0 * 3, 7.0, 7.0)],
)
def test_hour_of(sim_time_s, start_hour, expected):
    assert hour_of(sim_time_s, start_hour) == pytest.approx(expected)
