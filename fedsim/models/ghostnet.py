"""GhostNet: more features from cheap operations (Han et al., 2020).

The file reads top to bottom: architecture table (Table 1 of the paper), the
ghost module, its squeeze-and-excitation gate, the ghost bottleneck, the model,
and the ``ghostnet`` builder that adapts the table to the input size and width.

Table 1 of [1]_ (``#exp``: hidden channels of the bottleneck, ``SE``: squeeze-
and-excitation after the depthwise stage; channels at width 1.0)::

    input        operator        #exp  #out  SE  stride
    224^2 x 3    Conv2d 3x3        -    16   -    2
    112^2 x 16   G-bneck          16    16   -    1
    112^2 x 16   G-bneck          48    24   -    2
    56^2 x 24    G-bneck          72    24   -    1
    56^2 x 24    G-bneck (5x5)    72    40   1    2
    28^2 x 40    G-bneck (5x5)   120    40   1    1
    28^2 x 40    G-bneck         240    80   -    2
    14^2 x 80    G-bneck         200    80   -    1
    14^2 x 80    G-bneck         184    80   -    1
    14^2 x 80    G-bneck         184    80   -    1
    14^2 x 80    G-bneck         480   112   1    1
    14^2 x 112   G-bneck         672   112   1    1
    14^2 x 112   G-bneck (5x5)   672   160   1    2
    7^2 x 160    G-bneck (5x5)   960   160   -    1
    7^2 x 160    G-bneck (5x5)   960   160   1    1
    7^2 x 160    G-bneck (5x5)   960   160   -    1
    7^2 x 160    G-bneck (5x5)   960   160   1    1
    7^2 x 160    Conv2d 1x1        -   960   -    1
    7^2 x 960    AvgPool 7x7       -     -   -    -
    1^2 x 960    Conv2d 1x1        -  1280   -    1
    1^2 x 1280   FC                -  1000   -    -

Channel counts follow the official code [2]_: every count times the width,
rounded to a multiple of 4; the 1280-channel head is not scaled. At width 1.0,
1000 classes and 224 px the model has 5,182,508 parameters, the count of the
official implementation [2]_ (its ``ghostnet()``); the paper's Table 7 reports
5.2M.

References
----------
.. [1] Han, Wang, Tian, Guo, Xu, Xu, "GhostNet: More Features from Cheap
   Operations", CVPR 2020. https://arxiv.org/abs/1911.11907
.. [2] huawei-noah/Efficient-AI-Backbones, ``ghostnet_pytorch/ghostnet.py``
   (the official PyTorch code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from fedsim.models.layers import (
    ConvNormAct,
    FeaturesClassifier,
    NormLayer,
    init_weights,
    make_divisible,
    stride_plan,
)


@dataclass(frozen=True)
class GhostRow:
    """One G-bneck row of Table 1 in [1]_ (channels before the width multiplier).

    Attributes
    ----------
    kernel : int
        Kernel of the stride-2 depthwise conv and of the shortcut's depthwise conv.
    expanded : int
        Hidden channels (#exp) of the bottleneck.
    out : int
        Output channels (#out).
    use_se : bool
        Whether a squeeze-and-excitation gate precedes the second ghost module.
    stride : int
        Stride of the bottleneck in [1]_; 2 adds a depthwise conv between the
        ghost modules and a conv shortcut.
    """

    kernel: int
    expanded: int
    out: int
    use_se: bool
    stride: int


# Table 1 of [1]_, after the 16-channel stride-2 stem.
GHOSTNET_ROWS: tuple[GhostRow, ...] = (
    GhostRow(kernel=3, expanded=16, out=16, use_se=False, stride=1),
    GhostRow(kernel=3, expanded=48, out=24, use_se=False, stride=2),
    GhostRow(kernel=3, expanded=72, out=24, use_se=False, stride=1),
    GhostRow(kernel=5, expanded=72, out=40, use_se=True, stride=2),
    GhostRow(kernel=5, expanded=120, out=40, use_se=True, stride=1),
    GhostRow(kernel=3, expanded=240, out=80, use_se=False, stride=2),
    GhostRow(kernel=3, expanded=200, out=80, use_se=False, stride=1),
    GhostRow(kernel=3, expanded=184, out=80, use_se=False, stride=1),
    GhostRow(kernel=3, expanded=184, out=80, use_se=False, stride=1),
    GhostRow(kernel=3, expanded=480, out=112, use_se=True, stride=1),
    GhostRow(kernel=3, expanded=672, out=112, use_se=True, stride=1),
    GhostRow(kernel=5, expanded=672, out=160, use_se=True, stride=2),
    GhostRow(kernel=5, expanded=960, out=160, use_se=False, stride=1),
    GhostRow(kernel=5, expanded=960, out=160, use_se=True, stride=1),
    GhostRow(kernel=5, expanded=960, out=160, use_se=False, stride=1),
    GhostRow(kernel=5, expanded=960, out=160, use_se=True, stride=1),
)
STEM_CHANNELS = 16
STEM_STRIDE = 2
LAST_CONV_CHANNELS = 960  # the 1x1 conv after the last G-bneck (scaled by the width)
HEAD_CHANNELS = 1280  # the 1x1 conv after the pool (not scaled, as in [2]_)
CHANNEL_DIVISOR = 4  # [2]_ rounds widths to multiples of 4, not 8 as the MobileNets do
GHOST_RATIO = 2  # s in [1]_: 1 / s of the outputs come from the primary conv
SE_RATIO = 0.25


class GhostModule(nn.Module):
    """Ghost module, Fig. 2(b) of [1]_: a few "intrinsic" maps and their cheap ghosts.

    A primary 1x1 conv makes ``ceil(out / s)`` intrinsic maps; a depthwise 3x3
    conv (the cheap linear transform) makes one ghost of each; both are
    concatenated. With ``s = 2`` this costs about half a 1x1 conv to ``out``.

    Parameters
    ----------
    in_channels, out_channels : int
        Module input and output channels.
    relu : bool
        ReLU after both convs (the expanding module) or none (the projecting
        one, linear like MobileNetV2's bottleneck projection).
    norm_layer : NormLayer
        Norm factory for both convs.
    """

    def __init__(
        self, in_channels: int, out_channels: int, relu: bool, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        intrinsic = math.ceil(out_channels / GHOST_RATIO)
        activation = nn.ReLU if relu else None
        self.primary = ConvNormAct(
            in_channels, intrinsic, 1, norm_layer=norm_layer, activation=activation
        )
        self.cheap = ConvNormAct(
            intrinsic, intrinsic * (GHOST_RATIO - 1), 3, groups=intrinsic, norm_layer=norm_layer,
            activation=activation,
        )
        self.out_channels = out_channels
        # An odd C_out makes one ghost too many; widths rounded to multiples of 4 never do.
        # Decided here, not on the tensor's shape in forward, so FX can trace the module (int8).
        self.trim = intrinsic * GHOST_RATIO != out_channels

    def forward(self, x: Tensor) -> Tensor:
        intrinsic = self.primary(x)  # (B, ceil(C_out / 2), H, W)
        out = torch.cat([intrinsic, self.cheap(intrinsic)], dim=1)  # (B, 2 * ceil(C_out / 2), H, W)
        return out[:, : self.out_channels] if self.trim else out  # (B, C_out, H, W)


class GhostSqueezeExcitation(nn.Module):
    """The SE gate of [2]_: pool, 1x1 reduce to a quarter, ReLU, 1x1 expand, hard sigmoid.

    As MobileNetV3's (``fedsim.models.layers.SqueezeExcitation``) but for the
    rounding of the reduced width (a multiple of 4, not 8), which [2]_'s
    parameter count depends on.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        reduced = make_divisible(channels * SE_RATIO, CHANNEL_DIVISOR)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Hardsigmoid()  # relu6(x + 3) / 6, [2]_'s hard_sigmoid

    def forward(self, x: Tensor) -> Tensor:
        scale = self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))  # (B, C, 1, 1)
        return x * scale  # (B, C, H, W)


class GhostBottleneck(nn.Module):
    """G-bneck, Fig. 3 of [1]_: ghost module -> [depthwise] -> [SE] -> ghost module, + shortcut.

    The shortcut is the identity when the shape is kept, else a depthwise conv
    (with the block's stride) and a 1x1 conv, as in [2]_.

    Parameters
    ----------
    in_channels : int
        Channels of the block input (width already applied).
    row : GhostRow
        The block's table row, width already applied; its stride decides the
        structure.
    stride : int
        The stride the block runs at: ``row.stride``, or 1 where a small input
        plans it away. The block keeps the layers of ``row.stride``, so the
        parameters do not depend on the input size.
    norm_layer : NormLayer
        Norm factory for every conv.
    """

    def __init__(self, in_channels: int, row: GhostRow, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            GhostModule(in_channels, row.expanded, relu=True, norm_layer=norm_layer)
        ]
        if row.stride > 1:
            layers.append(
                ConvNormAct(row.expanded, row.expanded, row.kernel, stride, groups=row.expanded,
                            norm_layer=norm_layer, activation=None)
            )
        if row.use_se:
            layers.append(GhostSqueezeExcitation(row.expanded))
        layers.append(GhostModule(row.expanded, row.out, relu=False, norm_layer=norm_layer))
        self.block = nn.Sequential(*layers)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != row.out or row.stride > 1:
            self.shortcut = nn.Sequential(
                ConvNormAct(in_channels, in_channels, row.kernel, stride, groups=in_channels,
                            norm_layer=norm_layer, activation=None),
                ConvNormAct(in_channels, row.out, 1, norm_layer=norm_layer, activation=None),
            )
        self.out_channels = row.out

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x) + self.shortcut(x)  # (B, C_out, H / stride, W / stride)


