"""Knowledge distillation: the loss, the teacher and its cache, the three places it happens."""

import dataclasses
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from torch import nn

from fedsim.fleet.budget import MemoryBudget
from clients.distillation import KDLoss, kd_loss, logits_of, soft_targets
from fedsim.fleet.flops import count_flops
from fedsim.fleet.memory import estimate_inference_memory, estimate_train_memory
from clients.finetune import Full
from clients.training import LocalRecipe, train_in_mode
from fedsim import keys
from fedsim.fleet.availability import AlwaysOnline
from fedsim.config import ConfigError
from fedsim.data.shards import ShardSource
from fedsim.proxy.distillation import (
    Distillation,
    DistilledPretraining,
    ServerEnsemble,
    ServerPre,
    distilled_pretraining,
)
from fedsim.fleet.fleet import Fleet
from fedsim.models.factory import ModelBuilder
from fedsim.models.resnet import resnet
from fedsim.models.state import exchangeable_state
from fedsim.proxy.pretrain import Pretraining, cache_key
from fedsim.fleet.admission import MIB
from fedsim.fleet.device_simulation import DeviceSimulation
from fedsim.strategy.ensemble_distillation import EnsembleDistillation, ensemble_targets
from fedsim.proxy.teacher import Teacher, trained_teacher
from tests.helpers import INPUT, SAMPLES, profile, sent, tiny_model

# --- the loss -------------------------------------------------------------------------------


def test_kd_loss_is_cross_entropy_at_alpha_zero() -> None:
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    labels = torch.tensor([0, 3, 9, 1, 1, 7])
    assert kd_loss(student, teacher, labels, 4.0, 0.0) == F.cross_entropy(student, labels)


def test_kd_loss_matches_a_hand_computed_value() -> None:
    # Two classes. Teacher logits (2 ln 3, 0) at T = 2 give p_t = (3/4, 1/4); the student's
    # (0, 0) give p_s = (1/2, 1/2).
    # KL(p_t || p_s) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120;  CE(label 0) = ln 2.
    # alpha = 1/2:  1/2 * T^2 * 0.1308120 + 1/2 * ln 2 = 0.2616240 + 0.3465736 = 0.6081976.
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]])
    student = torch.zeros(1, 2)
    loss = kd_loss(student, teacher, torch.tensor([0]), temperature=2.0, alpha=0.5)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl == pytest.approx(0.1308120, abs=1e-7)
    assert loss.item() == pytest.approx(0.5 * 4 * kl + 0.5 * math.log(2), abs=1e-6)
    assert loss.item() == pytest.approx(0.6081976, abs=1e-6)


def test_soft_targets_tend_to_uniform_at_high_temperature() -> None:
    logits = torch.tensor([[5.0, -5.0, 0.0, 2.5]])
    sharp = soft_targets(logits, 1.0)
    assert sharp.max() > 0.9
    spreads = [(soft_targets(logits, t) - 0.25).abs().max().item() for t in (1, 10, 100, 1000)]
    assert spreads == sorted(spreads, reverse=True)
    # To first order p_i = (1 + (z_i - mean z) / T) / 4: at T = 1000 the farthest class (-5,
    # 5.625 below the mean 0.625) is off 1/4 by 5.625 / 4000.
    assert spreads[-1] == pytest.approx(5.625 / 4000, rel=1e-2)


