"""The FLOP model of on-device training, on hand-computed layers and the MobileNet students."""

import pytest
import torch
from torch import nn

from clients.finetune import Bias, Full, Head, Int8Head, Qat
from fedsim.fleet.flops import TrainCost, count_flops, train_cost, train_flops
from fedsim.models.mobilenet_v2 import mobilenet_v2

torch.set_num_threads(1)


def test_conv_flops_by_hand() -> None:
    # 2 * C_in * k^2 * C_out * H_out * W_out = 2 * 3 * 9 * 8 * 10 * 10 = 43,200 per sample.
    # Backward: the weight gradient costs the same; the image needs no input gradient.
    flops = count_flops(nn.Conv2d(3, 8, 3, padding=1, bias=False), (3, 10, 10), Full(), batch=2)
    assert (flops.forward, flops.backward) == (2 * 43_200, 2 * 43_200)


def test_depthwise_conv_flops_by_hand() -> None:
    # groups = C_in: 2 * (8 / 8) * 9 * 8 * 10 * 10 = 14,400.
    flops = count_flops(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), (8, 10, 10))
    assert flops.forward == 14_400


def test_linear_flops_by_hand() -> None:
    # Flatten (free) then 2 * 16 * 10 = 320 per sample, the bias add not counted.
    flops = count_flops(nn.Sequential(nn.Flatten(), nn.Linear(16, 10)), (1, 4, 4), Full(), batch=3)
    assert (flops.forward, flops.backward) == (3 * 320, 3 * 320)


def test_full_backward_is_about_twice_the_forward_for_a_conv_stack() -> None:
    layers: list[nn.Module] = [nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.ReLU()]
    flops = count_flops(nn.Sequential(*layers), (1, 16, 16), Full())
    assert flops.backward / flops.forward == pytest.approx(2.0, rel=0.10)


@pytest.fixture(scope="module")
def v2() -> nn.Module:
    return mobilenet_v2(num_classes=10, in_channels=1, input_size=28, width_mult=0.5)


def test_forward_is_the_same_in_every_mode(v2: nn.Module) -> None:
    forwards = {count_flops(v2, (1, 28, 28), mode).forward for mode in (Full(), Head(), Bias())}
    assert len(forwards) == 1


def test_head_mode_training_is_a_small_fraction_of_full(v2: nn.Module) -> None:
    shape, samples, epochs = (1, 28, 28), 100, 5
    full = train_flops(v2, shape, Full(), samples, epochs)
    # Head-only backward is the classifier's alone.
    assert count_flops(v2, shape, Head()).backward < count_flops(v2, shape, Full()).backward / 100
    # Frozen, the backbone still runs forward every epoch: a third of full training remains.
    head = train_flops(v2, shape, Head(), samples, epochs)
    assert 0.3 < head / full < 0.4
    # Run once and cached, the frozen backbone's cost is paid once over all epochs.
    cached = train_flops(v2, shape, Head(), samples, epochs, cache_frozen_prefix=True)
    assert cached < full / 10


def test_bias_mode_backward_has_input_gradients_but_few_weight_gradients(v2: nn.Module) -> None:
    full = count_flops(v2, (1, 28, 28), Full())
    bias = count_flops(v2, (1, 28, 28), Bias())
    # Input gradients everywhere (about one forward), but no conv weight gradients.
    assert 0.9 * full.forward < bias.backward < 1.2 * full.forward


def test_qat_cost_adds_fake_quant_of_each_conv_output_by_hand() -> None:
    # Full: (43,200 forward + 43,200 weight gradient) per sample and epoch (first test). QAT
    # fake-quantises the 8 * 10 * 10 = 800 outputs: 4 FLOPs forward + 1 for the mask = 4,000.
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    samples, epochs = 5, 2
    assert train_cost(conv, (3, 10, 10), Full(), samples, epochs) == TrainCost(10 * 86_400, 0)
    assert train_cost(conv, (3, 10, 10), Qat(), samples, epochs) == TrainCost(10 * 90_400, 0)


def test_head_and_int8_head_costs_by_hand(v2: nn.Module) -> None:
    shape, samples, epochs = (1, 28, 28), 40, 5
    # The head is Dropout(1280) + Linear(1280 -> 10): per sample 1,280 for the dropout and
    # 25,600 forward + 25,600 weight gradient for the linear, every epoch.
    head_total = 1280 + 2 * 25_600
    frozen_forward = count_flops(v2, shape, Head()).forward - 1280 - 25_600  # backbone + pool
    cached = train_cost(v2, shape, Head(), samples, epochs)
    assert cached == TrainCost(samples * (frozen_forward + epochs * head_total), 0)
    uncached = train_cost(v2, shape, Head(cache_features=False), samples, epochs)
    assert uncached.fp32_flops == train_flops(v2, shape, Head(), samples, epochs)
    # int8_head: the same total, with the backbone's forward moved to int8 (once per sample
    # cached, once per sample and epoch uncached); pooling and head stay fp32.
    backbone = count_flops(v2.features, shape).forward
    int8 = train_cost(v2, shape, Int8Head(), samples, epochs)
    assert int8 == TrainCost(cached.fp32_flops - samples * backbone, samples * backbone)
    int8_uncached = train_cost(v2, shape, Int8Head(cache_features=False), samples, epochs)
    assert int8_uncached.int8_flops == samples * epochs * backbone
    assert sum(vars(int8_uncached).values()) == uncached.fp32_flops
    # Full and bias are train_flops, all fp32.
    for mode in (Full(), Bias()):
        expected = train_flops(v2, shape, mode, samples, epochs)
        assert train_cost(v2, shape, mode, samples, epochs) == TrainCost(expected, 0)