class GhostNet(FeaturesClassifier):
    """GhostNet [1]_ split into ``features`` and ``classifier``.

    ``features`` ends with the 1x1 conv to 960 channels (times the width).
    ``classifier`` is Linear(960 -> 1280) -> ReLU -> Dropout -> Linear: [1]_'s
    1x1 conv after the global pool acts on a 1x1 map, so it *is* a linear layer
    (same weights, reshaped), and this head is exactly [2]_'s.

    Parameters
    ----------
    rows : sequence of GhostRow
        Architecture table, channels not yet width-scaled.
    strides : sequence of int
        Planned stride of each row (``stride_plan``).
    stem_stride : int
        Stride of the first 3x3 conv (2 in [1]_, 1 for small inputs).
    num_classes : int
        Output logits.
    in_channels : int
        Input image channels.
    width_mult : float
        Multiplier on every channel count but the head's, rounded to multiples of 4.
    dropout : float
        Dropout probability before the last linear layer.
    norm_layer : NormLayer
        Norm factory for every conv.
    """

    def __init__(
        self,
        rows: Sequence[GhostRow],
        strides: Sequence[int],
        stem_stride: int,
        num_classes: int,
        in_channels: int,
        width_mult: float,
        dropout: float,
        norm_layer: NormLayer,
    ) -> None:
        super().__init__()

        def scale(channels: int) -> int:
            return make_divisible(channels * width_mult, CHANNEL_DIVISOR)

        channels = scale(STEM_CHANNELS)
        layers: list[nn.Module] = [
            ConvNormAct(in_channels, channels, 3, stem_stride, norm_layer=norm_layer)
        ]
        for row, stride in zip(rows, strides, strict=True):
            scaled = replace(row, expanded=scale(row.expanded), out=scale(row.out))
            layers.append(GhostBottleneck(channels, scaled, stride, norm_layer))
            channels = scaled.out
        last_conv_channels = scale(LAST_CONV_CHANNELS)
        layers.append(ConvNormAct(channels, last_conv_channels, 1, norm_layer=norm_layer))
        self.features = nn.Sequential(*layers)

        self.last_channel = HEAD_CHANNELS
        self.classifier = nn.Sequential(
            nn.Linear(last_conv_channels, HEAD_CHANNELS),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(HEAD_CHANNELS, num_classes),
        )
        init_weights(self)


