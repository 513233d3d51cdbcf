"""The quantised fine-tuning modes: fake-quant maths by hand, QAT and int8-head training."""

import math

import pytest
import torch
from torch import nn

from clients.finetune import Full, Head, Int8Head, Qat, pooled_features
from clients.quantize import (
    FakeQuantMode,
    affine_qparams,
    ema_range,
    fake_quantize_activation,
    fake_quantize_weight,
    int8_weight_bytes,
    quantize_backbone,
    symmetric_scales,
)
from clients.training import LocalRecipe, train_in_mode
from fedsim.models.mobilenet_v2 import mobilenet_v2

torch.set_num_threads(1)

INPUT = (1, 8, 8)  # the digits dataset's images


def student() -> nn.Module:
    torch.manual_seed(0)
    return mobilenet_v2(num_classes=10, in_channels=1, input_size=8, width_mult=0.5)


def shard(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, *INPUT, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_affine_qparams_by_hand() -> None:
    # [-1, 1.55] over 255 steps: scale 0.01, and 0 sits 100 steps above -1.
    assert affine_qparams(-1.0, 1.55) == pytest.approx((0.01, 100))
    # A range that excludes 0 is widened to contain it: [0, 2.55], zero point 0.
    assert affine_qparams(0.5, 2.55) == pytest.approx((0.01, 0))


def test_activation_round_trip_is_within_half_a_step() -> None:
    x = torch.tensor([0.0, 0.004, 0.006, -1.0, 1.55, 0.123])
    out = fake_quantize_activation(x, -1.0, 1.55)
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 0.01, -1.0, 1.55, 0.12]), atol=1e-6)
    dense = torch.linspace(-1.0, 1.55, 1001)
    error = (fake_quantize_activation(dense, -1.0, 1.55) - dense).abs()
    assert error.max() <= 0.01 / 2 + 1e-6
    # Outside the range values clamp to its ends.
    assert fake_quantize_activation(torch.tensor([3.0]), -1.0, 1.55).item() == pytest.approx(1.55)


def test_per_channel_weight_round_trip_is_within_half_a_step() -> None:
    w = torch.tensor([[1.27, -0.5, 0.3], [0.0127, 0.002, -0.0063]])
    scales = symmetric_scales(w)  # max |w| / 127 per row
    assert torch.allclose(scales, torch.tensor([0.01, 0.0001]))
    error = (fake_quantize_weight(w) - w).abs()
    assert torch.all(error <= scales[:, None] / 2 + 1e-7)
    # Per channel, the small row keeps its values (rounded to 1e-4); one scale for the whole
    # tensor (0.01) would round all of it to 0.
    assert torch.allclose(fake_quantize_weight(w)[1], torch.tensor([0.0127, 0.002, -0.0063]))


def test_straight_through_gradient_is_zero_outside_the_range() -> None:
    x = torch.tensor([-2.0, -0.5, 0.5, 2.0], requires_grad=True)
    fake_quantize_activation(x, -1.0, 1.0).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_ema_range_by_hand() -> None:
    assert ema_range(None, -1.0, 1.0) == (-1.0, 1.0)
    assert ema_range((-1.0, 1.0), -3.0, 5.0) == pytest.approx((-1.02, 1.04))


def test_fake_quant_mode_quantises_a_linear_layer_by_hand() -> None:
    linear = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0.004]]))
    # Weight scale 1/127: 0.004 rounds up to one step. Output 1 + 1/127 is the top of its own
    # observed range [0, 1 + 1/127], so it is exact; float would give 1.004.
    with FakeQuantMode(linear):
        out = linear(torch.ones(1, 2))
    assert out.item() == pytest.approx(1 + 1 / 127, abs=1e-6)
    assert linear(torch.ones(1, 2)).item() == pytest.approx(1.004, abs=1e-6)


def hooks_of(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def test_qat_leaves_a_plain_float_model_with_the_same_names() -> None:
    model = student()
    keys, types = list(model.state_dict()), [type(m) for m in model.modules()]
    before = [p.detach().clone() for p in model.parameters()]
    x, y = shard()
    result = train_in_mode(model, x, y, LocalRecipe(1, 8, 0.05), torch.Generator().manual_seed(0), Qat())
    assert result.steps == 3 and math.isfinite(result.mean_loss)
    assert list(model.state_dict()) == keys and [type(m) for m in model.modules()] == types
    assert hooks_of(model) == 0 and torch._C._len_torch_function_stack() == 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()) if a.dim() > 1)
    assert Qat().trainable_names(model) == set(dict(model.named_parameters()))


def test_int8_head_trains_the_head_over_a_real_int8_backbone() -> None:
    model = student()
    x, y = shard()
    backbone = {k: v.clone() for k, v in model.features.state_dict().items()}
    head = [p.detach().clone() for p in model.classifier.parameters()]
    recipe = LocalRecipe(2, 8, 0.1, momentum=0.9)
    result = train_in_mode(model, x, y, recipe, torch.Generator().manual_seed(0), Int8Head())
    assert result.steps == 6 and result.num_examples == 24
    # Bit-identical backbone, BatchNorm statistics included; the head moved.
    assert all(torch.equal(v, model.features.state_dict()[k]) for k, v in backbone.items())
    assert all(not torch.equal(a, b) for a, b in zip(head, model.classifier.parameters()))
    assert hooks_of(model) == 0 and isinstance(model.features, nn.Sequential)
    assert Int8Head().trainable_names(model) == Head().trainable_names(model)


def test_int8_backbone_is_int8_and_close_to_float() -> None:
    model = student().eval()
    x, _ = shard()
    quantized = quantize_backbone(model.features, x)
    convs = [m for m in quantized.modules() if callable(getattr(m, "weight", None))]
    assert convs and all(m.weight().dtype == torch.qint8 for m in convs)
    float_features, int8_features = pooled_features(model.features, x), pooled_features(quantized, x)
    assert (int8_features - float_features).norm() < 0.2 * float_features.norm()
    # Float weights of 4 bytes become 1 byte plus per-channel qparams: under a third.
    float_bytes = sum(p.numel() * 4 for p in model.features.parameters())
    assert int8_weight_bytes(quantized) < float_bytes / 3


def test_int8_weight_bytes_by_hand() -> None:
    # Conv(1 -> 2, 3x3, no bias) + ReLU: 18 int8 weights plus an fp32 scale and int32 zero point
    # for each of the 2 output channels = 18 + 16 = 34 bytes; no bias to store.
    net = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.ReLU()).eval()
    quantized = quantize_backbone(net, torch.randn(4, 1, 6, 6))
    assert int8_weight_bytes(quantized) == 34


def test_one_model_instance_is_reusable_across_modes() -> None:
    model = student()
    x, y = shard(16)
    for mode in (Int8Head(), Qat(), Head(), Full()):
        train_in_mode(model, x, y, LocalRecipe(1, 8, 0.05), torch.Generator().manual_seed(0), mode)
    assert all(p.requires_grad for p in model.parameters()) and hooks_of(model) == 0
    assert isinstance(model.features, nn.Sequential)