def test_kd_loss_of_a_student_equal_to_its_teacher_is_only_the_hard_term() -> None:
    logits = torch.tensor([[1.0, 2.0, -1.0]])
    label = torch.tensor([1])
    assert kd_loss(logits, logits, label, 3.0, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_training_against_a_teacher_moves_the_student_towards_it() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    teacher_net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # any fixed function of x
    teacher = logits_of(teacher_net, x) * 5

    def kl_after(**distill) -> float:
        torch.manual_seed(1)
        student = nn.Sequential(
            OrderedDict(features=nn.Flatten(), classifier=nn.Linear(64, 10))
        )
        recipe = LocalRecipe(epochs=30, batch_size=16, lr=0.1, momentum=0.9)
        train_in_mode(student, x, y, recipe, torch.Generator().manual_seed(0), Full(), **distill)
        log_p = F.log_softmax(logits_of(student, x), -1)
        return F.kl_div(log_p, F.softmax(teacher, -1), reduction="batchmean").item()

    distilled = kl_after(teacher_logits=teacher, kd=KDLoss(temperature=1.0, alpha=1.0))
    plain = kl_after()
    assert distilled < 0.1 * plain  # the labels y are random: only distillation finds the teacher


# --- the teacher and the distilled student's cache ------------------------------------------


def digits_shards(fraction: float = 0.2) -> ShardSource:
    return ShardSource.from_config(
        {"_target_": "fedsim.data.datasets.Digits"},
        {"_target_": "fedsim.data.partition.iid.IidPartitioner"},
        10, 0, proxy_fraction=fraction, proxy_seed=0,
    )


def small_teacher(cache_dir) -> Teacher:
    return Teacher(
        model={"_target_": "fedsim.models.resnet.resnet", "depth": 8},
        norm={"_target_": "torch.nn.BatchNorm2d", "_partial_": True},
        epochs=2, batch_size=32, cache_dir=str(cache_dir),
    )


def test_the_teacher_is_cached_and_a_second_run_reuses_it(tmp_path) -> None:
    shards = digits_shards()
    splits, _ = shards.load()
    teacher = small_teacher(tmp_path)
    first, report1, on_device = trained_teacher(teacher, shards, splits.input_shape, 10, splits.test)
    second, report2, _ = trained_teacher(teacher, shards, splits.input_shape, 10, splits.test)
    assert (report1["cache"], report2["cache"]) == ("miss", "hit")
    assert report1["key"] == report2["key"]
    assert on_device.path == str(tmp_path / f"{report1['key']}.pt")
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert report2["test_accuracy"] == report1["test_accuracy"]
    # Its size, by hand: parameters of a ResNet-8 on 1-channel 8 px digits, fp32 state bytes.
    assert report1["parameters"] == sum(p.numel() for p in first.parameters())
    assert report1["bytes_fp32"] == 4 * sum(t.numel() for t in exchangeable_state(first).values())
    # Another recipe is another teacher.
    other = dataclasses.replace(teacher, epochs=3)
    assert trained_teacher(other, shards, splits.input_shape, 10)[1]["key"] != report1["key"]


def test_the_teacher_stops_at_max_steps_in_whole_epochs(tmp_path) -> None:
    shards = digits_shards()  # 20 % of the 1,437 train digits: 287 images, 9 steps an epoch at 32
    splits, _ = shards.load()
    capped = dataclasses.replace(small_teacher(tmp_path), epochs=5, max_steps=30)
    _, report, _ = trained_teacher(capped, shards, splits.input_shape, 10)
    assert (report["proxy_samples"], report["epochs"]) == (287, 3)  # 30 // 9 whole epochs
    uncapped = dataclasses.replace(capped, max_steps=None)
    assert trained_teacher(uncapped, shards, splits.input_shape, 10)[1]["key"] != report["key"]


def test_a_distilled_student_has_its_own_cache_key() -> None:
    plain = Pretraining(fraction=0.1)
    logits = np.zeros((5, 10), np.float32)
    distilled = distilled_pretraining(plain, Distillation(where=ServerPre()), 0.1, "abc", logits)
    spec = ({"d": 1}, {"m": 1})
    assert cache_key(distilled, *spec) != cache_key(plain, *spec)
    hotter = dataclasses.replace(distilled, temperature=8.0)
    assert cache_key(hotter, *spec) != cache_key(distilled, *spec)
    other_teacher = dataclasses.replace(distilled, teacher_key="abd")
    assert cache_key(other_teacher, *spec) != cache_key(distilled, *spec)
    # The logits are an input the teacher's key already fixes; the cache directory is a place.
    moved = dataclasses.replace(distilled, teacher_logits=logits + 1, cache_dir="/elsewhere")
    assert cache_key(moved, *spec) == cache_key(distilled, *spec)
    assert isinstance(distilled, DistilledPretraining) and distilled.epochs == plain.epochs


def test_resnet_parameter_count_matches_the_paper() -> None:
    # He et al. 2016, Table 6: ResNet-20 on CIFAR-10 has 0.27M parameters.
    model = resnet(num_classes=10, in_channels=3, input_size=32, depth=20)
    assert sum(p.numel() for p in model.parameters()) == 272_474
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("where", "everywhere", "distill.where: must be one of none, server_pre"),
        ("alpha", 1.5, "distill.alpha: must be in [0, 1], got 1.5"),
        ("temperature", 0.0, "distill.temperature: must be > 0"),
        ("ensemble", "crowd", "distill.ensemble: must be one of teacher, clients, both"),
    ],
)
def test_bad_distill_settings_name_the_field(field, value, message) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        Distillation(**{field: value})
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    ("where", "teacher", "proxy_logits", "refines", "phones", "report"),
    [
        ("none", False, True, False, False, {}),
        ("server_pre", True, True, False, False, {}),
        ("server_ensemble", True, True, True, False, {"ensemble": "teacher"}),
        ("client", True, False, False, True, {}),
    ],
)
def test_each_distill_place_is_an_option_picked_by_its_name(
    where, teacher, proxy_logits, refines, phones, report
) -> None:
    from hydra.utils import instantiate

    from tests.helpers import make_cfg

    distill = instantiate(make_cfg(f"distill.where={where}", "distill.temperature=2").distill)
    assert distill.where.name == where and distill.temperature == 2  # summary.json's value
    assert distill.enabled == (where != "none") and distill.uses_teacher == teacher
    assert distill.where.needs_proxy_logits == proxy_logits
    assert distill.where.refines_aggregate == refines
    assert distill.where.phones_distill == phones and (distill.where.on_device("t") == "t") == phones
    assert distill.where.report(distill) == report
    assert not distill.uses_client_models
    both = dataclasses.replace(distill, ensemble="clients")
    assert both.uses_client_models == (where == "server_ensemble")
    assert both.uses_teacher == (teacher and where != "server_ensemble")


