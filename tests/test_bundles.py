"""Bundles (issue 25): many phones per message, the same replies and numbers as one each."""

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict
from flwr.serverapp.strategy import FedAvg

from clients.bundles import answer_bundle
from clients.client_app import train_reply
from fedsim import keys
from fedsim.bundle_wire import is_bundle, pack, unpack
from fedsim.compression.codecs import NoCompression
from fedsim.server.bundles import Bundles, balance, idle_fraction, round_robin, unbundle
from fedsim.server.rounds import tally
from fedsim.strategy.decode_updates import DecodeUpdates
from fedsim.strategy.virtual_clients import VirtualClients, client_id_of
from fedsim.updates import UpdateRule
from tests.helpers import (
    WALL_FIELDS, FakeGrid, environment, initial, make_cfg, parameters, prepared, run_cli,
)
from tests.helpers import rounds as read_rounds

RULE = UpdateRule("weights", NoCompression(), server_lr=1.0, error_feedback=False)


# --- the wire format ---------------------------------------------------------------------------


def test_a_shared_record_travels_once_and_each_phone_gets_its_own_records() -> None:
    model = ArrayRecord({"w": Array(np.ones(3, np.float32))})
    phones = [
        RecordDict({"arrays": model, "config": ConfigRecord({keys.CLIENT_ID: cid})})
        for cid in (7, 3, 9)
    ]
    bundle = pack(phones)
    assert is_bundle(bundle) and not is_bundle(phones[0])
    assert len(bundle.array_records) == 1  # the model once, not three times
    back = unpack(bundle)
    assert [int(p["config"][keys.CLIENT_ID]) for p in back] == [7, 3, 9]
    assert all(p["arrays"] is bundle.array_records[next(iter(bundle.array_records))] for p in back)


def test_an_error_entry_round_trips() -> None:
    (entry,) = unpack(pack([Error(code=2, reason="ValueError: no")]))
    assert isinstance(entry, Error) and (entry.code, entry.reason) == (2, "ValueError: no")


# --- balance -----------------------------------------------------------------------------------


def test_balance_keeps_every_phone_once_and_evens_the_load() -> None:
    costs = [9.0, 1.0, 1.0, 1.0, 8.0, 1.0, 1.0, 2.0]
    groups = balance(costs, 2)
    assert sorted(i for g in groups for i in g) == list(range(len(costs)))
    assert sorted(sum(costs[i] for i in g) for g in groups) == [12.0, 12.0]
    assert idle_fraction(groups, costs) == 0.0
    assert idle_fraction(round_robin(len(costs), 2), costs) > 0.3  # 20 vs 4: slot 2 waits


def test_fewer_phones_than_slots_gives_one_bundle_per_phone() -> None:
    assert balance([1.0, 2.0], 5) == [[1], [0]]


# --- one round in-process: bundles against per-phone messages ----------------------------------


def round_messages(prep, global_arrays, faults: dict[int, dict] | None = None):
    """The round-1 per-phone messages VirtualClients sends, with ``faults`` (phone -> entries)."""
    faults = faults or {}
    wrapper = VirtualClients(
        DecodeUpdates(FedAvg(), RULE, frozenset()), prep.sampler,
        instructions=[lambda r, cid, cohort, config: faults.get(cid, {})],
    )
    messages = list(wrapper.configure_train(1, global_arrays, ConfigRecord(), FakeGrid([1, 2])))
    return wrapper, messages


def per_phone(env, messages: list[Message]) -> list[Message]:
    replies = []
    for m in messages:
        m.metadata.__dict__["_message_id"] = f"m{client_id_of(m)}"
        try:
            replies.append(train_reply(env, m))
        except Exception as err:  # what Flower's engine makes of a ClientApp exception
            replies.append(Message(Error(code=2, reason=str(err)), reply_to=m))
    return replies


def bundled(env, messages: list[Message], slots=(1, 2)) -> list[Message]:
    bundles = Bundles.of(messages, list(slots), lambda m: float(client_id_of(m) % 3 + 1))
    answers = []
    for i, bundle in enumerate(bundles.messages):
        bundle.metadata.__dict__["_message_id"] = f"b{i}"  # what the grid's push sets
        answers.append(answer_bundle(bundle, lambda phone: train_reply(env, phone)))
    return bundles.unbundled(answers).replies


def test_a_bundled_round_aggregates_bit_identically_to_per_phone_messages() -> None:
    prep = prepared("simulation.population=10", "simulation.clients_per_round=5")
    model, global_arrays = initial(prep)
    env = environment(prep, RULE)
    results = {}
    for name, send in (("per_phone", per_phone), ("bundled", bundled)):
        wrapper, messages = round_messages(prep, global_arrays)
        replies = send(env, messages)
        aggregated, metrics = wrapper.aggregate_train(1, replies)
        phones = sorted(
            (dict(r.content[keys.METRICS]) for r in replies), key=lambda m: m[keys.CLIENT_ID]
        )
        timed = (keys.COMPUTE_S, keys.HANDLE_S)  # wall seconds: the only figures that may differ
        results[name] = (aggregated, [{k: v for k, v in m.items() if k not in timed}
                                      for m in phones], metrics)
    (a, phones_a, metrics_a), (b, phones_b, metrics_b) = results["per_phone"], results["bundled"]
    assert a.keys() == b.keys()
    for tensor in a:
        assert np.array_equal(a[tensor].numpy(), b[tensor].numpy()), tensor
    assert len(phones_a) == 5 and phones_a == phones_b
    same = {k: v for k, v in metrics_a.items() if k not in timed}
    assert same == {k: v for k, v in metrics_b.items() if k not in timed}


