"""MobileNetV3-Small: searched inverted residuals with SE and hard-swish (Howard et al., 2019).

The file reads top to bottom: architecture table (Table 2 of the paper), the
block, the model, and the ``mobilenet_v3_small`` builder that adapts the table
to the input size and width multiplier.

At width 1.0, 1000 classes and 224 px the model has 2,542,856 parameters, the
count of the reference implementation (torchvision); the paper reports 2.5M.

References
----------
.. [1] Howard et al., "Searching for MobileNetV3", ICCV 2019.
   https://arxiv.org/abs/1905.02244
.. [2] Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
   CVPR 2018. https://arxiv.org/abs/1801.04381
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

from torch import Tensor, nn

from fedsim.models.layers import (
    ConvNormAct,
    FeaturesClassifier,
    NormLayer,
    SqueezeExcitation,
    init_weights,
    make_divisible,
    stride_plan,
)


@dataclass(frozen=True)
class BneckRow:
    """One "bneck" row of Table 2 in [1]_ (channels before the width multiplier).

    Attributes
    ----------
    kernel : int
        Depthwise kernel size (3 or 5).
    expanded : int
        Hidden ("exp size") channels of the block.
    out : int
        Output channels (#out).
    use_se : bool
        Whether a squeeze-and-excitation gate follows the depthwise conv.
    activation : type[nn.Module]
        Non-linearity (NL): ``nn.ReLU`` early, ``nn.Hardswish`` where it pays off.
    stride : int
        Stride of the depthwise conv.
    """

    kernel: int
    expanded: int
    out: int
    use_se: bool
    activation: type[nn.Module]
    stride: int


# Table 2 of [1]_, after the 16-channel stride-2 hard-swish stem.
MOBILENET_V3_SMALL_ROWS: tuple[BneckRow, ...] = (
    BneckRow(kernel=3, expanded=16, out=16, use_se=True, activation=nn.ReLU, stride=2),
    BneckRow(kernel=3, expanded=72, out=24, use_se=False, activation=nn.ReLU, stride=2),
    BneckRow(kernel=3, expanded=88, out=24, use_se=False, activation=nn.ReLU, stride=1),
    BneckRow(kernel=5, expanded=96, out=40, use_se=True, activation=nn.Hardswish, stride=2),
    BneckRow(kernel=5, expanded=240, out=40, use_se=True, activation=nn.Hardswish, stride=1),
    BneckRow(kernel=5, expanded=240, out=40, use_se=True, activation=nn.Hardswish, stride=1),
    BneckRow(kernel=5, expanded=120, out=48, use_se=True, activation=nn.Hardswish, stride=1),
    BneckRow(kernel=5, expanded=144, out=48, use_se=True, activation=nn.Hardswish, stride=1),
    BneckRow(kernel=5, expanded=288, out=96, use_se=True, activation=nn.Hardswish, stride=2),
    BneckRow(kernel=5, expanded=576, out=96, use_se=True, activation=nn.Hardswish, stride=1),
    BneckRow(kernel=5, expanded=576, out=96, use_se=True, activation=nn.Hardswish, stride=1),
)
STEM_CHANNELS = 16
STEM_STRIDE = 2
LAST_CONV_EXPANSION = 6  # last 1x1 conv: 96 -> 576 channels
LAST_CHANNEL = 1024  # hidden width of the classifier


class InvertedResidual(nn.Module):
    """MobileNetV3 bneck: expand (1x1) -> depthwise -> optional SE -> linear project (1x1).

    The MobileNetV2 block [2]_ with a per-row kernel size and activation and an
    SE gate on the expanded features. The first row of the small model has
    ``expanded == in_channels`` and so has no expansion conv.

    Parameters
    ----------
    in_channels : int
        Channels of the block input (width multiplier already applied).
    row : BneckRow
        The block's table row, width multiplier already applied.
    norm_layer : NormLayer
        Norm factory for every conv.
    """

    def __init__(self, in_channels: int, row: BneckRow, norm_layer: NormLayer) -> None:
        super().__init__()
        self.use_residual = row.stride == 1 and in_channels == row.out
        layers: list[nn.Module] = []
        if row.expanded != in_channels:
            layers.append(
                ConvNormAct(in_channels, row.expanded, 1, norm_layer=norm_layer, activation=row.activation)
            )
        layers.append(
            ConvNormAct(
                row.expanded,
                row.expanded,
                row.kernel,
                row.stride,
                groups=row.expanded,
                norm_layer=norm_layer,
                activation=row.activation,
            )
        )
        if row.use_se:
            layers.append(SqueezeExcitation(row.expanded))
        layers.append(ConvNormAct(row.expanded, row.out, 1, norm_layer=norm_layer, activation=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = row.out

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)  # (B, C_out, H / stride, W / stride)
        return x + out if self.use_residual else out


class MobileNetV3(FeaturesClassifier):
    """MobileNetV3 [1]_ split into ``features`` and ``classifier``.

    ``features`` ends with the 1x1 hard-swish conv to ``6 * last_out`` channels
    (576 for the small model). ``classifier`` is Linear -> Hardswish -> Dropout
    -> Linear as in [1]_; freezing ``features`` leaves this head trainable.

    Parameters
    ----------
    rows : sequence of BneckRow
        Architecture table, strides planned, channels not yet width-scaled.
    stem_stride : int
        Stride of the first 3x3 conv (2 in [1]_, 1 for small inputs).
    num_classes : int
        Output logits.
    in_channels : int
        Input image channels.
    width_mult : float
        Multiplier on every channel count, rounded to multiples of 8.
    dropout : float
        Dropout probability inside the classifier.
    norm_layer : NormLayer
        Norm factory for every conv.
    """

    def __init__(
        self,
        rows: Sequence[BneckRow],
        stem_stride: int,
        num_classes: int,
        in_channels: int,
        width_mult: float,
        dropout: float,
        norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        channels = make_divisible(STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [
            ConvNormAct(in_channels, channels, 3, stem_stride, norm_layer=norm_layer, activation=nn.Hardswish)
        ]
        for row in rows:
            scaled = replace(
                row, expanded=make_divisible(row.expanded * width_mult), out=make_divisible(row.out * width_mult)
            )
            layers.append(InvertedResidual(channels, scaled, norm_layer))
            channels = scaled.out
        last_conv_channels = LAST_CONV_EXPANSION * channels
        layers.append(ConvNormAct(channels, last_conv_channels, 1, norm_layer=norm_layer, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)

        # Unlike MobileNetV2, the classifier's hidden width follows the multiplier (as in torchvision).
        self.last_channel = make_divisible(LAST_CHANNEL * width_mult)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv_channels, self.last_channel),
            nn.Hardswish(),
            nn.Dropout(dropout),
            nn.Linear(self.last_channel, num_classes),
        )
        init_weights(self)


def mobilenet_v3_small(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    norm_layer: NormLayer | None = None,
) -> MobileNetV3:
    """Build a MobileNetV3-Small [1]_ sized for ``input_size`` pixel inputs.

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
        Channel multiplier (the paper evaluates 0.35 to 1.25).
    dropout : float
        Dropout probability inside the classifier.
    norm_layer : NormLayer or None
        Norm factory, e.g. ``group_norm`` or ``no_norm``; ``None`` means
        ``nn.BatchNorm2d(eps=0.001, momentum=0.01)``, the settings of [1]_.

    Returns
    -------
    MobileNetV3
        Randomly initialised model.
    """
    strides = stride_plan([STEM_STRIDE] + [row.stride for row in MOBILENET_V3_SMALL_ROWS], input_size)
    rows = [replace(row, stride=s) for row, s in zip(MOBILENET_V3_SMALL_ROWS, strides[1:], strict=True)]
    if norm_layer is None:
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
    return MobileNetV3(
        rows=rows,
        stem_stride=strides[0],
        num_classes=num_classes,
        in_channels=in_channels,
        width_mult=width_mult,
        dropout=dropout,
        norm_layer=norm_layer,
    )
