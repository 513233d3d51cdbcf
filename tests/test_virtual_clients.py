"""The VirtualClients wrapper: any Flower strategy, phones as virtual ids, slots as nodes."""

import random

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg, FedProx

from fedsim import keys
from fedsim.server.sampler import CohortSampler
from fedsim.strategy.virtual_clients import VirtualClients, client_id_of
from tests.helpers import FakeGrid


def arrays(value: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.full(3, value, dtype=np.float32))})


def test_one_message_per_cohort_member_round_robin_over_slots() -> None:
    sampler = CohortSampler(population=1000, clients_per_round=5, seed=0)
    wrapper = VirtualClients(FedAvg(), sampler)
    grid = FakeGrid([30, 10, 20])  # 3 slots for a cohort of 5
    messages = list(wrapper.configure_train(1, arrays(0.0), ConfigRecord(), grid))
    assert [client_id_of(m) for m in messages] == sampler.cohort(1).tolist()
    assert [m.metadata.dst_node_id for m in messages] == [10, 20, 30, 10, 20]
    assert all(m.metadata.message_type == MessageType.TRAIN for m in messages)


def test_messages_do_not_depend_on_node_ids() -> None:
    sampler = CohortSampler(population=50, clients_per_round=4, seed=3)

    def contents(node_ids: list[int]) -> list[dict]:
        msgs = VirtualClients(FedProx(proximal_mu=0.1), sampler).configure_train(
            2, arrays(1.0), ConfigRecord(), FakeGrid(node_ids)
        )
        return [dict(m.content["config"]) for m in msgs]

    rng = random.Random(0)
    first = contents([rng.getrandbits(63) for _ in range(4)])
    second = contents([rng.getrandbits(63) for _ in range(4)])
    assert first == second
    assert first[0][keys.PROXIMAL_MU] == 0.1  # the inner strategy's train config survives
    assert first[0][keys.SERVER_ROUND] == 2


def test_callers_config_is_not_mutated() -> None:
    config = ConfigRecord({"a": 1})
    VirtualClients(FedAvg(), CohortSampler(10, 2, 0)).configure_train(
        1, arrays(0.0), config, FakeGrid([1, 2])
    )
    assert dict(config) == {"a": 1}


def test_more_placeholders_than_slots_never_blocks() -> None:
    # FedAvg waits for min_available_nodes=2 connected nodes; one slot must still work.
    wrapper = VirtualClients(FedAvg(min_available_nodes=2), CohortSampler(10, 3, 0))
    messages = list(wrapper.configure_train(1, arrays(0.0), ConfigRecord(), FakeGrid([99])))
    assert len(messages) == 3 and {m.metadata.dst_node_id for m in messages} == {99}


def test_empty_poisson_cohort_sends_nothing() -> None:
    sampler = CohortSampler(population=1000, clients_per_round=1, seed=0, scheme="poisson")
    empty_round = next(r for r in range(1, 200) if len(sampler.cohort(r)) == 0)
    wrapper = VirtualClients(FedAvg(), sampler)
    assert list(wrapper.configure_train(empty_round, arrays(0), ConfigRecord(), FakeGrid([1]))) == []


def reply(to: Message, client_id: int, value: float, n: int) -> Message:
    content = RecordDict(
        {
            "arrays": arrays(value),
            keys.METRICS: MetricRecord(
                {keys.NUM_EXAMPLES: n, keys.CLIENT_ID: client_id, keys.TRAIN_LOSS: 0.0}
            ),
        }
    )
    to.metadata.__dict__["_message_id"] = f"m{client_id}"
    return Message(content, reply_to=to)


def test_aggregate_is_weighted_and_independent_of_arrival_order() -> None:
    sampler = CohortSampler(population=10, clients_per_round=3, seed=0)
    wrapper = VirtualClients(FedAvg(), sampler)
    msgs = list(wrapper.configure_train(1, arrays(0.0), ConfigRecord(), FakeGrid([1, 2, 3])))
    # Values chosen so float summation order matters: 0.1, 0.2, 0.3 with weights 1, 2, 3
    # FedAvg gives (0.1*1 + 0.2*2 + 0.3*3) / 6 = 1.4 / 6 = 0.2333...
    replies = [reply(m, client_id_of(m), v, n) for m, v, n in zip(msgs, (0.1, 0.2, 0.3), (1, 2, 3))]
    results = []
    for perm in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        agg, _ = wrapper.aggregate_train(1, [replies[i] for i in perm])
        results.append(agg["w"].numpy())
    np.testing.assert_allclose(results[0], np.full(3, 1.4 / 6), rtol=1e-6)
    assert all(np.array_equal(results[0], r) for r in results[1:])  # bit-identical


def test_wrapped_strategy_with_a_cohort_of_one_does_not_wait_for_nodes() -> None:
    # FedAvg waits (forever) for min_available_nodes=2; a decoding wrapper in between must not
    # hide that minimum from VirtualClients, or a one-phone cohort would block the run.
    import threading

    from fedsim.compression.codecs import NoCompression
    from fedsim.strategy.decode_updates import DecodeUpdates
    from fedsim.strategy.wrapper import innermost
    from fedsim.updates import UpdateRule

    inner = FedAvg(min_available_nodes=2)
    stack = DecodeUpdates(inner, UpdateRule("delta", NoCompression(), 1.0, False), frozenset())
    assert innermost(stack) is inner
    wrapper = VirtualClients(stack, CohortSampler(10, 1, 0))
    out: list = []
    worker = threading.Thread(
        target=lambda: out.extend(wrapper.configure_train(1, arrays(0.0), ConfigRecord(), FakeGrid([7]))),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=20)
    assert len(out) == 1 and out[0].metadata.dst_node_id == 7