def test_one_phones_exception_fails_only_that_phone() -> None:
    prep = prepared("simulation.population=10", "simulation.clients_per_round=4")
    _, global_arrays = initial(prep)
    cohort = prep.sampler.cohort(1).tolist()
    failing = cohort[1]
    _, messages = round_messages(prep, global_arrays, {failing: {keys.FAULT: "error"}})
    replies = bundled(environment(prep, RULE), messages, slots=(1,))  # all four in one bundle
    assert len(replies) == 4
    errors = [r for r in replies if r.has_error()]
    assert len(errors) == 1 and errors[0].error.code == 2
    assert "InjectedFault" in errors[0].error.reason.splitlines()[0]
    outcome = tally(messages, replies)
    assert outcome.failures == {"client_exception": 1}
    done = sorted(int(r.content[keys.METRICS][keys.CLIENT_ID]) for r in outcome.completed)
    assert done == sorted(set(cohort) - {failing})


def test_per_phone_timeouts_still_apply_inside_a_bundle() -> None:
    prep = prepared("simulation.population=10", "simulation.clients_per_round=3")
    _, global_arrays = initial(prep)
    cohort = prep.sampler.cohort(1).tolist()
    slow = cohort[0]
    _, messages = round_messages(
        prep, global_arrays, {slow: {keys.FAULT: "slow", keys.SLOW_FOR_S: 1.5}}
    )
    env = environment(prep, RULE)
    bundled(env, messages, slots=(1,))  # a first call sets up the process (model, data)
    _, messages = round_messages(
        prep, global_arrays, {slow: {keys.FAULT: "slow", keys.SLOW_FOR_S: 1.5}}
    )
    replies = bundled(env, messages, slots=(1,))
    # The bundle took > 1.5 s, but only the slow phone's own handling time counts against it.
    outcome = tally(messages, replies, client_timeout_s=1.0)
    assert outcome.failures == {"timeout": 1}
    done = sorted(int(r.content[keys.METRICS][keys.CLIENT_ID]) for r in outcome.completed)
    assert done == sorted(set(cohort) - {slow})


def test_a_bundle_that_fails_as_a_whole_fails_each_of_its_phones() -> None:
    phones = [
        Message(RecordDict({"c": ConfigRecord({keys.CLIENT_ID: i})}), dst_node_id=1,
                message_type="train")
        for i in range(3)
    ]
    bundle = Message(pack([p.content for p in phones]), dst_node_id=1, message_type="train")
    bundle.metadata.__dict__["_message_id"] = "b"
    failed = Message(Error(code=0, reason="ActorDiedError: gone"), reply_to=bundle)
    replies = unbundle(failed, phones)
    assert [r.error.reason for r in replies] == ["ActorDiedError: gone"] * 3
    assert tally(phones, replies).failures == {"actor_died": 3}


def test_bundles_default_to_one_slot_per_parallel_actor() -> None:
    from fedsim.config import parse_simulation

    cfg = make_cfg("simulation.backend.num_cpus=2")  # bundles are the default
    assert parse_simulation(cfg).num_slots == 2
    per_phone = make_cfg("simulation.bundle=false", "simulation.backend.num_cpus=2")
    assert parse_simulation(per_phone).num_slots == 10
    big = make_cfg("simulation.bundle=true", "simulation.backend.num_cpus=2",
                   "simulation.population=10000", "simulation.clients_per_round=1000")
    assert parse_simulation(big).num_slots == 20  # bundles of at most BUNDLE_PHONES = 50


# --- whole runs ---------------------------------------------------------------------------------


@pytest.mark.slow  # starts Ray, twice
def test_bundled_run_is_bit_identical_to_per_phone_messages(tmp_path: Path) -> None:
    runs = {}
    for bundle in ("false", "true"):
        run_cli(tmp_path / bundle, "simulation.rounds=3", f"simulation.bundle={bundle}")
        runs[bundle] = tmp_path / bundle
    strip = [
        [{k: v for k, v in r.items() if k not in WALL_FIELDS} for r in read_rounds(runs[b])]
        for b in ("false", "true")
    ]
    assert strip[0] == strip[1]
    per_phone, bundles = (torch.load(runs[b] / "model.pt") for b in ("false", "true"))
    assert per_phone.keys() == bundles.keys()
    for key, tensor in per_phone.items():
        assert torch.equal(tensor, bundles[key]), key
