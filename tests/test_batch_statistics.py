"""BatchNorm statistics under ``momentum=None`` and precise BN (fedsim/models/batch_statistics.py)."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.models.batch_statistics import recompute_running_statistics
from fedsim.models.state import exchangeable_state, load_exchangeable_state
from fedsim.run.starting_point import near_chance


def _norm(momentum: float | None) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm1d(1, momentum=momentum))


def _batch(value: float) -> torch.Tensor:
    # Two samples value - 1 and value + 1: batch mean `value`, unbiased variance 2.
    return torch.tensor([[value - 1.0], [value + 1.0]])


def test_a_loaded_model_averages_only_this_rounds_batches() -> None:
    model = _norm(None).train()
    for value in (100.0, 200.0):  # an earlier round in the same process
        model(_batch(value))
    load_exchangeable_state(model, exchangeable_state(model))
    for value in (1.0, 3.0):
        model(_batch(value))
    # The cumulative average restarted at the load: (1 + 3) / 2, not (100 + 200 + 1 + 3) / 4.
    assert model[0].running_mean.item() == 2.0
    assert model[0].running_var.item() == 2.0
    assert model[0].num_batches_tracked.item() == 2


def test_precise_bn_uses_the_final_weights_and_restores_the_layer() -> None:
    model = _norm(0.1).eval()
    model[0].running_mean.fill_(50.0)
    x = torch.cat([_batch(4.0), _batch(8.0)])
    recompute_running_statistics(model, x, batch_size=2)
    assert model[0].running_mean.item() == 6.0  # mean of the batch means 4 and 8
    assert model[0].running_var.item() == 2.0
    assert model[0].momentum == 0.1
    assert not model.training


def test_near_chance_is_a_tenth_of_the_way_from_chance_to_perfect() -> None:
    assert near_chance(0.18, 10) and not near_chance(0.19, 10)  # threshold 0.1 + 0.09
    assert near_chance(0.54, 2) and not near_chance(0.56, 2)  # threshold 0.5 + 0.05
