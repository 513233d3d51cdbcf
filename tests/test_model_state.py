"""Loading an exchanged state into a model: one foreach copy, the checks load_state_dict made."""

import pytest
import torch
from torch import nn

from fedsim.models.state import exchangeable_state, load_exchangeable_state


def small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))


def test_a_loaded_state_is_the_models_and_its_batch_counters_restart() -> None:
    model, other = small(), small()
    with torch.no_grad():
        for i, tensor in enumerate(exchangeable_state(other).values()):
            tensor.fill_(float(i))  # 0, 1, 2, ... a tensor: easy to check by hand
    model[1].num_batches_tracked.fill_(7)
    whole = other.state_dict()  # a checkpoint's state_dict carries the counter: accepted
    load_exchangeable_state(model, whole)
    for i, (name, tensor) in enumerate(exchangeable_state(model).items()):
        assert torch.all(tensor == float(i)), name
    assert int(model[1].num_batches_tracked) == 0
    # The model's own tensors were written, not replaced: views taken before see the values.
    views = exchangeable_state(model)
    load_exchangeable_state(model, exchangeable_state(small()), views)
    assert torch.equal(views["3.weight"], model[3].weight.detach())


def test_a_state_of_another_model_is_refused() -> None:
    state = exchangeable_state(small())
    with pytest.raises(KeyError, match=r"missing \['3.bias'\]"):
        load_exchangeable_state(small(), {k: v for k, v in state.items() if k != "3.bias"})
    with pytest.raises(KeyError, match=r"unexpected \['extra'\]"):
        load_exchangeable_state(small(), {**state, "extra": torch.zeros(1)})
    # A (1,) bias would broadcast into (3,) under copy_; it is refused instead.
    with pytest.raises(RuntimeError, match=r"3.bias is \(3,\), received \(1,\)"):
        load_exchangeable_state(small(), {**state, "3.bias": torch.zeros(1)})
