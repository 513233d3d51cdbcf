"""Fine-tuning modes and the training-memory model: estimate vs measurement, and hand counts."""

from collections import OrderedDict
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from clients.finetune import MODES, Bias, Full, Head, Int8Head, Qat, mode_named
from clients.quantize import quantize_backbone
from fedsim.fleet.memory import MemoryEstimate, estimate_train_memory
from fedsim.models.layers import group_norm
from fedsim.models.mobilenet_v2 import mobilenet_v2
from fedsim.models.mobilenet_v3 import mobilenet_v3_small
from tests.memory_probe import measure_train_memory

torch.set_num_threads(1)

CONF = Path(__file__).resolve().parents[1] / "conf"
INPUT = (1, 28, 28)
BUILDERS = {"mobilenet_v2": mobilenet_v2, "mobilenet_v3_small": mobilenet_v3_small}
NORMS = {"batch_norm": None, "group_norm": group_norm}


@cache
def student(name: str, norm: str) -> nn.Module:
    torch.manual_seed(0)
    return BUILDERS[name](
        num_classes=10, in_channels=1, input_size=28, width_mult=0.5, norm_layer=NORMS[norm]
    )


def tiny_net() -> nn.Module:
    """Conv(1->2, 3x3, no bias) -> ReLU | flatten -> Linear(32 -> 3), for 1x6x6 inputs."""
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.ReLU()),
            classifier=nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3)),
        )
    )


@pytest.mark.parametrize("batch", [1, 8, 32])
@pytest.mark.parametrize("mode", ["full", "head", "bias", "qat"])
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("name", list(BUILDERS))
def test_estimate_is_within_ten_percent_of_measurement(
    name: str, norm: str, mode: str, batch: int
) -> None:
    model = student(name, norm)
    estimate = estimate_train_memory(model, INPUT, batch, mode_named(mode))
    measured = measure_train_memory(model, INPUT, batch, mode_named(mode))
    assert estimate.activations == pytest.approx(measured.activations, rel=0.10)
    assert estimate.total == pytest.approx(measured.total, rel=0.10)
    assert (estimate.weights, estimate.gradients, estimate.optimizer_state) == (
        measured.weights,
        measured.gradients,
        measured.optimizer_state,
    )


@cache
def int8_backbone(name: str) -> nn.Module:
    """One PTQ per student (it takes seconds), reused across batch sizes."""
    model = student(name, "batch_norm")
    return quantize_backbone(model.features, torch.randn(16, *INPUT))


@pytest.mark.parametrize("batch", [4, 8, 16])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_int8_head_estimate_is_within_ten_percent_of_the_int8_measurement(
    name: str, batch: int
) -> None:
    model = student(name, "batch_norm")
    estimate = estimate_train_memory(model, INPUT, batch, Int8Head())
    measured = measure_train_memory(
        model, INPUT, batch, Int8Head(), int8_backbone=int8_backbone(name)
    )
    assert estimate.total == pytest.approx(measured.total, rel=0.10)
    assert estimate.weights == pytest.approx(measured.weights, rel=0.01)
    assert estimate.forward_peak == pytest.approx(measured.forward_peak, rel=0.10)
    assert (estimate.activations, estimate.gradients) == (measured.activations, measured.gradients)
    # The int8 backbone's weights and working set are about a quarter of the float ones.
    head = measure_train_memory(model, INPUT, batch, Head())
    head_bytes = sum(p.numel() * 4 for p in model.classifier.parameters())
    assert measured.weights - head_bytes < (head.weights - head_bytes) / 3
    assert measured.forward_peak < head.forward_peak / 3


