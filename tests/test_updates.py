"""Update kinds, payloads, decoding and attacks, driven in-process (client function + wrappers).

No Ray: the ClientApp's ``train_reply`` answers the messages ``VirtualClients`` builds, and the
server stack decodes and aggregates them, exactly as in a run.
"""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg
from torch import nn

from clients.client_app import ClientEnvironment, train_reply
from clients.training import LocalRecipe
from fedsim import keys
from fedsim.attacks.byzantine import GaussianUpdate, LabelFlip, Scale, SignFlip, malicious_clients
from fedsim.attacks.threat import ThreatModel
from fedsim.compression.codecs import Int8Quantization, NoCompression, TopK
from fedsim.compression.error_feedback import ResidualFiles
from fedsim.compression.wire import from_records, record_nbytes
from fedsim.models.state import exchangeable_state
from fedsim.server.rounds import traffic
from fedsim.strategy.decode_updates import DecodeUpdates
from fedsim.updates import UpdateRule, kind_code
from tests.helpers import environment, initial, one_round, parameters, prepared


def test_fedsgd_round_equals_one_centralised_step_on_the_union() -> None:
    # Full participation (4 of 4 clients), FedAvg's sample-count weighting, no BatchNorm,
    # no dropout: sum_i (n_i / N) * (w - lr * g_i) = w - lr * grad of the mean loss on the union.
    prep = prepared(
        "norm=none", "model.dropout=0.0", "simulation.population=4",
        "simulation.clients_per_round=4", "partition.quantity_skew=1.0",
    )
    lr = 0.1
    rule = UpdateRule("gradient", NoCompression(), server_lr=lr, error_feedback=False)
    model, global_arrays = initial(prep)
    stack = DecodeUpdates(FedAvg(), rule, parameters(model))
    aggregated, _, replies = one_round(environment(prep, rule), stack, prep.sampler, global_arrays)
    sizes = [int(r.content[keys.METRICS][keys.NUM_EXAMPLES]) for r in replies]
    assert len(set(sizes)) > 1  # unequal shards, so the weighting matters

    x = np.concatenate([prep.shards(i)[0] for i in range(4)])
    y = np.concatenate([prep.shards(i)[1] for i in range(4)])
    model.train()
    F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    with torch.no_grad():
        for name, p in model.named_parameters():
            expected = (p - lr * p.grad).numpy()
            np.testing.assert_allclose(aggregated[name].numpy(), expected, atol=1e-5, rtol=0)


def test_delta_and_weights_give_the_same_fedavg_aggregate() -> None:
    prep = prepared("simulation.population=6", "simulation.clients_per_round=3")
    model, global_arrays = initial(prep)
    results = {}
    for kind in ("weights", "delta"):
        rule = UpdateRule(kind, NoCompression(), server_lr=1.0, error_feedback=False)
        stack = DecodeUpdates(FedAvg(), rule, parameters(model))
        results[kind], _, _ = one_round(environment(prep, rule), stack, prep.sampler, global_arrays)
    for name in global_arrays:  # BatchNorm running statistics included
        np.testing.assert_allclose(
            results["weights"][name].numpy(), results["delta"][name].numpy(), atol=1e-6, rtol=0
        )


def test_bytes_are_the_encoded_payload_size() -> None:
    prep = prepared("simulation.population=4", "simulation.clients_per_round=2")
    model, global_arrays = initial(prep)
    rule = UpdateRule("delta", Int8Quantization(), server_lr=1.0, error_feedback=False)
    stack = DecodeUpdates(FedAvg(), rule, parameters(model))
    _, messages, replies = one_round(environment(prep, rule), stack, prep.sampler, global_arrays)
    tensors = [a.numpy() for a in global_arrays.values()]
    # int8, one scale per tensor: n bytes of levels + 4 bytes of scale + 8 bytes per dimension.
    int8_bytes = sum(t.size + 4 + 8 * t.ndim for t in tensors)
    float_bytes = sum(4 * t.size + 8 * t.ndim for t in tensors)
    for reply in replies:
        metrics = reply.content[keys.METRICS]
        payload = next(iter(reply.content.array_records.values()))
        encoded, kind = from_records(payload, reply.content[keys.PAYLOAD])
        assert kind == "delta" and metrics[keys.UPDATE_KIND] == kind_code("delta")
        assert metrics[keys.PAYLOAD_BYTES] == encoded.nbytes == int8_bytes
        assert {q.dtype for q in encoded.arrays.values()} == {np.dtype(np.int8), np.dtype(np.float32)}
    assert record_nbytes(global_arrays) == float_bytes
    assert traffic(messages, replies) == (2 * int8_bytes, 2 * float_bytes)
    assert 3.9 < float_bytes / int8_bytes < 4.0


