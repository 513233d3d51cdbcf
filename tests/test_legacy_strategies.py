"""Legacy Flower strategies (``flwr.server.strategy``) run by ``_target_`` over the cohort.

Stock legacy FedAvg and Message-API FedAvg train the same model; a user's legacy subclass sees
exactly the sampled cohort's ``FitRes``; what fedsim cannot honour is refused in one line.
"""

import numpy as np
import pytest
from flwr.server.strategy import FedAvg as LegacyFedAvg

from flwr.app import ConfigRecord

from clients.client_app import train_reply
from fedsim.errors import ConfigError
from fedsim.run.preparation import prepare
from fedsim.strategy.decode_updates import DecodeUpdates
from fedsim.strategy.legacy import CohortClientManager, LegacyStrategy
from fedsim.strategy.saved_state import StackState
from fedsim.strategy.virtual_clients import VirtualClients, client_id_of
from tests.helpers import (
    FakeGrid, environment, initial, make_cfg, one_round, parameters, prepared, rounds, run_cli,
)

TINY = ["simulation.rounds=2", "simulation.population=20", "simulation.clients_per_round=4",
        "simulation.local.epochs=1"]


class RecordingFedAvg(LegacyFedAvg):
    """A user's legacy subclass overriding ``aggregate_fit``: records what it was handed."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[int, list[str], list[int]]] = []

    def aggregate_fit(self, server_round, results, failures):
        self.calls.append(
            (server_round, [p.cid for p, _ in results], [r.num_examples for _, r in results])
        )
        return super().aggregate_fit(server_round, results, failures)


def two_rounds(prep):
    """Two in-process rounds of ``prep``'s strategy over real ClientApp replies."""
    model, arrays = initial(prep)
    stack = DecodeUpdates(prep.strategy, prep.update, parameters(model))
    env = environment(prep, prep.update)
    for server_round in (1, 2):
        arrays, _, replies = one_round(env, stack, prep.sampler, arrays, server_round)
    return arrays


def test_legacy_and_message_api_fedavg_give_the_same_model() -> None:
    """Both run side by side for two rounds; each round both configure, the phones train once
    (on the Message-API messages) and both aggregate the same replies.

    The two FedAvgs round their weighted means differently (float32 products vs float64 ones:
    ~1e-7), and the tiny from-scratch student amplifies a 1e-7 change of its weights into
    1e-2 after one more round of local SGD, so the strategies are compared on the same replies.
    """
    modern = prepared(*TINY, "strategy=fedavg")
    legacy = prepared(*TINY, "strategy._target_=flwr.server.strategy.FedAvg")
    assert isinstance(legacy.strategy, LegacyStrategy)
    model, arrays = initial(modern)
    names = parameters(model)
    stacks = [
        VirtualClients(DecodeUpdates(p.strategy, p.update, names), p.sampler)
        for p in (modern, legacy)
    ]
    env = environment(modern, modern.update)
    for server_round in (1, 2):
        sent = [
            list(s.configure_train(server_round, arrays, ConfigRecord(), FakeGrid([1, 2])))
            for s in stacks
        ]
        # The same phones get the same model and the same instructions.
        assert [client_id_of(m) for m in sent[0]] == [client_id_of(m) for m in sent[1]]
        for a, b in zip(*sent):
            assert a.content["arrays"] is b.content["arrays"]
            assert dict(a.content["config"]) == dict(b.content["config"])
        replies = []
        for m in sent[0]:
            m.metadata.__dict__["_message_id"] = f"m{client_id_of(m)}"
            replies.append(train_reply(env, m))
        (a, _), (b, _) = (s.aggregate_train(server_round, replies) for s in stacks)
        assert list(a.keys()) == list(b.keys())
        for name in a.keys():
            x, y = a[name].numpy(), b[name].numpy()
            assert x.dtype == y.dtype, name
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6, err_msg=name)
        arrays = a


def test_a_legacy_subclass_sees_exactly_the_sampled_cohort() -> None:
    prep = prepared(*TINY, "strategy._target_=tests.test_legacy_strategies.RecordingFedAvg")
    two_rounds(prep)
    user = prep.strategy.strategy
    assert [round_ for round_, _, _ in user.calls] == [1, 2]
    partition = prep.shards.load()[1]
    for server_round, cids, examples in user.calls:
        cohort = sorted(int(c) for c in prep.sampler.cohort(server_round))
        assert cids == [str(c) for c in cohort]  # every phone, in id order
        assert examples == [partition.size(c) for c in cohort]


def test_sampling_returns_the_cohort_whatever_the_strategy_asks() -> None:
    manager = CohortClientManager([7, 3, 11])
    assert [p.cid for p in manager.sample(num_clients=1)] == ["3", "7", "11"]
    assert manager.num_available() == 3


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("DifferentialPrivacyServerSideFixedClipping", "a legacy DP wrapper"),
        ("DPFedAvgFixed", "a legacy DP wrapper"),
        ("FedAdam", "initial_parameters"),
        ("FedXgbBagging", "XGBoost"),
    ],
)
def test_what_fedsim_cannot_honour_is_refused_in_one_line(target: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        prepare(make_cfg(*TINY, f"strategy._target_=flwr.server.strategy.{target}"))
    message = str(err.value)
    assert "\n" not in message and message.startswith("strategy._target_: fedsim cannot run")
    assert why in message


def test_legacy_fedavgm_with_server_momentum_is_refused() -> None:
    with pytest.raises(ConfigError, match="server momentum steps from initial_parameters"):
        prepare(make_cfg(*TINY, "strategy._target_=flwr.server.strategy.FedAvgM",
                         "+strategy.server_momentum=0.9"))


@pytest.mark.slow  # starts Ray
def test_a_legacy_user_strategy_runs_by_target_on_the_cohort_every_round(tmp_path) -> None:
    run_cli(tmp_path, "strategy._target_=examples.legacy_strategy.CappedFedAvg")
    prep = prepared(*TINY)
    records = rounds(tmp_path)
    assert len(records) == 2
    for record in records:
        assert record["clients"] == sorted(int(c) for c in prep.sampler.cohort(record["round"]))


def test_a_stateless_legacy_strategy_checkpoints_as_data() -> None:
    prep = prepared(*TINY, "strategy._target_=flwr.server.strategy.FedAvg")
    state = StackState(prep.strategy)  # the adapter and the legacy FedAvg under it
    arrays = two_rounds(prep)
    described, saved = state.capture(arrays)
    assert described["unsaved"] is None and saved == {}
    assert [layer["class"] for layer in described["layers"]] == [
        "fedsim.strategy.legacy.LegacyStrategy", "flwr.server.strategy.fedavg.FedAvg"
    ]
