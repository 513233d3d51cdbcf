"""Client algorithms (issue 23): SCAFFOLD and FedNova by hand, their state, memory and bytes.

The phone halves (``clients/algorithms``) and server halves (``fedsim/strategy/scaffold.py``,
``fednova.py``) are checked against the papers' formulas on numbers a person can verify; the
per-phone state is checked to survive a resume; the cost models to count the extra state.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from torch import nn

from clients.algorithms.base import LocalAlgorithm
from clients.algorithms.fednova import FedNova, normalised_steps
from clients.algorithms.scaffold import Scaffold, control_update
from clients.training import LocalRecipe, train_locally
from fedsim import keys
from fedsim.compression.phone_files import PhoneFiles
from fedsim.compression.wire import record_nbytes
from fedsim.errors import ConfigError
from fedsim.fleet.round_memory import ClientRoundMemory
from fedsim.run.preparation import prepare
from fedsim.run.simulation import device_simulation
from fedsim.strategy.decode_updates import DecodeUpdates
from fedsim.strategy.fednova import FedNovaServer, effective_steps
from fedsim.strategy.saved_state import StackState
from fedsim.strategy.scaffold import ScaffoldServer, updated_control
from clients.finetune import Full
from tests.helpers import (
    INPUT, WALL_FIELDS, FakeGrid, environment, initial, kill_after_rounds, make_cfg, one_round,
    parameters, prepared, resume_run, rounds, run_cli, start_run, tiny_model,
)

TINY = ["simulation.rounds=2", "simulation.population=20", "simulation.clients_per_round=4",
        "simulation.local.epochs=1"]


# --- SCAFFOLD, phone half ---------------------------------------------------------------------


def test_scaffold_option_two_by_hand() -> None:
    # c_i = 1, c = 0.5, x = 2, y = 1.4 after K = 3 steps of lr 0.1: 1 - 0.5 + 0.6 / 0.3 = 2.5
    assert float(control_update(np.float32(1), np.float32(0.5), np.float32(2), np.float32(1.4),
                                3, 0.1)) == pytest.approx(2.5)


def test_scaffold_client_update_on_a_linear_model_matches_the_paper() -> None:
    """Two full-batch steps of ``y <- y - lr (g(y) - c_i + c)``, then option II (Alg. 1)."""
    torch.manual_seed(0)
    model = nn.Linear(2, 2, bias=False)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 2.0]])
    y = torch.tensor([0, 1, 1, 0])
    start = model.weight.detach().clone()
    c = np.array([[0.5, -0.25], [0.0, 1.0]], np.float32)
    c_i = np.array([[0.25, 0.25], [-0.5, 0.0]], np.float32)
    lr, steps = 0.1, 2
    # The paper's local steps, by hand on the same weights.
    w = start.clone()
    for _ in range(steps):
        w.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(x @ w.T, y), w)
        w = (w - lr * (g - torch.from_numpy(c_i) + torch.from_numpy(c))).detach()
    algorithm = Scaffold()
    named = dict(model.named_parameters())
    correction = algorithm.correction({"weight": c}, {"weight": c_i}, named)
    recipe = LocalRecipe(epochs=steps, batch_size=4, lr=lr)
    result = train_locally(model, x, y, recipe, torch.Generator().manual_seed(0),
                           correction=correction)
    assert result.steps == steps
    torch.testing.assert_close(model.weight.detach(), w, rtol=1e-6, atol=1e-7)
    outcome = algorithm.finish(
        {"weight": start.numpy()}, {"weight": model.weight.detach().numpy()},
        {"weight": c}, {"weight": c_i}, steps, lr, 0.0,
    )
    expected = c_i - c + (start.numpy() - w.numpy()) / (steps * lr)  # c_i+ (option II)
    np.testing.assert_allclose(outcome.kept["weight"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outcome.sent["weight"], expected - c_i, rtol=1e-5, atol=1e-6)


def test_scaffold_corrects_outside_momentum_as_niid_bench_does() -> None:
    """With momentum 0.9 the optimiser steps on g alone (buffer b <- 0.9 b + g) and the weights
    then move by - lr (c - c_i): Flower's NIID-Bench ``ScaffoldOptimizer.step_custom``."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2, bias=False)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -1.0]])
    y = torch.tensor([0, 1, 1, 0])
    c = np.array([[0.5, -0.25], [0.0, 1.0]], np.float32)
    c_i = np.array([[0.25, 0.25], [-0.5, 0.0]], np.float32)
    lr, momentum, steps = 0.1, 0.9, 3
    w, buffer = model.weight.detach().clone(), None
    for _ in range(steps):
        w.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(x @ w.T, y), w)
        buffer = g if buffer is None else momentum * buffer + g
        w = (w - lr * buffer - lr * torch.from_numpy(c - c_i)).detach()
    correction = Scaffold().correction(
        {"weight": c}, {"weight": c_i}, dict(model.named_parameters())
    )
    recipe = LocalRecipe(epochs=steps, batch_size=4, lr=lr, momentum=momentum)
    train_locally(model, x, y, recipe, torch.Generator().manual_seed(0), correction=correction)
    torch.testing.assert_close(model.weight.detach(), w, rtol=1e-6, atol=1e-7)