@pytest.mark.parametrize("measure", [estimate_train_memory, measure_train_memory])
def test_tiny_net_qat_byte_counts_by_hand(measure: Callable[..., MemoryEstimate]) -> None:
    # Full saves 588 bytes (see the test below). QAT adds, for the conv: its fake-quantised
    # weight copy (18 fp32 = 72) and that copy's 1-byte mask (18), the output's mask (2*2*4*4
    # = 64); for the linear, whose input needs a gradient: its weight copy (96 fp32 = 384), the
    # weight mask (96) and the logits' mask (6). 588 + 72 + 18 + 64 + 384 + 96 + 6 = 1228.
    qat = measure(tiny_net(), (1, 6, 6), 2, Qat())
    assert qat.activations == 1228
    assert (qat.weights, qat.gradients, qat.optimizer_state) == (468, 468, 468)


@pytest.mark.parametrize("measure", [estimate_train_memory, measure_train_memory])
def test_tiny_net_int8_head_byte_counts_by_hand(measure: Callable[..., MemoryEstimate]) -> None:
    # Weights: the int8 conv's 18 bytes + 2 channels * (fp32 scale + int32 zero point) = 34,
    # plus the fp32 head 99 * 4 = 396. Activations as head (300). Forward peak: quantising the
    # fp32 image, 72 * 4 + 72 = 360 (the fused int8 conv-relu holds only 72 + 64 bytes, the
    # dequantise 64 + 256, the linear 256 + 24). Measured, the Flatten holds 256 + 256: the int8
    # conv returns channels-last, so flattening its dequantised output copies it. The estimate
    # does not model that copy; in the MobileNets pooling to 1x1 comes first and it is free.
    int8 = measure(tiny_net(), (1, 6, 6), 2, Int8Head())
    assert (int8.weights, int8.gradients, int8.optimizer_state) == (430, 396, 396)
    peak = 360 if measure is estimate_train_memory else 512
    assert (int8.activations, int8.forward_peak, int8.total) == (300, peak, 430 + 2 * 396 + peak)


@pytest.mark.parametrize("measure", [estimate_train_memory, measure_train_memory])
def test_tiny_net_byte_counts_by_hand(measure: Callable[..., MemoryEstimate]) -> None:
    # Batch 2 of 1x6x6 (72 floats, 288 bytes); conv out = ReLU out (2, 2, 4, 4): 64 floats,
    # 256 bytes; logits (2, 3). Parameters: conv 2*1*3*3 = 18, linear 3*32 + 3 = 99; 117 fp32
    # = 468 bytes. Full: grads and momentum 468 each. Saved: the conv input (288), the ReLU
    # output (256; the linear saves the same storage through the flatten view, counted once)
    # and cross-entropy's log-probs 2*3*4 = 24 + int64 targets 2*8 = 16 + a scalar 4 = 44:
    # 588. Forward peak: the conv's input + output, 288 + 256 = 544. Total 3 * 468 + 588.
    full = measure(tiny_net(), (1, 6, 6), 2, Full())
    assert (full.weights, full.gradients, full.optimizer_state) == (468, 468, 468)
    assert (full.activations, full.forward_peak, full.total) == (588, 544, 1992)
    # Head: 99 trainable, grads and momentum 396 each. The frozen conv and ReLU save nothing;
    # the linear saves its input (256) but not its weight (its input needs no gradient).
    # Activations 256 + 44 = 300 < forward peak 544: total 468 + 2 * 396 + 544 = 1804.
    head = measure(tiny_net(), (1, 6, 6), 2, Head())
    assert (head.weights, head.gradients, head.optimizer_state) == (468, 396, 396)
    assert (head.activations, head.forward_peak, head.total) == (300, 544, 1804)
    no_momentum = measure(tiny_net(), (1, 6, 6), 2, Head(), momentum=False)
    assert no_momentum.optimizer_state == 0


def test_weight_bits_scale_only_the_weights() -> None:
    int8 = estimate_train_memory(tiny_net(), (1, 6, 6), 2, Full(), weight_bits=8)
    assert (int8.weights, int8.gradients) == (117, 468)


def loss_bytes(batch: int, classes: int = 10) -> int:
    return batch * classes * 4 + batch * 8 + 4  # log-probs, int64 targets, total weight


