"""The FLOP model of on-device training, on hand-computed layers and the MobileNet students."""

import pytest
import torch
from torch import nn

from clients.flops import count_flops, train_flops
from fedsim.models.mobilenet_v2 import mobilenet_v2

torch.set_num_threads(1)


def test_conv_flops_by_hand() -> None:
    # 2 * C_in * k^2 * C_out * H_out * W_out = 2 * 3 * 9 * 8 * 10 * 10 = 43,200 per sample.
    # Backward: the weight gradient costs the same; the image needs no input gradient.
    flops = count_flops(nn.Conv2d(3, 8, 3, padding=1, bias=False), (3, 10, 10), "full", batch=2)
    assert (flops.forward, flops.backward) == (2 * 43_200, 2 * 43_200)


def test_depthwise_conv_flops_by_hand() -> None:
    # groups = C_in: 2 * (8 / 8) * 9 * 8 * 10 * 10 = 14,400.
    flops = count_flops(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), (8, 10, 10))
    assert flops.forward == 14_400


def test_linear_flops_by_hand() -> None:
    # Flatten (free) then 2 * 16 * 10 = 320 per sample, the bias add not counted.
    flops = count_flops(nn.Sequential(nn.Flatten(), nn.Linear(16, 10)), (1, 4, 4), "full", batch=3)
    assert (flops.forward, flops.backward) == (3 * 320, 3 * 320)


def test_full_backward_is_about_twice_the_forward_for_a_conv_stack() -> None:
    layers: list[nn.Module] = [nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.ReLU()]
    flops = count_flops(nn.Sequential(*layers), (1, 16, 16), "full")
    assert flops.backward / flops.forward == pytest.approx(2.0, rel=0.10)


@pytest.fixture(scope="module")
def v2() -> nn.Module:
    return mobilenet_v2(num_classes=10, in_channels=1, input_size=28, width_mult=0.5)


def test_forward_is_the_same_in_every_mode(v2: nn.Module) -> None:
    forwards = {count_flops(v2, (1, 28, 28), mode).forward for mode in ("full", "head", "bias")}
    assert len(forwards) == 1


def test_head_mode_training_is_a_small_fraction_of_full(v2: nn.Module) -> None:
    shape, samples, epochs = (1, 28, 28), 100, 5
    full = train_flops(v2, shape, "full", samples, epochs)
    # Head-only backward is the classifier's alone.
    assert count_flops(v2, shape, "head").backward < count_flops(v2, shape, "full").backward / 100
    # Frozen, the backbone still runs forward every epoch: a third of full training remains.
    head = train_flops(v2, shape, "head", samples, epochs)
    assert 0.3 < head / full < 0.4
    # Run once and cached, the frozen backbone's cost is paid once over all epochs.
    cached = train_flops(v2, shape, "head", samples, epochs, cache_frozen_prefix=True)
    assert cached < full / 10


def test_bias_mode_backward_has_input_gradients_but_few_weight_gradients(v2: nn.Module) -> None:
    full = count_flops(v2, (1, 28, 28), "full")
    bias = count_flops(v2, (1, 28, 28), "bias")
    # Input gradients everywhere (about one forward), but no conv weight gradients.
    assert 0.9 * full.forward < bias.backward < 1.2 * full.forward