def test_a_teacher_without_a_target_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^teacher.model: needs a _target_"):
        Teacher(model={"depth": 20}, norm={"_target_": "torch.nn.BatchNorm2d"})
    with pytest.raises(ConfigError, match=r"^teacher.epochs: must be >= 1"):
        dataclasses.replace(small_teacher("/tmp"), epochs=0)


# --- server_ensemble (FedDF) ------------------------------------------------------------------


def test_ensemble_targets() -> None:
    a, b, t = torch.full((2, 3), 1.0), torch.full((2, 3), 3.0), torch.full((2, 3), 10.0)
    assert torch.equal(ensemble_targets([a, b], None, "clients"), torch.full((2, 3), 2.0))
    assert torch.equal(ensemble_targets([a, b], t, "teacher"), t)
    assert torch.equal(ensemble_targets([a, b], t, "both"), torch.full((2, 3), 6.0))


class Mean:
    """A stand-in strategy: the plain mean of the replies' weights."""

    def aggregate_train(self, server_round, replies):
        states = [next(iter(r.content.array_records.values())).to_numpy_ndarrays() for r in replies]
        names = list(next(iter(replies[0].content.array_records.values())).keys())
        mean = {n: np.mean([s[i] for s in states], axis=0) for i, n in enumerate(names)}
        return ArrayRecord({n: torch.from_numpy(v) for n, v in mean.items()}), None


def weights_reply(model: nn.Module) -> Message:
    out = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1,
                  message_type=MessageType.TRAIN)
    content = RecordDict({"arrays": ArrayRecord(exchangeable_state(model)),
                          keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 1})})
    return Message(content, reply_to=out)


