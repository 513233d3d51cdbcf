"""Partial sums (issue 25): each slot sends its phones' mean model; FedAvg gets the same mean."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message

from clients.bundles import answer_summed
from clients.client_app import summand, train_phone
from clients.partial_sums import PartialSum
from fedsim import keys
from fedsim.errors import ConfigError
from fedsim.server.bundles import Bundles
from fedsim.server.rounds import tally
from fedsim.strategy.virtual_clients import client_id_of
from tests.helpers import environment, initial, make_cfg, prepared
from tests.test_bundles import RULE, per_phone, round_messages

SUMS = {keys.PARTIAL_SUMS: True}


def test_the_partial_mean_weighs_phones_by_examples_and_fills_what_they_kept() -> None:
    received = {"w": np.array([1.0, 1.0], np.float32), "b": np.array([2.0], np.float32)}
    total = PartialSum()
    # Phone 8 (1 example) uploads w only; phone 4 (3 examples) uploads w and b.
    total.add(received, {"w": np.array([5.0, 9.0], np.float32)}, 1, client_id=8)
    total.add(
        received, {"w": np.array([1.0, -3.0], np.float32), "b": np.array([6.0], np.float32)}, 3,
        client_id=4,
    )
    mean = total.mean()
    # w: (1 * 5 + 3 * 1) / 4 = 2, (1 * 9 + 3 * -3) / 4 = 0; b: (1 * 2 (kept) + 3 * 6) / 4 = 5.
    assert mean["w"].tolist() == [2.0, 0.0] and mean["b"].tolist() == [5.0]
    assert list(mean) == ["w", "b"] and mean["w"].dtype == np.float32
    assert (total.weight, total.phones, total.first_client) == (4.0, 2, 4)
    with pytest.raises(ValueError, match="empty"):
        PartialSum().mean()


def summed(env, messages: list[Message], slots=(1, 2), timeout_s: float | None = None):
    """The round's phones as summed bundles: every phone's reply and the slots' partials."""
    options = SUMS if timeout_s is None else {**SUMS, keys.CLIENT_TIMEOUT_S: timeout_s}
    bundles = Bundles.of(messages, list(slots), lambda m: float(client_id_of(m) % 3 + 1), options)
    answers = []
    for i, bundle in enumerate(bundles.messages):
        bundle.metadata.__dict__["_message_id"] = f"b{i}"  # what the grid's push sets
        answers.append(answer_summed(bundle, lambda phone: summand(env, train_phone(env, phone))))
    return bundles.unbundled(answers)


def without_times(replies: list[Message]) -> list[dict]:
    timed = (keys.COMPUTE_S, keys.HANDLE_S)  # wall seconds: the only figures that may differ
    return sorted(
        ({k: v for k, v in r.content[keys.METRICS].items() if k not in timed}
         for r in replies if not r.has_error()),
        key=lambda m: m[keys.CLIENT_ID],
    )


def aggregates(prep, global_arrays, env, faults=None, timeout_s=None):
    """FedAvg of the per-phone replies and of the partial sums, and both exchanges."""
    wrapper, messages = round_messages(prep, global_arrays, faults)
    replies = per_phone(env, messages)
    completed = tally(messages, replies, timeout_s).completed
    by_phone, _ = wrapper.aggregate_train(1, completed)
    wrapper, messages = round_messages(prep, global_arrays, faults)
    exchanged = summed(env, messages, timeout_s=timeout_s)
    by_slot, _ = wrapper.aggregate_train(1, exchanged.partials)
    return by_phone, by_slot, replies, exchanged


def assert_close(a, b) -> None:
    assert list(a.keys()) == list(b.keys())
    for name in a:
        x, y = a[name].numpy(), b[name].numpy()
        assert x.dtype == y.dtype == np.float32, name
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=name)