def test_plain_sgd_adds_nothing() -> None:
    plain = LocalAlgorithm()
    assert plain.correction({}, {}, {}) is None
    outcome = plain.finish({}, {}, {}, {}, 3, 0.1, 0.9)
    assert outcome.sent == {} and outcome.kept is None and outcome.metrics == {}


# --- SCAFFOLD, server half and a whole in-process round -------------------------------------


def test_server_control_moves_by_the_sum_of_changes_over_the_population() -> None:
    # c + (|S| / N) mean(delta c) = 0 + (2 / 10) * 2 = 0.4
    new = updated_control({"w": np.zeros(1, np.float32)}, [{"w": np.ones(1)}, {"w": np.full(1, 3.0)}], 10)
    np.testing.assert_allclose(new["w"], [0.4])


def scaffold_stack(prep, model):
    names = parameters(model)
    return DecodeUpdates(ScaffoldServer(prep.strategy, 20, names), prep.update, names)


def test_scaffold_round_sends_c_keeps_c_i_and_counts_the_upload(tmp_path) -> None:
    prep = prepared(*TINY, "client_algorithm=scaffold")
    model, arrays = initial(prep)
    stack = scaffold_stack(prep, model)
    store = PhoneFiles(str(tmp_path / "state"))
    env = environment(prep, prep.update, algorithm=Scaffold(), phone_state=store)
    aggregated, messages, replies = one_round(env, stack, prep.sampler, arrays, 1)
    server = stack.strategy
    for m in messages:  # c = 0 over the parameters travels with the model
        c = m.content[keys.ALGORITHM]
        assert set(c.keys()) == parameters(model)
        assert all(not a.numpy().any() for a in c.values())
    deltas = [{k: a.numpy() for k, a in r.content[keys.ALGORITHM].items()} for r in replies]
    expected = updated_control({}, deltas, 20)
    for name, c in server.control.items():
        np.testing.assert_allclose(c, expected[name], rtol=1e-6, atol=1e-7)
    for reply, delta in zip(replies, deltas):
        client = int(reply.content[keys.METRICS][keys.CLIENT_ID])
        kept = store.get(client, 2)  # what round 2 will read: c_i+ = 0 + delta c
        assert set(kept) == set(delta) and all(np.array_equal(kept[k], delta[k]) for k in kept)
    assert aggregated is not None
    # The upload counts the control-variate change beside the encoded model (lossless weights:
    # the model's own bytes), so a full-model round uploads about twice as much.
    plain_env = environment(prep, prep.update)
    _, _, plain_replies = one_round(plain_env, DecodeUpdates(prep.strategy, prep.update,
                                                             parameters(model)),
                                    prep.sampler, arrays, 1)
    for reply, plain in zip(replies, plain_replies):
        extra = record_nbytes(reply.content[keys.ALGORITHM])
        sizes = [r.content[keys.METRICS][keys.PAYLOAD_BYTES] for r in (reply, plain)]
        assert sizes[0] - sizes[1] == extra > 0


def rounds_of_scaffold(prep, tmp_path, crash_after: int | None = None):
    """Two rounds; with ``crash_after=1`` round 2 runs, is lost (its phone files stay), and the
    run resumes from a round-1 checkpoint of the stack into a freshly built one."""
    model, arrays = initial(prep)
    store = PhoneFiles(str(tmp_path / "state"))
    env = environment(prep, prep.update, algorithm=Scaffold(), phone_state=store)
    stack = scaffold_stack(prep, model)
    arrays, _, _ = one_round(env, stack, prep.sampler, arrays, 1)
    if crash_after == 1:
        saved = StackState(stack.strategy).capture(arrays)
        store.prune(1)
        one_round(env, stack, prep.sampler, arrays, 2)  # lost in the crash
        stack = scaffold_stack(prep, model)
        StackState(stack.strategy).restore(*saved)
    arrays, _, _ = one_round(env, stack, prep.sampler, arrays, 2)
    return arrays, stack.strategy.control


def test_scaffold_state_survives_a_resume_bit_identically(tmp_path) -> None:
    prep = prepared(*TINY, "client_algorithm=scaffold")
    whole, whole_c = rounds_of_scaffold(prep, tmp_path / "whole")
    resumed, resumed_c = rounds_of_scaffold(prep, tmp_path / "resumed", crash_after=1)
    for name in whole.keys():
        assert np.array_equal(whole[name].numpy(), resumed[name].numpy()), name
    assert all(np.array_equal(whole_c[k], resumed_c[k]) for k in whole_c)


# --- FedNova ----------------------------------------------------------------------------------


