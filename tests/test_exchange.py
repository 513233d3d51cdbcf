"""Phones upload what their mode trained; the server completes it, keeps the rest, noises it."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg
from torch import nn

from clients.client_app import ClientEnvironment, train_reply
from clients.finetune import mode_named
from clients.training import LocalRecipe, train_in_mode
from fedsim import keys
from fedsim.compression.codecs import Int8Quantization, NoCompression
from fedsim.compression.error_feedback import compress_with_feedback
from fedsim.compression.wire import from_records, to_records
from fedsim.fleet.budget import MemoryBudget
from fedsim.fleet.exchange import plan_exchange, possible_modes
from fedsim.fleet.fleet import Fleet
from fedsim.models.mobilenet_v2 import mobilenet_v2
from fedsim.models.state import exchangeable_state
from fedsim.server.rounds import traffic
from fedsim.strategy.central_dp import CentralDP
from fedsim.strategy.decode_updates import DecodeUpdates
from fedsim.updates import DELTA, WEIGHTS, UpdateRule, reconstruct
from tests.helpers import FakeGrid, profile, tiny_model

HEAD = {"classifier.weight", "classifier.bias"}


def small_net() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)),
            classifier=nn.Linear(2, 3),
        )
    )


def test_each_mode_uploads_what_it_trains_and_the_statistics_it_moves() -> None:
    net = small_net()
    bn_stats = {"features.1.running_mean", "features.1.running_var"}
    every = set(exchangeable_state(net))
    assert len(every) == 8  # conv w/b, bn w/b/mean/var, linear w/b
    assert mode_named("full").uploaded_names(net) == every
    assert mode_named("qat").uploaded_names(net) == every
    assert mode_named("head").uploaded_names(net) == HEAD
    assert mode_named("int8_head").uploaded_names(net) == HEAD
    assert mode_named("bias").uploaded_names(net) == HEAD | bn_stats | {
        "features.0.bias", "features.1.weight", "features.1.bias",
    }


@pytest.mark.parametrize("name", ["full", "head", "bias", "qat"])
def test_training_changes_nothing_outside_the_declared_upload(name) -> None:
    torch.manual_seed(0)
    model = tiny_model()  # BatchNorm in the backbone, a linear head
    before = {k: v.clone() for k, v in exchangeable_state(model).items()}
    x, y = torch.randn(24, 1, 8, 8), torch.arange(24) % 10
    mode = mode_named(name, cache_features=False)  # the tiny backbone pools itself
    train_in_mode(model, x, y, LocalRecipe(1, 8, 0.1), torch.Generator().manual_seed(0), mode)
    after = exchangeable_state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    uploaded = mode.uploaded_names(model)
    assert changed <= uploaded
    assert HEAD <= changed  # the head trains in every mode
    if name != "head":  # BatchNorm ran in train mode: its statistics moved and travel
        assert "features.1.running_mean" in changed


def test_head_upload_is_under_5_percent_of_full_on_the_default_student() -> None:
    model = mobilenet_v2(num_classes=10, in_channels=1, input_size=8,
                         norm_layer=nn.BatchNorm2d, width_mult=0.5)
    state = {k: v.numpy() for k, v in exchangeable_state(model).items()}

    def upload_bytes(mode: str) -> int:
        names = mode_named(mode).uploaded_names(model)
        return NoCompression().encode({k: v for k, v in state.items() if k in names}).nbytes

    # 10 x 1280 weights + 10 biases, 4 bytes each, + 8 bytes per shape dimension (3 dims).
    assert upload_bytes("head") == 12_810 * 4 + 24
    assert upload_bytes("head") < 0.05 * upload_bytes("full")


def test_reconstruct_completes_a_partial_upload_with_the_global_model() -> None:
    global_ = {"a": np.array([1.0, 2.0], np.float32), "b": np.array([5.0], np.float32)}
    got = reconstruct(DELTA, global_, {"a": np.array([0.5, -1.0], np.float32)}, frozenset(), 1.0)
    np.testing.assert_array_equal(got["a"], [1.5, 1.0])
    assert got["b"] is global_["b"]
    got = reconstruct(WEIGHTS, global_, {"b": np.array([7.0], np.float32)}, frozenset(), 1.0)
    assert got["a"] is global_["a"] and got["b"][0] == 7.0
    with pytest.raises(ValueError, match="unexpected"):
        reconstruct(WEIGHTS, global_, {"c": np.zeros(1, np.float32)}, frozenset(), 1.0)


def _reply(to: Message, payload: ArrayRecord, meta: ConfigRecord, n: int, cid: int) -> Message:
    metrics = MetricRecord({keys.NUM_EXAMPLES: n, keys.TRAIN_LOSS: 1.0, keys.CLIENT_ID: cid})
    return Message(RecordDict({"arrays": payload, keys.PAYLOAD: meta, keys.METRICS: metrics}),
                   reply_to=to)


@pytest.mark.parametrize("codec", [NoCompression(), Int8Quantization()])
def test_head_uploads_are_merged_and_the_held_backbone_stays_bit_exact(codec) -> None:
    # The global backbone value 0.1 averaged with weights 1/3, 2/3 is not 0.1 in float32
    # arithmetic (FedAvg sums w_i * x); FedAdam would turn that rounding into a step of ~eta.
    start = ArrayRecord({"features.w": Array(np.full(3, 0.1, np.float32)),
                         "classifier.w": Array(np.zeros(2, np.float32))})
    rule = UpdateRule(WEIGHTS, codec, 1.0, False)
    for inner, held in [(FedAvg(), True), (FedAdam(eta=0.1), True), (FedAdam(eta=0.1), False)]:
        top = DecodeUpdates(inner, rule, frozenset(["features.w", "classifier.w"]),
                            held=frozenset(["features.w"] if held else []))
        msgs = list(top.configure_train(1, start, ConfigRecord(), FakeGrid([1, 2])))
        replies = []
        for cid, (n, head) in enumerate([(1, [3.0, 0.0]), (2, [0.0, 3.0])]):
            # the head starts at 0, so its weights and its delta (a lossy codec's payload) agree
            encoded = rule.compression.encode({"classifier.w": np.asarray(head, np.float32)})
            payload, meta = to_records(encoded, rule.payload_kind)
            replies.append(_reply(msgs[cid], payload, meta, n, cid))
        aggregated, _ = top.aggregate_train(1, replies)
        kept = aggregated["features.w"].numpy().tobytes() == start["features.w"].numpy().tobytes()
        assert kept == held  # without keeping it, FedAdam moves the frozen backbone
        if type(inner) is FedAvg:  # the head is FedAvg's weighted mean: (3, 6) / 3
            np.testing.assert_allclose(aggregated["classifier.w"].numpy(), [1.0, 2.0], atol=0.02)


def test_central_dp_clips_and_noises_only_the_exchanged_coordinates() -> None:
    start = ArrayRecord({"backbone": Array(np.zeros(1000, np.float32)),
                         "head": Array(np.zeros(2, np.float32))})
    for z, exchanged in [(0.0, frozenset({"head"})), (1.0, frozenset({"head"})), (1.0, None)]:
        dp = CentralDP(FedAvg(), clipping_norm=1.0, noise_multiplier=z, expected_cohort=2,
                       seed=0, exchanged=exchanged)
        msgs = list(dp.configure_train(1, start, ConfigRecord(), FakeGrid([1, 2])))
        # Each phone's head moved by (3, 4): norm 5, clipped to (0.6, 0.8). Backbone untouched.
        replies = [
            Message(RecordDict({
                "arrays": ArrayRecord({"backbone": Array(np.zeros(1000, np.float32)),
                                       "head": Array(np.array([3.0, 4.0], np.float32))}),
                keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 5, keys.TRAIN_LOSS: 1.0,
                                            keys.CLIENT_ID: cid}),
            }), reply_to=msgs[cid])
            for cid in range(2)
        ]
        aggregated, _ = dp.aggregate_train(1, replies)
        backbone, head = aggregated["backbone"].numpy(), aggregated["head"].numpy()
        assert dp.clipped == [(2, 2)]
        if z == 0:
            np.testing.assert_allclose(head, [0.6, 0.8], rtol=1e-6)  # (2 x clipped) / m = 2
        if exchanged is not None:
            assert not backbone.any()  # exactly the global model: no noise landed there
        else:
            # noise std z C / m = 0.5 on every backbone coordinate
            assert 0.4 < backbone.std() < 0.6


def test_local_dp_noises_only_what_a_head_phone_uploads() -> None:
    model = tiny_model()
    received = ArrayRecord(exchangeable_state(model))
    env = ClientEnvironment(
        shards=lambda cid: (
            np.random.default_rng(cid).normal(size=(16, 1, 8, 8)).astype(np.float32),
            np.arange(16) % 10,
        ),
        build_model=tiny_model, recipe=LocalRecipe(1, 8, 0.1), seed=0, threads=1,
        update=UpdateRule(DELTA, NoCompression(), 1.0, False),
    )
    config = ConfigRecord({keys.CLIENT_ID: 3, keys.SERVER_ROUND: 1, keys.FINETUNE_MODE: "head",
                           keys.CACHE_FEATURES: False, keys.LOCAL_DP_CLIPPING_NORM: 0.1,
                           keys.LOCAL_DP_NOISE_MULTIPLIER: 1.0})
    message = Message(RecordDict({"arrays": received, "config": config}),
                      dst_node_id=1, message_type="train")
    message.metadata.__dict__["_message_id"] = "m3"
    reply = train_reply(env, message)
    encoded, kind = from_records(reply.content["arrays"], reply.content[keys.PAYLOAD])
    delta = NoCompression().decode(encoded)
    assert kind == DELTA and set(delta) == HEAD
    # noise std z C = 0.1 on each of the 8 x 10 + 10 head coordinates: far above a clipped step
    assert 0.07 < np.concatenate([d.ravel() for d in delta.values()]).std() < 0.13


def test_error_feedback_carries_the_residual_of_tensors_not_uploaded() -> None:
    residual = {"a": np.array([0.25], np.float32), "b": np.array([0.5], np.float32)}
    _, new = compress_with_feedback(NoCompression(), {"a": np.array([1.0], np.float32)}, residual)
    assert new["b"][0] == 0.5 and new["a"][0] == 0.0  # lossless: nothing left of "a"
    encoded, _ = compress_with_feedback(NoCompression(), {"c": np.ones(1, np.float32)}, residual)
    assert NoCompression().decode(encoded)["c"][0] == 1.0  # no residual yet: zeros


def test_a_head_run_exchanges_the_head_and_a_mixed_run_everything() -> None:
    model = small_net()
    fleet = Fleet(tiers={"mid": profile("mid", 128)}, mix={"mid": 1.0})
    head = plan_exchange(model, possible_modes("head", fleet, MemoryBudget()))
    assert head.uploaded == head.downloaded == HEAD
    assert len(head.held) == 6 and not head.everything
    # adapt from full can fall back to bias and head: full is possible, so everything travels
    adapt = possible_modes("full", fleet, MemoryBudget("adapt"))
    assert adapt == ("full", "bias", "head")
    assert plan_exchange(model, adapt).everything
    # a tier told to train head-only in a bias run: the union of both
    tiered = Fleet(tiers={"mid": profile("mid", 128), "low": profile("low", 32, finetune="head")},
                   mix={"mid": 0.5, "low": 0.5})
    assert possible_modes("bias", tiered, MemoryBudget()) == ("bias", "head")
    # FedDF refines the whole aggregate on the server: every phone downloads everything
    refined = plan_exchange(model, ["head"], server_refines=True)
    assert refined.uploaded == HEAD and refined.held == frozenset()


def test_bytes_down_count_what_a_phone_downloads() -> None:
    msgs = [Message(RecordDict({"a": ArrayRecord({"w": Array(np.zeros(10, np.float32))})}),
                    dst_node_id=1, message_type="train") for _ in range(3)]
    assert traffic(msgs, [])[1] == 3 * (40 + 8)
    assert traffic(msgs, [], download_bytes=20)[1] == 60


def test_secagg_masks_what_is_uploaded_not_the_whole_model() -> None:
    from fedsim.run.simulation import masked_parameters

    net = small_net()
    arrays = ArrayRecord(exchangeable_state(net))
    # head: the 2x3 linear's 6 weights and 3 biases; full: plus conv 2*1*3*3 + 2, BN 4 x 2.
    assert masked_parameters(arrays, plan_exchange(net, ["head"])) == 9
    assert masked_parameters(arrays, plan_exchange(net, ["full"])) == 9 + 20 + 8
    # A fleet where some phones train head, others bias (the conv's and BN's biases, BN's scale
    # and the statistics it moves, 2 each): every phone masks the union.
    assert masked_parameters(arrays, plan_exchange(net, ["head", "bias"])) == 9 + 2 * 5
