"""The whole client-round's memory: estimate vs a measured real round, and admission by it.

A round on a 300-sample shard (larger than any pass) of the default student on digits, run by
the client's own code (``tests/memory_probe.measure_client_round``), against
``fedsim.fleet.round_memory.ClientRoundMemory``. Measured on this machine (MiB, peak stage):

| round | batch, chunk | estimate | measured |
|---|---|---:|---:|
| head | 8, 256 | 44.14 (features) | 44.14 |
| head | 32, 64 | 14.14 (features) | 14.14 |
| int8_head | 8, 256 | 27.26 (features) | 27.26 |
| int8_head | 32, 64 | 15.36 (calibration) | 15.83 (observers' histograms) |
| full / bias / qat | 8 | 39.66 / 34.56 / 45.67 (train) | same |
| gradient | chunk 256 / 64 | 1015.99 / 258.06 | same |
| head + teacher | 8, 256 | 83.34 (teacher) | 83.34 |
| full + teacher | 8, 128 | 47.34 (teacher) | 47.34 |
"""

from functools import cache

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from torch import nn

from clients.finetune import Head, mode_named
from clients.training import LocalRecipe
from fedsim import keys
from fedsim.fleet.admission import MIB
from fedsim.fleet.availability import AlwaysOnline
from fedsim.fleet.budget import MemoryBudget
from fedsim.fleet.device_simulation import DeviceSimulation
from fedsim.fleet.fleet import Fleet
from fedsim.fleet.round_memory import ClientRoundMemory
from fedsim.models.mobilenet_v2 import mobilenet_v2
from tests.helpers import profile
from tests.memory_probe import measure_client_round

torch.set_num_threads(1)

DIGITS = (1, 8, 8)
SHARD = 300  # more than any pass (PASS_CHUNK = 256): the last chunk is a partial one


@cache
def student() -> nn.Module:
    torch.manual_seed(0)
    return mobilenet_v2(num_classes=10, in_channels=1, input_size=8, width_mult=0.5)


@cache
def teacher() -> nn.Module:
    torch.manual_seed(1)
    return mobilenet_v2(num_classes=10, in_channels=1, input_size=8, width_mult=1.0)


@cache
def shard() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(SHARD, *DIGITS, generator=g), torch.randint(0, 10, (SHARD,), generator=g)


@cache
def estimates() -> ClientRoundMemory:
    return ClientRoundMemory(student(), DIGITS, teacher())


def check(mode: str, batch: int, chunk: int, gradient: bool = False, distill: bool = False):
    x, y = shard()
    recipe = LocalRecipe(epochs=1, batch_size=batch, lr=0.01, momentum=0.9, chunk=chunk)
    measured = measure_client_round(
        student(), x, y, mode_named(mode), recipe, gradient, teacher() if distill else None
    )
    estimate = estimates().estimate(mode_named(mode), batch, chunk, SHARD, gradient, distill)
    assert [s.name for s in estimate.stages] == [s.name for s in measured.stages]
    for ours, real in zip(estimate.stages, measured.stages, strict=True):
        assert ours.samples == real.samples == min(real.samples, SHARD)
        assert ours.total == pytest.approx(real.total, rel=0.10), ours.name
    assert estimate.peak == pytest.approx(measured.peak, rel=0.10)
    return estimate


@pytest.mark.parametrize(("batch", "chunk"), [(8, 256), (32, 64)])
@pytest.mark.parametrize("mode", ["full", "head", "bias", "frozen_stats", "qat", "int8_head"])
def test_whole_round_estimate_is_within_ten_percent_of_the_measured_round(mode, batch, chunk):
    estimate = check(mode, batch, chunk)
    if mode in ("head", "int8_head") and chunk == 256:
        # Not the training step: the frozen backbone's 256-sample pass is the round's peak.
        assert estimate.peak == estimate.stage("features").total > 5 * estimate.stage("train").total


@pytest.mark.parametrize("chunk", [256, 64])
def test_gradient_round_is_its_largest_chunk(chunk):
    estimate = check("full", 8, chunk, gradient=True)
    assert [s.name for s in estimate.stages] == ["gradient"]
    assert estimate.stage("gradient").samples == chunk


@pytest.mark.parametrize(("mode", "chunk"), [("head", 256), ("full", 128)])
def test_distilling_round_includes_the_teachers_pass(mode, chunk):
    estimate = check(mode, 8, chunk, distill=True)
    assert estimate.stages[0].name == "teacher" and estimate.stages[0].samples == chunk


def test_low_end_head_phone_with_a_large_shard_is_admitted_at_a_chunk_that_fits():
    # A 32 MiB phone, head mode at batch 8, 300-sample shards: the 256-sample feature pass
    # needs 44.1 MiB (2.67 weights + 1.46 features + 40 working set), more than 32; at 128
    # samples it needs 4.14 + 20 = 24.1 MiB. Strict keeps head@8 but tells the phone 128.
    model = student()
    sim = DeviceSimulation(
        fleet=Fleet({"low_end": profile("low_end", 32)}, {"low_end": 1.0}, 0.0, seed=0),
        availability=AlwaysOnline(), budget=MemoryBudget("strict"), finetune=Head(),
        model=model, input_shape=DIGITS, batch_size=8, epochs=1, samples=lambda cid: SHARD,
        model_bytes=1000, seed=0, deadline_s=None, start_hour=0.0, needed=None,
    )
    assert sim.memory_bytes("head", 8, 256, SHARD) / MIB == pytest.approx(44.14, abs=0.01)
    config = ConfigRecord({keys.LOCAL_EPOCHS: 1, keys.BATCH_SIZE: 8})
    told = sim.instructions(1, 0, np.array([0]), config)
    assert (told[keys.FINETUNE_MODE], told[keys.BATCH_SIZE], told[keys.CHUNK]) == ("head", 8, 128)
    admission = sim._admissions[0]
    assert admission.plan.memory_bytes <= 32 * MIB
    assert admission.plan.memory_bytes / MIB == pytest.approx(24.14, abs=0.01)
    assert sim.settle(1, [], []).tiers["low_end"]["sampled"] == 1
    assert admission.label == "head@8 chunk=128"
    # A small shard runs in one pass anyway: the phone keeps the default chunk and label.
    sim.samples = lambda cid: 64
    sim._round = None
    assert sim.instructions(2, 0, np.array([0]), config)[keys.CHUNK] == 256
    assert sim._admissions[0].label == "head@8"