def test_lossless_weights_reach_the_strategy_as_the_arrays_that_arrived() -> None:
    # Plain weights need no decoding: DecodeUpdates hands on the very bytes each reply carried
    # (no copy), and they hold exactly the weights the client trained to.
    prep = prepared("simulation.population=4", "simulation.clients_per_round=2")
    model, global_arrays = initial(prep)
    rule = UpdateRule("weights", NoCompression(), server_lr=1.0, error_feedback=False)
    seen = []

    class Recording(FedAvg):
        def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
            seen.extend(replies)
            return super().aggregate_train(server_round, replies)

    stack = DecodeUpdates(Recording(), rule, parameters(model))
    _, _, replies = one_round(environment(prep, rule), stack, prep.sampler, global_arrays)
    by_client = {int(r.content[keys.METRICS][keys.CLIENT_ID]): r for r in replies}
    for decoded in seen:
        reply = by_client[int(decoded.content[keys.METRICS][keys.CLIENT_ID])]
        sent = next(iter(reply.content.array_records.values()))
        weights = next(iter(decoded.content.array_records.values()))
        assert list(weights) == list(global_arrays)  # the model's names, in the model's order
        packed = sent[keys.PACKED].data  # the one buffer the phone packed its tensors into
        buffer = np.frombuffer(packed, np.uint8)
        assert all(np.shares_memory(weights[name]._view, buffer) for name in weights)
        encoded, _ = from_records(sent, reply.content[keys.PAYLOAD])
        for name, values in NoCompression().decode(encoded).items():
            np.testing.assert_array_equal(weights[name].numpy(), values)


def test_decoding_leaves_the_callers_replies_untouched() -> None:
    prep = prepared("simulation.population=4", "simulation.clients_per_round=2")
    model, global_arrays = initial(prep)
    rule = UpdateRule("delta", TopK(0.1), server_lr=1.0, error_feedback=False)
    stack = DecodeUpdates(FedAvg(), rule, parameters(model))
    _, _, replies = one_round(environment(prep, rule), stack, prep.sampler, global_arrays)
    assert all(keys.PAYLOAD in r.content for r in replies)
    assert all(
        any(str(k).endswith("/indices") for k in r.content[keys.PAYLOAD][keys.PART_NAMES])
        for r in replies
    )


def test_error_feedback_residual_follows_the_client_across_participations(tmp_path) -> None:
    # Two participations of the same clients: decoded uploads + the stored residual equal the
    # sum of the true updates (nothing lost), and the residual lives in one file per client.
    prep = prepared("simulation.population=2", "simulation.clients_per_round=2", "norm=group")
    model, global_arrays = initial(prep)
    store = ResidualFiles(str(tmp_path / "residuals"))
    topk = UpdateRule("gradient", TopK(0.05), server_lr=1.0, error_feedback=True)
    exact = UpdateRule("gradient", NoCompression(), server_lr=1.0, error_feedback=False)
    sent = {0: [], 1: []}
    true = {0: [], 1: []}
    for server_round in (1, 2):
        for rule, log in ((topk, sent), (exact, true)):
            env = environment(prep, rule, residuals=store if rule is topk else None)
            _, _, replies = one_round(
                env, DecodeUpdates(FedAvg(), rule, parameters(model)), prep.sampler,
                global_arrays, server_round,
            )
            for r in replies:
                cid = int(r.content[keys.METRICS][keys.CLIENT_ID])
                encoded, _ = from_records(
                    next(iter(r.content.array_records.values())), r.content[keys.PAYLOAD]
                )
                log[cid].append(rule.compression.decode(encoded))
    assert sorted(p.name for p in (tmp_path / "residuals").iterdir()) == [
        "0.r1.npz", "0.r2.npz", "1.r1.npz", "1.r2.npz",
    ]
    store.prune(checkpoint_round=2)  # round 1's files are superseded once round 2 is settled
    assert sorted(p.name for p in (tmp_path / "residuals").iterdir()) == ["0.r2.npz", "1.r2.npz"]
    for cid in (0, 1):
        residual = store.get(cid, server_round=3)
        for name in global_arrays:
            kept = sum(d[name] for d in sent[cid]) + residual[name]
            np.testing.assert_allclose(kept, sum(d[name] for d in true[cid]), atol=1e-6)
            flat = sent[cid][1][name].reshape(-1)
            k = max(1, int(np.ceil(round(0.05 * flat.size, 9))))
            assert np.count_nonzero(flat) <= k  # exactly k kept (a kept entry may be 0)