def test_fedavg_of_the_partial_sums_is_fedavg_of_the_phones() -> None:
    prep = prepared("simulation.population=10", "simulation.clients_per_round=5")
    model, global_arrays = initial(prep)
    env = environment(prep, RULE)
    by_phone, by_slot, replies, exchanged = aggregates(prep, global_arrays, env)
    assert_close(by_phone, by_slot)
    moved = max(
        float(np.abs(by_phone[n].numpy() - global_arrays[n].numpy()).max()) for n in by_phone
    )
    assert moved > 1e-3  # the round trained: the agreement is not two copies of the start
    # Two slots, two partials, holding the five phones and their examples between them.
    partials = [p.content[keys.METRICS] for p in exchanged.partials]
    assert sorted(int(p[keys.PHONES]) for p in partials) == [2, 3]
    examples = sum(int(r.content[keys.METRICS][keys.NUM_EXAMPLES]) for r in replies)
    assert sum(int(p[keys.NUM_EXAMPLES]) for p in partials) == examples
    # Every phone's metrics still travel, equal to its per-phone reply's; no phone's model does.
    assert without_times(exchanged.replies) == without_times(replies)
    assert all(not r.content.array_records for r in exchanged.replies)


def test_a_failed_or_overrunning_phone_is_left_out_of_its_slots_sum() -> None:
    prep = prepared("simulation.population=10", "simulation.clients_per_round=5")
    _, global_arrays = initial(prep)
    env = environment(prep, RULE)
    summed(env, round_messages(prep, global_arrays)[1])  # set up the process (model, data)
    cohort = prep.sampler.cohort(1).tolist()
    faults = {
        cohort[0]: {keys.FAULT: "error"},
        cohort[1]: {keys.FAULT: "slow", keys.SLOW_FOR_S: 1.5},
    }
    by_phone, by_slot, replies, exchanged = aggregates(
        prep, global_arrays, env, faults, timeout_s=1.0
    )
    assert_close(by_phone, by_slot)  # both without the two phones
    _, messages = round_messages(prep, global_arrays, faults)
    outcome = tally(messages, exchanged.replies, client_timeout_s=1.0)
    assert outcome.failures == {"client_exception": 1, "timeout": 1}
    assert sum(int(p.content[keys.METRICS][keys.PHONES]) for p in exchanged.partials) == 3


@pytest.mark.parametrize(
    "overrides, refused",
    [
        (["strategy=fedmedian"], "FedMedian does not aggregate by the example-weighted mean"),
        (["strategy=krum"], "Krum does not aggregate"),
        (["strategy=qfedavg"], "QFedAvg does not aggregate"),
        # A legacy flwr.server.strategy class, named as the user wrote it.
        (["strategy._target_=flwr.server.strategy.FedAvg"], "FedAvg does not aggregate"),
        (["privacy=central_dp", "norm=group"], "DP clips and counts each phone's update"),
        (["distill.where=server_ensemble"], "FedDF"),
        (["client_algorithm=scaffold"], "client_algorithm scaffold sends each phone's own"),
        (["simulation.deadline_s=60"], "drop phones after they trained"),
        (["simulation.overcommit=0.3"], "drop phones after they trained"),
    ],
)
def test_partial_sums_are_refused_where_the_server_needs_each_update(
    overrides: list[str], refused: str
) -> None:
    with pytest.raises(ConfigError, match=refused) as err:
        prepared("simulation.bundle=true", "simulation.partial_sums=true", *overrides)
    assert "\n" not in str(err.value) and str(err.value).startswith("simulation.partial_sums")


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi"])
def test_weighted_mean_strategies_take_partial_sums(strategy: str) -> None:
    prep = prepared("simulation.bundle=true", "simulation.partial_sums=true", f"strategy={strategy}")
    assert prep.settings.partial_sums


def test_partial_sums_need_bundles() -> None:
    from fedsim.config import parse_simulation

    with pytest.raises(ConfigError, match="needs simulation.bundle=true"):
        parse_simulation(make_cfg("simulation.bundle=false", "simulation.partial_sums=true"))
