"""Building blocks shared by fedsim's MobileNet models.

This module owns the pieces both MobileNets are made of: channel rounding
(``make_divisible``), the conv + norm + activation unit (``ConvNormAct``), the
squeeze-and-excitation gate of MobileNetV3 (``SqueezeExcitation``), the norm
factories a federated run may swap in (``group_norm``, ``no_norm``), the stride
planner that adapts ImageNet networks to tiny inputs (``stride_plan``) and the
weight initialisation (``init_weights``).

References
----------
.. [1] Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
   CVPR 2018. https://arxiv.org/abs/1801.04381
.. [2] Howard et al., "Searching for MobileNetV3", ICCV 2019.
   https://arxiv.org/abs/1905.02244
.. [3] Hsieh et al., "The Non-IID Data Quagmire of Decentralized Machine
   Learning", ICML 2020 (GroupNorm instead of BatchNorm under non-IID data).
   https://arxiv.org/abs/1910.00189
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

# A norm factory: takes a channel count, returns the module that normalises it.
NormLayer = Callable[[int], nn.Module]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor``.

    Taken from the reference code of [1]_ (also used by [2]_): channel counts
    that are multiples of 8 run well on mobile kernels, so every width
    multiplier is rounded this way.

    Parameters
    ----------
    v : float
        Unrounded channel count, e.g. ``32 * width_mult``.
    divisor : int
        The result is a multiple of this.
    min_value : int or None
        Lower bound on the result; defaults to ``divisor``.

    Returns
    -------
    int
        The rounded channel count, never more than 10 % below ``v``.

    Examples
    --------
    >>> make_divisible(32 * 0.5), make_divisible(32 * 0.35), make_divisible(100)
    (16, 16, 104)
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    # Rounding down must not remove more than 10 % of the channels.
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def group_norm(num_channels: int, groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest group count ``<= groups`` dividing ``num_channels``.

    BatchNorm's running statistics drift apart across clients with non-IID data
    and need per-sample statistics that DP-SGD forbids; GroupNorm has neither
    problem [3]_. Choosing a divisor (rather than failing) lets any width
    multiplier work.

    Parameters
    ----------
    num_channels : int
        Channels to normalise.
    groups : int
        Upper bound on the number of groups.

    Returns
    -------
    nn.GroupNorm
        E.g. 8 groups for 24, 40 or 576 channels; 5 groups for 20 channels.
    """
    num_groups = max(g for g in range(1, min(groups, num_channels) + 1) if num_channels % g == 0)
    return nn.GroupNorm(num_groups, num_channels)


def no_norm(num_channels: int) -> nn.Identity:
    """A norm factory that normalises nothing (for ablations and tiny models).

    ``ConvNormAct`` recognises the returned ``nn.Identity`` and gives its conv
    a bias, since no norm's shift is there to absorb one.
    """
    return nn.Identity()


class ConvNormAct(nn.Sequential):
    """Conv2d, then a norm, then an optional activation.

    Padding is ``(kernel_size - 1) // 2`` so a stride-1 conv keeps the spatial
    size and a stride-2 conv maps ``H`` to ``ceil(H / 2)``.

    Parameters
    ----------
    in_channels, out_channels : int
        Conv input / output channels.
    kernel_size : int
        Square kernel side.
    stride : int
        Conv stride.
    groups : int
        ``in_channels`` for a depthwise conv, 1 for a dense one.
    norm_layer : NormLayer
        Factory for the norm after the conv.
    activation : type[nn.Module] or None
        Activation class (e.g. ``nn.ReLU6``); ``None`` for a linear output,
        as in the projection of an inverted residual block [1]_.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm_layer: NormLayer = nn.BatchNorm2d,
        activation: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        norm = norm_layer(out_channels)
        # A following norm subtracts the mean, so a conv bias would be wasted.
        has_bias = isinstance(norm, nn.Identity)
        padding = (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=has_bias),
            norm,
        ]
        if activation is not None:
            # Not in place: per-sample-gradient tools (vmap, DP hooks) break on in-place ops.
            layers.append(activation())
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation gate as used in MobileNetV3 [2]_.

    Global-average-pool the input, squeeze to ``make_divisible(channels // 4)``
    with ReLU, expand back and scale each input channel by a hard sigmoid.

    Parameters
    ----------
    channels : int
        Channels of the gated feature map.
    squeeze_factor : int
        Reduction ratio of the bottleneck (4 in [2]_).
    """

    def __init__(self, channels: int, squeeze_factor: int = 4) -> None:
        super().__init__()
        squeeze_channels = make_divisible(channels // squeeze_factor)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.pool(x)  # (B, C, 1, 1)
        scale = self.gate(self.fc2(self.relu(self.fc1(scale))))  # (B, C, 1, 1)
        return x * scale  # (B, C, H, W)


def stride_plan(strides: list[int], input_size: int) -> list[int]:
    """Drop the earliest stride-2 layers so a small input keeps a usable map.

    The MobileNets downsample by 32: a 224 px image ends as a 7x7 map, but a
    28 px Fashion-MNIST image would collapse to 1x1 and an 8 px digit would
    vanish after the third stride. Like the CIFAR variants of these networks
    (e.g. kuangliu/pytorch-cifar's MobileNetV2 sets the stem and the 24-channel
    stage to stride 1), the earliest strides are removed first: early layers
    are narrow, so keeping resolution there is cheap, and the late stages keep
    their downsampling and hence their receptive-field growth.

    The planned total stride ``T`` is the largest power of two ``<= 32`` with
    ``input_size / T >= 3.5``, so the last feature map is about 4x4 or larger.

    Parameters
    ----------
    strides : list of int
        Strides (1 or 2) of the stride-carrying layers in order: the stem,
        then the first layer of each stage.
    input_size : int
        Side of the square input image in pixels.

    Returns
    -------
    list of int
        ``strides`` with the earliest 2s replaced by 1 until the product is
        ``<= T``. E.g. a total of 32 becomes 32 at 224 px, 8 at 32 or 28 px,
        and 2 at 8 px.
    """
    if any(s not in (1, 2) for s in strides):
        raise ValueError(f"strides must be 1 or 2, got {strides}")
    target = 1
    while target < 32 and input_size / (target * 2) >= 3.5:
        target *= 2
    planned = list(strides)
    for i, s in enumerate(planned):
        if math.prod(planned) <= target:
            break
        if s == 2:
            planned[i] = 1
    return planned


def init_weights(model: nn.Module) -> None:
    """Initialise weights in place as torchvision's MobileNets do.

    Kaiming-normal (fan-out) convs, unit-scale zero-shift norms, ``N(0, 0.01)``
    linear layers and zero biases, so a fresh model of either family starts
    from the same distribution as the reference implementations.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class FeaturesClassifier(nn.Module):
    """A convolutional trunk (``features``) and a head (``classifier``) joined by global pooling.

    The split is the seam on-device fine-tuning works with: head-only training freezes
    ``features``; subclasses only build the two parts.
    """

    features: nn.Sequential
    classifier: nn.Sequential

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (B, C, H / T, W / T), T = total stride
        x = nn.functional.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1)
        x = torch.flatten(x, 1)  # (B, C)
        return self.classifier(x)  # (B, num_classes)