def test_fednova_normalised_steps_by_hand() -> None:
    assert normalised_steps(4, 0.0) == 4.0
    assert normalised_steps(2, 0.5) == pytest.approx(1.0 + 1.5)  # (1 - .5) / .5 + (1 - .25) / .5
    assert FedNova().finish({}, {}, {}, {}, 3, 0.1, 0.0).metrics == {keys.NORMALISED_STEPS: 3.0}


def test_fednova_aggregation_matches_a_hand_computation() -> None:
    """x = 0; phone A: y = [1, 2], 1 example, a = 1; phone B: y = [2, 2], 3 examples, a = 4.
    p = [1/4, 3/4], tau_eff = 1/4 + 3 = 3.25, step = 3.25 (1/4 [1, 2] + 3/4 [2, 2] / 4)
    = 3.25 [0.625, 0.875] = [2.03125, 2.84375] (plain FedAvg: [1.75, 2])."""
    assert effective_steps([1, 3], [1, 4]) == 3.25
    server = FedNovaServer(FedAvg(), parameter_names=frozenset({"w"}))
    start = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    template = list(server.configure_train(1, start, ConfigRecord(), FakeGrid([1, 2])))[0]
    replies = []
    for cid, (weights, n, a) in enumerate([([1, 2], 1, 1.0), ([2, 2], 3, 4.0)]):
        content = RecordDict({
            "arrays": ArrayRecord({"w": Array(np.asarray(weights, np.float32))}),
            keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: n, keys.NORMALISED_STEPS: a,
                                        keys.CLIENT_ID: cid}),
        })
        replies.append(Message(content, reply_to=template))
    aggregated, _ = server.aggregate_train(1, replies)
    np.testing.assert_allclose(aggregated["w"].numpy(), [2.03125, 2.84375], rtol=1e-6)


# --- the cost models count the extra state --------------------------------------------------


def test_memory_counts_two_fp32_copies_of_the_trained_parameters_for_scaffold() -> None:
    model = tiny_model()
    plain = ClientRoundMemory(model, INPUT).estimate(Full(), 8, 8, 20)
    scaffold = ClientRoundMemory(model, INPUT, held_copies=Scaffold.memory_copies).estimate(
        Full(), 8, 8, 20)
    trainable = sum(p.numel() for p in model.parameters()) * 4
    assert scaffold.stage("train").held - plain.stage("train").held == 2 * trainable
    assert scaffold.peak - plain.peak == 2 * trainable


def test_scaffold_doubles_the_download_of_the_parameters() -> None:
    plain, scaffold = (prepared(*TINY, f"client_algorithm={a}") for a in ("sgd", "scaffold"))
    model, arrays = initial(plain)
    params = sum(p.numel() * 4 for p in model.parameters())
    down = [device_simulation(p, model, arrays).model_bytes for p in (plain, scaffold)]
    assert down[1] - down[0] == params


# --- the option, the stack, the refusals ----------------------------------------------------


def test_default_is_plain_sgd_with_no_server_half() -> None:
    prep = prepared(*TINY)
    assert prep.algorithm.plain and prep.algorithm.name == "sgd"


@pytest.mark.parametrize("name", ["scaffold", "fednova"])
def test_each_option_builds_its_server_half_around_the_users_strategy(name: str) -> None:
    prep = prepared(*TINY, f"client_algorithm={name}")
    assert not prep.algorithm.plain
    model, _ = initial(prep)
    built = prep.algorithm.server(prep.strategy, parameter_names=parameters(model))
    assert built.strategy is prep.strategy
    assert isinstance(built, {"scaffold": ScaffoldServer, "fednova": FedNovaServer}[name])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["privacy=local_dp"], "DP and secure aggregation do not cover"),
        (["update.kind=gradient"], "update.kind=gradient takes none"),
    ],
)
def test_what_a_client_algorithm_cannot_run_beside_is_refused(overrides, match) -> None:
    with pytest.raises(ConfigError, match=match):
        prepare(make_cfg(*TINY, "client_algorithm=scaffold", *overrides))


# --- end to end through Flower and Ray, killed and resumed ------------------------------------


@pytest.mark.slow  # starts Ray
@pytest.mark.parametrize("name", ["scaffold", "fednova"])
def test_killed_and_resumed_run_equals_an_uninterrupted_one(name: str, tmp_path) -> None:
    overrides = ["simulation.rounds=3", f"client_algorithm={name}"]
    run_cli(tmp_path / "whole", *overrides)
    proc = start_run(tmp_path / "killed", *overrides)
    kill_after_rounds(tmp_path / "killed", 1, proc)
    resume_run(tmp_path / "killed")
    strip = lambda records: [{k: v for k, v in r.items() if k not in WALL_FIELDS} for r in records]
    assert strip(rounds(tmp_path / "killed")) == strip(rounds(tmp_path / "whole"))
    for key, tensor in torch.load(tmp_path / "whole" / "model.pt").items():
        assert torch.equal(tensor, torch.load(tmp_path / "killed" / "model.pt")[key]), key
    assert not (tmp_path / "whole" / "phone_state").exists()  # a finished run leaves none