@pytest.mark.parametrize("norm", list(NORMS))
def test_head_mode_saves_only_classifier_activations(norm: str) -> None:
    batch = 8
    # MobileNetV2's head: dropout on a frozen input saves nothing; the linear saves its input.
    v2 = measure_train_memory(student("mobilenet_v2", norm), INPUT, batch, Head())
    assert v2.activations == batch * 1280 * 4 + loss_bytes(batch)
    # MobileNetV3-Small w0.5: Linear(288 -> 512) saves its input; hard-swish its input, dropout
    # its fp32 noise and Linear(512 -> 10) its input, 512 floats each.
    v3 = measure_train_memory(student("mobilenet_v3_small", norm), INPUT, batch, Head())
    assert v3.activations == batch * (288 + 3 * 512) * 4 + loss_bytes(batch)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_bias_mode_memory_lies_between_head_and_full(name: str) -> None:
    model = student(name, "batch_norm")
    full, head, bias = (
        measure_train_memory(model, INPUT, 8, mode).activations for mode in (Full(), Head(), Bias())
    )
    assert head < bias < full
    # Stock PyTorch keeps every frozen conv's input, so bias mode saves little (here only the
    # image); a runtime that drops them (TinyTL's premise) saves a quarter or more.
    assert bias > 0.99 * full
    sparse = estimate_train_memory(model, INPUT, 8, Bias(), sparse_backprop=True)
    assert sparse.activations < 0.8 * full


def test_pytorch_saves_a_frozen_convs_input() -> None:
    # Pins the rule the estimate depends on: conv2 is frozen but its input needs a gradient
    # (the BN before it trains), and ConvolutionBackward still saves that input.
    net = nn.Sequential(
        OrderedDict(
            features=nn.Sequential(
                nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1, bias=False)
            ),
            classifier=nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3)),
        )
    )
    # conv1 (frozen, image input) is not in the graph. Saved: BN input and BN output (= conv2
    # input), (2, 2, 4, 4) = 256 bytes each, BN's two per-channel statistics (8 bytes each),
    # the linear input (conv2 output, 256) and the loss (44).
    measured = measure_train_memory(net, (1, 6, 6), 2, Bias())
    assert measured.activations == 3 * 256 + 2 * 8 + 44
    assert estimate_train_memory(net, (1, 6, 6), 2, Bias()).activations == measured.activations
    sparse = estimate_train_memory(net, (1, 6, 6), 2, Bias(), sparse_backprop=True)
    assert sparse.activations == measured.activations - 256


def test_trainable_names_per_mode() -> None:
    model = student("mobilenet_v3_small", "group_norm")
    names = {name for name, _ in model.named_parameters()}
    assert Full().trainable_names(model) == names
    head = Head().trainable_names(model)
    assert head and all(name.startswith("classifier.") for name in head)
    bias = Bias().trainable_names(model)
    norm_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.GroupNorm)}
    assert head < bias and norm_weights < bias
    assert all(n.endswith(".bias") or n in norm_weights or n in head for n in bias)
    conv_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert not conv_weights & bias


def test_prepare_freezes_backbone_and_its_batchnorm_stats() -> None:
    model = mobilenet_v2(num_classes=10, in_channels=1, input_size=28, width_mult=0.5)
    Head().prepare(model)
    assert not model.features.training and model.classifier.training
    assert all(p.requires_grad == n.startswith("classifier.") for n, p in model.named_parameters())
    bn = next(m for m in model.features.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model(torch.randn(2, *INPUT))
    assert torch.equal(bn.running_mean, before)
    Bias().prepare(model)
    assert model.features.training and bn.weight.requires_grad


@pytest.mark.parametrize("name", list(MODES))
def test_every_finetune_option_builds_the_mode_its_name_names(name: str) -> None:
    node = OmegaConf.load(CONF / "finetune" / f"{name}.yaml")
    mode = instantiate(node, cache_features=False)
    assert type(mode) is MODES[name] and mode.name == node.mode == name
    assert mode == mode_named(name, cache_features=False)