@pytest.mark.parametrize("ensemble", ["clients", "teacher", "both"])
def test_server_refinement_pulls_the_aggregate_towards_the_targets(ensemble) -> None:
    shards = digits_shards(fraction=0.3)
    x, _ = shards.proxy()
    builder = ModelBuilder.from_config(
        {"_target_": "fedsim.models.resnet.resnet", "depth": 8, "width_mult": 0.5},
        # GroupNorm: no running statistics, so eval-mode logits are what training matched.
        {"_target_": "fedsim.models.layers.group_norm", "_partial_": True}, (1, 8, 8), 10,
    )
    clients = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = builder()
        for p in model.classifier.parameters():  # a fresh head outputs ~0: make them disagree
            nn.init.normal_(p, std=0.3)
        clients.append(model)
    teacher = torch.randn(len(x), 10, generator=torch.Generator().manual_seed(3)).numpy() * 4
    distill = Distillation(where=ServerEnsemble(), ensemble=ensemble, alpha=1.0,
                           temperature=1.0, server_epochs=3, server_lr=0.01)
    wrapper = EnsembleDistillation(Mean(), distill, builder, shards,
                                   None if ensemble == "clients" else teacher, seed=0)
    replies = [weights_reply(m) for m in clients]
    averaged, _ = Mean().aggregate_train(1, replies)
    refined, _ = wrapper.aggregate_train(1, replies)
    again, _ = wrapper.aggregate_train(1, replies)
    targets = ensemble_targets(
        [logits_of(m, torch.from_numpy(x)) for m in clients], torch.from_numpy(teacher), ensemble
    )

    def kl_to_targets(arrays: ArrayRecord) -> float:
        model = builder()
        model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
        log_p = F.log_softmax(logits_of(model, torch.from_numpy(x)), -1)
        return F.kl_div(log_p, F.softmax(targets, -1), reduction="batchmean").item()

    before, after = kl_to_targets(averaged), kl_to_targets(refined)
    assert after < 0.9 * before, (before, after)
    assert list(refined.keys()) == list(averaged.keys())
    for name in refined:  # seeded by (run seed, round): a resumed round refines identically
        assert np.array_equal(refined[name].numpy(), again[name].numpy())


# --- client distillation on the simulated phones ---------------------------------------------


def wide_teacher() -> nn.Module:
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(),
                               nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        classifier=nn.Linear(64, 10),
    ))


def distilling_fleet(small_ram_mb: float, deadline_s=None) -> DeviceSimulation:
    student, teacher = tiny_model(), wide_teacher()
    full = estimate_train_memory(student, INPUT, 8, Full()).total
    tiers = {"small": profile("small", small_ram_mb), "big": profile("big", 10 * full / MIB)}
    return DeviceSimulation(
        fleet=Fleet(tiers, {"small": 0.5, "big": 0.5}, speed_sigma=0.0, seed=3),
        availability=AlwaysOnline(), budget=MemoryBudget("strict", 8, ("full",)),
        finetune=Full(), model=student, input_shape=INPUT, batch_size=8,
        epochs=2, samples=lambda cid: SAMPLES, model_bytes=40_000, seed=3,
        deadline_s=deadline_s, start_hour=0.0, needed=None, teacher=teacher,
        teacher_bytes=100_000,
    )


def admitted(sim: DeviceSimulation, ids) -> dict[int, dict | None]:
    config = ConfigRecord({keys.LOCAL_EPOCHS: 2, keys.BATCH_SIZE: 8})
    return {c: sim.instructions(1, c, np.array(list(ids)), config) for c in ids}