def test_residuals_are_read_from_before_the_round_so_a_resumed_round_redoes_the_same(
    tmp_path,
) -> None:
    store = ResidualFiles(str(tmp_path))
    store.put(7, 1, {"w": np.ones(2)})
    store.put(7, 3, {"w": np.full(2, 3.0)})  # written before a crash; the checkpoint was at 2
    np.testing.assert_array_equal(store.get(7, server_round=3)["w"], [1.0, 1.0])  # redo of 3
    np.testing.assert_array_equal(store.get(7, server_round=4)["w"], [3.0, 3.0])
    assert store.get(7, server_round=1) is None and store.get(8, server_round=5) is None
    store.prune(checkpoint_round=2)  # round 1 is still the newest settled one: kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["7.r1.npz", "7.r3.npz"]


# --- A malicious client's upload, hand-checked on a 2-weight model --------------------------


@dataclass(frozen=True)
class TinyNet:
    """Linear(1 -> 2) without bias, weights zero: logits (0, 0) on any input."""

    def __call__(self) -> nn.Module:
        net = nn.Linear(1, 2, bias=False)
        nn.init.zeros_(net.weight)
        return net


def one_sample(client_id: int) -> tuple[np.ndarray, np.ndarray]:
    return np.ones((1, 1), np.float32), np.zeros(1, np.int64)  # x = 1, label 0


def tiny_upload(behaviour, kind: str = "delta") -> np.ndarray:
    """Client 0's decoded upload after one SGD step (lr 1) on x = 1, y = 0."""
    rule = UpdateRule(kind, NoCompression(), server_lr=1.0, error_feedback=False)
    threat = ThreatModel(behaviour, malicious_clients(1, 1.0, 0)) if behaviour else None
    env = ClientEnvironment(
        shards=one_sample, build_model=TinyNet(), recipe=LocalRecipe(1, 1, 1.0), seed=0,
        threads=1, update=rule, threat=threat,
    )
    zero = ArrayRecord(exchangeable_state(TinyNet()()))
    config = ConfigRecord({keys.CLIENT_ID: 0, keys.SERVER_ROUND: 1})
    message = Message(
        RecordDict({"arrays": zero, "config": config}), dst_node_id=1, message_type="train"
    )
    message.metadata.__dict__["_message_id"] = "m0"
    reply = train_reply(env, message)
    encoded, _ = from_records(reply.content["arrays"], reply.content[keys.PAYLOAD])
    return NoCompression().decode(encoded)["weight"]


def test_honest_tiny_update_is_the_hand_computed_sgd_step() -> None:
    # softmax(0, 0) = (.5, .5); dCE/dlogits = p - onehot(0) = (-.5, .5); dW = that * x.
    # One step with lr 1 from W = 0: W = (.5, -.5), so the delta is (.5, -.5).
    np.testing.assert_allclose(tiny_upload(None), [[0.5], [-0.5]])
    np.testing.assert_allclose(tiny_upload(None, "weights"), [[0.5], [-0.5]])
    np.testing.assert_allclose(tiny_upload(None, "gradient"), [[-0.5], [0.5]])


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (SignFlip(), [[-0.5], [0.5]]),
        (Scale(3.0), [[1.5], [-1.5]]),
        # label 0 -> 1: p - onehot(1) = (.5, -.5), so the step moves W to (-.5, .5).
        (LabelFlip(num_classes=2), [[-0.5], [0.5]]),
    ],
)
def test_a_malicious_clients_upload_is_what_the_attack_says(behaviour, expected) -> None:
    np.testing.assert_allclose(tiny_upload(behaviour), expected)
    # A weights upload carries received + attacked delta: received is 0 here.
    np.testing.assert_allclose(tiny_upload(behaviour, "weights"), expected)


def test_gaussian_attack_keeps_the_honest_norm() -> None:
    upload = tiny_upload(GaussianUpdate())
    assert np.linalg.norm(upload) == pytest.approx(np.sqrt(0.5), rel=1e-6)
    assert not np.allclose(upload, [[0.5], [-0.5]])


def test_optimiser_strategies_keep_the_model_float32() -> None:
    # FedAdam computes in float64; the decoder casts the aggregate back, so downloads (and
    # bytes_down) stay float32 round after round.
    prep = prepared("simulation.population=4", "simulation.clients_per_round=2")
    model, global_arrays = initial(prep)
    rule = UpdateRule("delta", NoCompression(), server_lr=1.0, error_feedback=False)
    stack = DecodeUpdates(FedAdam(eta=0.01, eta_l=0.05), rule, parameters(model))
    aggregated, _, _ = one_round(environment(prep, rule), stack, prep.sampler, global_arrays)
    assert {a.dtype for a in aggregated.values()} == {"float32"}
    assert record_nbytes(aggregated) == record_nbytes(global_arrays)
    assert not np.array_equal(aggregated["classifier.1.weight"].numpy(), global_arrays["classifier.1.weight"].numpy())
