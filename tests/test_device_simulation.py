"""The server's device simulation: memory admission, the simulated clock, stragglers."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from clients.finetune import Bias, Full, Head
from fedsim import keys
from fedsim.fleet.admission import MIB
from fedsim.fleet.availability import AlwaysOnline
from fedsim.fleet.budget import MemoryBudget
from fedsim.fleet.device_simulation import DeviceSimulation
from fedsim.fleet.fleet import Fleet
from fedsim.fleet.flops import train_cost
from fedsim.fleet.memory import estimate_train_memory
from fedsim.fleet.settlement import keep_first_finishers
from fedsim.report.run_log import RoundRecord
from fedsim.report.summary import device_report
from tests.helpers import INPUT, SAMPLES, profile, sent, tiny_model


def simulation(
    policy: str, deadline_s=None, needed=None, small_ram=None, min_batch=2
) -> DeviceSimulation:
    model = tiny_model()
    full = estimate_train_memory(model, INPUT, 8, Full()).total
    # "small" phones have 10 % less RAM than full fine-tuning at batch 8 needs; "big" 10 % more.
    tiers = {
        "small": profile("small", small_ram or 0.9 * full / MIB),
        "big": profile("big", 1.1 * full / MIB),
    }
    fleet = Fleet(tiers, {"small": 0.5, "big": 0.5}, speed_sigma=0.0, seed=3)
    return DeviceSimulation(
        fleet=fleet, availability=AlwaysOnline(), budget=MemoryBudget(policy, min_batch, ("full", "bias", "head")),
        finetune=Full(), model=model, input_shape=INPUT, batch_size=8, epochs=2,
        samples=lambda cid: SAMPLES, model_bytes=40_000, seed=3, deadline_s=deadline_s,
        start_hour=0.0, needed=needed,
    )


def reply(to: Message, cid: int, payload_bytes: int) -> Message:
    metrics = MetricRecord({keys.CLIENT_ID: cid, keys.PAYLOAD_BYTES: payload_bytes})
    return Message(RecordDict({keys.METRICS: metrics}), reply_to=to)


def admit_all(sim: DeviceSimulation, ids: range) -> dict[int, dict | None]:
    cohort = np.array(list(ids))
    config = ConfigRecord({keys.LOCAL_EPOCHS: 2, keys.BATCH_SIZE: 8})
    return {cid: sim.instructions(1, cid, cohort, config) for cid in ids}


def test_strict_drops_exactly_the_phones_whose_estimate_exceeds_their_ram() -> None:
    sim = simulation("strict")
    sent_to = admit_all(sim, range(40))
    for cid, extra in sent_to.items():
        if sim.fleet.tier_of(cid) == "small":
            assert extra is None and sim._admissions[cid].drop == "oom"
        else:
            assert extra[keys.FINETUNE_MODE] == "full" and extra[keys.BATCH_SIZE] == 8
    small = sum(sim.fleet.tier_of(c) == "small" for c in range(40))
    assert 0 < small < 40
    settled = sim.settle(1, [], [])
    assert settled.dropped == {"oom": small}
    assert settled.tiers["small"]["dropped"] == {"oom": small}


def test_adapt_halves_the_batch_then_falls_back_to_a_cheaper_mode() -> None:
    model = tiny_model()
    full4 = estimate_train_memory(model, INPUT, 4, Full()).total
    # Full at batch 4 fits a small phone (RAM between full@4 and full@8): adapt halves the batch.
    sim = simulation("adapt", small_ram=1.01 * full4 / MIB)
    plans = admit_all(sim, range(40))
    small = [c for c in range(40) if sim.fleet.tier_of(c) == "small"]
    assert {(plans[c][keys.FINETUNE_MODE], plans[c][keys.BATCH_SIZE]) for c in small} == {("full", 4)}
    # No halving below 8, and RAM only for head-only fine-tuning: adapt skips bias.
    head8 = estimate_train_memory(model, INPUT, 8, Head()).total
    assert head8 < estimate_train_memory(model, INPUT, 8, Bias()).total
    sim = simulation("adapt", small_ram=1.01 * head8 / MIB, min_batch=8)
    plans = admit_all(sim, range(40))
    assert {(plans[c][keys.FINETUNE_MODE], plans[c][keys.BATCH_SIZE]) for c in small} == {("head", 8)}


def test_round_time_is_the_slowest_kept_phone_by_the_clock_formula() -> None:
    sim = simulation("adapt", small_ram=1e6)  # everyone fits: all train in full at batch 8
    admit_all(sim, range(4))
    messages = [sent(c) for c in range(4)]
    payload = {0: 10_000, 1: 20_000, 2: 30_000, 3: 40_000}
    settled = sim.settle(1, messages, [reply(m, c, payload[c]) for c, m in enumerate(messages)])
    flops = train_cost(tiny_model(), INPUT, Full(), samples=SAMPLES, epochs=2)
    p = sim.fleet.profile_of(3)
    # download 40 kB at 4 Mbit/s = 0.08 s, + 50 ms latency; compute at 1 MFLOP/s;
    # upload 40 kB at 1 Mbit/s = 0.32 s, + 50 ms.
    expected = (0.05 + 40_000 * 8 / 4e6) + flops.fp32_flops / 1e6 + (0.05 + 40_000 * 8 / 1e6)
    assert settled.costs[3].total_s == pytest.approx(expected)
    assert settled.round_s == pytest.approx(expected) and sim.sim_time_s == pytest.approx(expected)
    energy = 4 * flops.fp32_flops / 1e9 * p.energy_j_per_gflop + sum(
        (40_000 + b) / 1e6 * p.energy_j_per_mb for b in payload.values()
    )
    assert settled.energy_j == pytest.approx(energy)
    assert [int(r.content[keys.METRICS][keys.CLIENT_ID]) for r in settled.kept] == [0, 1, 2, 3]


def test_deadline_drops_late_phones_and_the_round_lasts_until_the_deadline() -> None:
    sim = simulation("adapt", small_ram=1e6)
    flops = train_cost(tiny_model(), INPUT, Full(), samples=SAMPLES, epochs=2)
    before_upload = 0.05 + 40_000 * 8 / 4e6 + flops.fp32_flops / 1e6
    # Enough time for a 10 kB upload (0.13 s) but not a 40 kB one (0.37 s).
    deadline = before_upload + 0.2
    sim.deadline_s = deadline
    admit_all(sim, range(2))
    messages = [sent(0), sent(1)]
    settled = sim.settle(1, messages, [reply(messages[0], 0, 10_000), reply(messages[1], 1, 40_000)])
    assert settled.dropped == {"straggler": 1}
    assert [int(r.content[keys.METRICS][keys.CLIENT_ID]) for r in settled.kept] == [0]
    assert settled.round_s == deadline


def test_hopeless_phones_are_not_sent_at_all() -> None:
    sim = simulation("adapt", small_ram=1e6, deadline_s=0.01)  # less than the download alone
    assert set(admit_all(sim, range(5)).values()) == {None}
    assert sim.settle(1, [], []).dropped == {"straggler": 5}


def test_overcommit_keeps_the_first_finishers() -> None:
    assert keep_first_finishers([(3.0, 7), (1.0, 9), (1.0, 2), (5.0, 1)], 2) == ({2, 9}, {7, 1})
    assert keep_first_finishers([(3.0, 7)], None) == ({7}, set())


def test_device_report_sums_rounds_and_finds_the_time_to_target() -> None:
    def record(rnd, acc, t, tiers):
        return RoundRecord(
            round=rnd, accuracy=acc, loss=0.0, train_loss=0.0, sampled=2, completed=1, failed=0,
            dropped={"oom": 1}, sim_time_s=t, energy_j=1.5, tiers=tiers,
        )

    tiers = {"low": {"sampled": 2, "trained": {"head@8": 1}, "dropped": {"oom": 1}}}
    records = [record(1, 0.4, 10.0, tiers), record(2, 0.7, 30.0, tiers), record(3, 0.6, 45.0, tiers)]
    report = device_report(records, target_accuracy=0.65)
    assert report["sim_time_s"] == 45.0 and report["energy_j"] == 4.5
    assert report["time_to_target_s"] == 30.0 and report["round_to_target"] == 2
    assert report["dropped"] == {"oom": 3}
    assert report["tiers"]["low"] == {"sampled": 6, "trained": {"head@8": 3}, "dropped": {"oom": 3}}
    assert device_report(records, None)["time_to_target_s"] is None