def test_phones_that_cannot_hold_the_teacher_train_without_it_and_the_record_says_so() -> None:
    student, teacher = tiny_model(), wide_teacher()
    train = estimate_train_memory(student, INPUT, 8, Full()).total
    infer = estimate_inference_memory(teacher, INPUT, 8)
    assert infer > train  # the wide teacher's forward needs more than the student's training
    sim = distilling_fleet(small_ram_mb=(train + infer) / 2 / MIB)
    told = admitted(sim, range(20))
    small = [c for c in range(20) if sim.fleet.tier_of(c) == "small"]
    assert 0 < len(small) < 20
    for cid, extra in told.items():
        assert extra[keys.DISTILL] == (0 if cid in small else 1)
    messages = [sent(c) for c in range(20)]
    replies = [Message(RecordDict({keys.METRICS: MetricRecord(
        {keys.CLIENT_ID: c, keys.PAYLOAD_BYTES: 1000})}), reply_to=m)
        for c, m in enumerate(messages)]
    tiers = sim.settle(1, messages, replies).tiers
    assert tiers["small"]["no_kd"] == {"memory": len(small)}
    assert tiers["small"]["trained"] == {"full@8": len(small)}
    # The wide teacher's pass over a 20-sample shard does not fit "big" phones at once: the
    # budget halves it to 16 samples a pass (fedsim.fleet.round_memory), and the label says so.
    assert tiers["big"]["trained"] == {"full@8+kd chunk=16": 20 - len(small)}
    assert "no_kd" not in tiers["big"]


def test_the_teacher_costs_its_download_and_one_forward_per_sample_on_the_clock() -> None:
    sim = distilling_fleet(small_ram_mb=1e6)
    plan = sim.budget.plan(sim.memory_bytes, 10**12, "full", 8)
    plain, distilling = sim.cost(0, plan, 2, 1000), sim.cost(0, plan, 2, 1000, distill=True)
    teacher_flops = count_flops(wide_teacher(), INPUT, Full(), 1).forward * SAMPLES
    # Profile: 1 MFLOP/s fp32, 4 Mbit/s down.
    assert distilling.compute_s - plain.compute_s == pytest.approx(teacher_flops / 1e6)
    assert distilling.download_s - plain.download_s == pytest.approx(100_000 * 8 / 4e6)
    # A deadline the plain round meets but the distilling one cannot: no_kd "deadline".
    deadline = plain.download_s + plain.compute_s + plain.upload_s + 0.01
    assert distilling.download_s + distilling.compute_s > deadline
    sim = distilling_fleet(small_ram_mb=1e6, deadline_s=deadline)
    told = admitted(sim, [0])
    assert told[0][keys.DISTILL] == 0 and sim._admissions[0].no_kd == "deadline"


# --- server_pre through the run's preparation --------------------------------------------------


def test_server_pre_starts_from_a_student_distilled_on_the_proxy_split(tmp_path) -> None:
    from fedsim.run.preparation import prepare
    from fedsim.run.starting_point import prepared_teacher, starting_point
    from tests.helpers import make_cfg

    small = [
        "model.width_mult=0.35", "teacher.model.depth=8", "teacher.epochs=1",
        f"teacher.cache_dir={tmp_path / 'teacher'}",
    ]

    def start(*overrides: str):
        prep = prepare(make_cfg(*small, *overrides))
        teacher = prepared_teacher(prep)
        return prep, teacher, starting_point(prep, teacher)

    plain = f"pretrain=proxy pretrain.epochs=1 pretrain.cache_dir={tmp_path / 'student'}".split()
    prep, teacher, (distilled, report) = start(*plain, "distill.where=server_pre")
    # pretrain=proxy's fraction (0.1 of 1,437 digits) is the proxy split the teacher used.
    assert prep.shards.proxy_fraction == 0.1 and teacher.report["proxy_samples"] == 144
    assert teacher.proxy_logits.shape == (144, 10)
    assert report["cache"] == "miss"
    _, _, (again, report_again) = start(*plain, "distill.where=server_pre")
    assert (report_again["cache"], report_again["key"]) == ("hit", report["key"])
    for a, b in zip(distilled.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # The same recipe without the teacher is another student.
    _, no_teacher, (_, plain_report) = start(*plain)
    assert no_teacher is None and plain_report["key"] != report["key"]
    # Without pretrain=proxy, distill.proxy_fraction holds the split out.
    prep, _, _ = start("distill.where=server_pre", "distill.proxy_fraction=0.2",
                       f"pretrain.cache_dir={tmp_path / 'student'}", "pretrain.epochs=1")
    assert prep.shards.proxy_fraction == 0.2