def ghostnet(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    norm_layer: NormLayer | None = None,
) -> GhostNet:
    """Build a GhostNet [1]_ sized for ``input_size`` pixel inputs.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_channels : int
        Input image channels (1 for digits / Fashion-MNIST).
    input_size : int
        Side of the square input; the earliest strides are dropped for small
        inputs (see ``fedsim.models.layers.stride_plan``): total stride 32 at
        224 px, 8 at 28 or 32 px, 2 at 8 px.
    width_mult : float
        Channel multiplier (the paper evaluates 0.5 to 1.3).
    dropout : float
        Dropout probability before the last linear layer (0.2 in [2]_).
    norm_layer : NormLayer or None
        Norm factory, e.g. ``group_norm`` or ``no_norm``; ``None`` means
        ``nn.BatchNorm2d`` with its default settings, as in [2]_.

    Returns
    -------
    GhostNet
        Randomly initialised model.
    """
    strides = stride_plan([STEM_STRIDE] + [row.stride for row in GHOSTNET_ROWS], input_size)
    return GhostNet(
        rows=GHOSTNET_ROWS,
        strides=strides[1:],
        stem_stride=strides[0],
        num_classes=num_classes,
        in_channels=in_channels,
        width_mult=width_mult,
        dropout=dropout,
        norm_layer=norm_layer if norm_layer is not None else nn.BatchNorm2d,
    )
