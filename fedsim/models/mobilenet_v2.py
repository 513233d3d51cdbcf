"""MobileNetV2: inverted residuals with linear bottlenecks (Sandler et al., 2018).

The file reads top to bottom: architecture table (Table 2 of the paper), the
inverted residual block, the model, and the ``mobilenet_v2`` builder that adapts
the table to the input size and width multiplier.

At width 1.0, 1000 classes and 224 px the model has 3,504,872 parameters, the
count of the reference implementation (torchvision); the paper reports 3.4M.

References
----------
.. [1] Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals
   and Linear Bottlenecks", CVPR 2018. https://arxiv.org/abs/1801.04381
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

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
class BottleneckStage:
    """One row of Table 2 in [1]_: ``repeats`` inverted residual blocks.

    Attributes
    ----------
    expand : int
        Expansion factor t: hidden channels = ``expand * in_channels``.
    channels : int
        Output channels c (before the width multiplier).
    repeats : int
        Number of blocks n in the stage.
    stride : int
        Stride s of the stage's first block; the others use stride 1.
    """

    expand: int
    channels: int
    repeats: int
    stride: int


# Table 2 of [1]_, after the 32-channel stride-2 stem.
MOBILENET_V2_STAGES: tuple[BottleneckStage, ...] = (
    BottleneckStage(expand=1, channels=16, repeats=1, stride=1),
    BottleneckStage(expand=6, channels=24, repeats=2, stride=2),
    BottleneckStage(expand=6, channels=32, repeats=3, stride=2),
    BottleneckStage(expand=6, channels=64, repeats=4, stride=2),
    BottleneckStage(expand=6, channels=96, repeats=3, stride=1),
    BottleneckStage(expand=6, channels=160, repeats=3, stride=2),
    BottleneckStage(expand=6, channels=320, repeats=1, stride=1),
)
STEM_CHANNELS = 32
STEM_STRIDE = 2
LAST_CHANNEL = 1280


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> linear project (1x1), plus a skip.

    The projection has no activation: [1]_ shows ReLU on the narrow bottleneck
    destroys information, hence "linear bottleneck". The skip connects the
    narrow ends and only exists when the shape is unchanged.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the block's input and output.
    stride : int
        Stride of the depthwise conv.
    expand : int
        Expansion factor t; 1 skips the expansion conv.
    norm_layer : NormLayer
        Norm factory for every conv.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int, norm_layer: NormLayer) -> None:
        super().__init__()
        hidden = round(in_channels * expand)
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(in_channels, hidden, 1, norm_layer=norm_layer, activation=nn.ReLU6))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride, groups=hidden, norm_layer=norm_layer, activation=nn.ReLU6),
            ConvNormAct(hidden, out_channels, 1, norm_layer=norm_layer, activation=None),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)  # (B, C_out, H / stride, W / stride)
        return x + out if self.use_residual else out


class MobileNetV2(FeaturesClassifier):
    """MobileNetV2 [1]_ split into ``features`` and ``classifier``.

    ``features`` ends with the 1x1 conv to ``last_channel``; ``classifier`` is
    dropout and one linear layer. Freezing ``features`` leaves a linear head,
    the seam head-only fine-tuning uses.

    Parameters
    ----------
    stages : sequence of BottleneckStage
        Architecture table, strides already planned for the input size.
    stem_stride : int
        Stride of the first 3x3 conv (2 in [1]_, 1 for small inputs).
    num_classes : int
        Output logits.
    in_channels : int
        Input image channels.
    width_mult : float
        Multiplier on every channel count, rounded to multiples of 8.
    dropout : float
        Dropout probability before the linear classifier.
    norm_layer : NormLayer
        Norm factory for every conv.
    """

    def __init__(
        self,
        stages: Sequence[BottleneckStage],
        stem_stride: int,
        num_classes: int,
        in_channels: int,
        width_mult: float,
        dropout: float,
        norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        channels = make_divisible(STEM_CHANNELS * width_mult)
        # Widths below 1 keep the full 1280-channel head, as the paper's code does.
        self.last_channel = make_divisible(LAST_CHANNEL * max(1.0, width_mult))

        layers: list[nn.Module] = [
            ConvNormAct(in_channels, channels, 3, stem_stride, norm_layer=norm_layer, activation=nn.ReLU6)
        ]
        for stage in stages:
            out_channels = make_divisible(stage.channels * width_mult)
            for i in range(stage.repeats):
                stride = stage.stride if i == 0 else 1
                layers.append(InvertedResidual(channels, out_channels, stride, stage.expand, norm_layer))
                channels = out_channels
        layers.append(ConvNormAct(channels, self.last_channel, 1, norm_layer=norm_layer, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)

        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(self.last_channel, num_classes),
        )
        init_weights(self)


def mobilenet_v2(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    norm_layer: NormLayer | None = None,
) -> MobileNetV2:
    """Build a MobileNetV2 [1]_ sized for ``input_size`` pixel inputs.

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
        Channel multiplier (the paper evaluates 0.35 to 1.4).
    dropout : float
        Dropout probability before the classifier.
    norm_layer : NormLayer or None
        Norm factory, e.g. ``group_norm`` or ``no_norm``; ``None`` means
        ``nn.BatchNorm2d`` with its default settings, as in [1]_.

    Returns
    -------
    MobileNetV2
        Randomly initialised model.
    """
    strides = stride_plan([STEM_STRIDE] + [s.stride for s in MOBILENET_V2_STAGES], input_size)
    stages = [replace(stage, stride=s) for stage, s in zip(MOBILENET_V2_STAGES, strides[1:], strict=True)]
    return MobileNetV2(
        stages=stages,
        stem_stride=strides[0],
        num_classes=num_classes,
        in_channels=in_channels,
        width_mult=width_mult,
        dropout=dropout,
        norm_layer=norm_layer if norm_layer is not None else nn.BatchNorm2d,
    )
