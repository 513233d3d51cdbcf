"""ShuffleNetV2: channel split, channel shuffle and cheap units (Ma et al., 2018).

The file reads top to bottom: architecture table (Tables 2 and 5 of the paper),
the channel shuffle, the ShuffleNetV2 unit, the model, and the ``shufflenet_v2``
builder that adapts the table to the input size and width.

Table 5 of [1]_ (output channels per stage; every stage starts with a stride-2
unit and then repeats the basic unit)::

    layer        output (224 px)  ksize stride repeat   0.5x  1.0x  1.5x  2.0x
    Image        224x224                                   3     3     3     3
    Conv1        112x112          3x3    2      1         24    24    24    24
    MaxPool       56x56           3x3    2
    Stage2        28x28                  2      1         48   116   176   244
                  28x28                  1      3
    Stage3        14x14                  2      1         96   232   352   488
                  14x14                  1      7
    Stage4         7x7                   2      1        192   464   704   976
                   7x7                   1      3
    Conv5          7x7            1x1    1      1       1024  1024  1024  2048
    GlobalPool     1x1            7x7
    FC                                                  1000  1000  1000  1000

The width is not a free multiplier: the paper picks the channel counts of each
width by hand (so that units keep the same FLOPs), so ``width_mult`` must be one
of 0.5, 1.0, 1.5 or 2.0. At width 1.0, 1000 classes and 224 px the model has
2,278,604 parameters, the count of the reference implementation (torchvision's
``shufflenet_v2_x1_0``); the paper reports 2.3M.

References
----------
.. [1] Ma, Zhang, Zheng, Sun, "ShuffleNet V2: Practical Guidelines for Efficient
   CNN Architecture Design", ECCV 2018. https://arxiv.org/abs/1807.11164
.. [2] Zhang, Zhou, Lin, Sun, "ShuffleNet: An Extremely Efficient Convolutional
   Neural Network for Mobile Devices", CVPR 2018 (channel shuffle).
   https://arxiv.org/abs/1707.01083
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from fedsim.models.layers import (
    ConvNormAct,
    FeaturesClassifier,
    NormLayer,
    init_weights,
    stride_plan,
)


@dataclass(frozen=True)
class ShuffleStage:
    """One stage of Table 5 in [1]_: a downsampling unit, then ``repeats - 1`` basic units.

    Attributes
    ----------
    repeats : int
        Units in the stage, the first one included.
    stride : int
        Stride of the first unit (2 in [1]_; 1 when a small input keeps its resolution).
    """

    repeats: int
    stride: int


# Table 5 of [1]_: Stage2, Stage3, Stage4 after the stride-2 stem and stride-2 max pool.
SHUFFLENET_V2_STAGES: tuple[ShuffleStage, ...] = (
    ShuffleStage(repeats=4, stride=2),
    ShuffleStage(repeats=8, stride=2),
    ShuffleStage(repeats=4, stride=2),
)
STEM_CHANNELS = 24
STEM_STRIDE = 2
MAX_POOL_STRIDE = 2
# Table 5 of [1]_: (Stage2, Stage3, Stage4, Conv5) output channels per width.
WIDTH_CHANNELS: dict[float, tuple[int, int, int, int]] = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}
SHUFFLE_GROUPS = 2  # the unit concatenates two branches


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` equal channel groups ([2]_ Fig. 1).

    Channel ``g * n + i`` moves to ``i * groups + g``; for two groups this
    alternates the two branches' channels, so the next unit's channel split
    mixes information from both. Written as unflatten / transpose / flatten
    (no ``x.size()`` unpacking) so FX can trace it for int8 quantisation.
    """
    x = x.unflatten(1, (groups, -1))  # (B, groups, C / groups, H, W)
    x = x.transpose(1, 2)  # (B, C / groups, groups, H, W)
    return x.flatten(1, 2)  # (B, C, H, W), a copy: the transpose is not contiguous


class ShuffleUnit(nn.Module):
    """The ShuffleNetV2 unit, Fig. 3(c) (basic) and 3(d) (downsampling) of [1]_.

    Basic unit: split the channels in half; one half passes through untouched
    (guideline G1-G4 of [1]_: equal widths, no group convs, fewer fragments and
    element-wise ops), the other runs 1x1 -> depthwise 3x3 -> 1x1; concatenate
    and shuffle. Downsampling unit: no split; both branches see the whole input
    (left: depthwise 3x3 -> 1x1; right: as in the basic unit), so the channels
    double. The depthwise convs have no activation, as in [1]_.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the unit's input and output.
    stride : int
        Stride of the depthwise convs.
    downsample : bool
        Build the two-branch unit. It is the first unit of a stage, where the
        channel count changes; it stays two-branch at stride 1 when a small
        input plans its stride away, so the parameters do not depend on the
        input size.
    norm_layer : NormLayer
        Norm factory for every conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        downsample: bool,
        norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        if not downsample and (stride != 1 or in_channels != out_channels):
            raise ValueError("a basic ShuffleNetV2 unit has stride 1 and in == out channels")
        branch = out_channels // 2
        self.downsample = downsample
        self.left: nn.Sequential | None = None
        if downsample:
            self.left = nn.Sequential(
                ConvNormAct(
                    in_channels, in_channels, 3, stride, groups=in_channels, norm_layer=norm_layer,
                    activation=None,
                ),
                ConvNormAct(in_channels, branch, 1, norm_layer=norm_layer),
            )
        self.right = nn.Sequential(
            ConvNormAct(in_channels if downsample else branch, branch, 1, norm_layer=norm_layer),
            ConvNormAct(
                branch, branch, 3, stride, groups=branch, norm_layer=norm_layer, activation=None
            ),
            ConvNormAct(branch, branch, 1, norm_layer=norm_layer),
        )
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.left is not None:
            out = torch.cat([self.left(x), self.right(x)], dim=1)  # (B, C_out, H / s, W / s)
        else:
            kept, transformed = x.chunk(2, dim=1)  # two (B, C / 2, H, W) views
            out = torch.cat([kept, self.right(transformed)], dim=1)  # (B, C, H, W)
        return channel_shuffle(out, SHUFFLE_GROUPS)


class ShuffleNetV2(FeaturesClassifier):
    """ShuffleNetV2 [1]_ split into ``features`` and ``classifier``.

    ``features`` runs the stem, the (optional) max pool, the three stages and
    Conv5; ``classifier`` is dropout and the FC layer (the global pool of
    Table 5 is ``FeaturesClassifier``'s). [1]_ uses no dropout except for 2.0x.

    Parameters
    ----------
    stages : sequence of ShuffleStage
        Architecture table, strides already planned for the input size.
    stem_stride, pool_stride : int
        Strides of Conv1 and of the max pool; a max pool planned to stride 1
        is left out (a stride-1 3x3 max pool only blurs), as the CIFAR variants
        of ShuffleNetV2 do.
    channels : tuple of int
        Stage2, Stage3, Stage4 and Conv5 output channels (a row of Table 5).
    num_classes : int
        Output logits.
    in_channels : int
        Input image channels.
    dropout : float
        Dropout probability before the FC layer.
    norm_layer : NormLayer
        Norm factory for every conv.
    """

    def __init__(
        self,
        stages: Sequence[ShuffleStage],
        stem_stride: int,
        pool_stride: int,
        channels: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int,
        dropout: float,
        norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        *stage_channels, self.last_channel = channels
        layers: list[nn.Module] = [
            ConvNormAct(in_channels, STEM_CHANNELS, 3, stem_stride, norm_layer=norm_layer)
        ]
        if pool_stride == 2:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        width = STEM_CHANNELS
        for stage, out_channels in zip(stages, stage_channels, strict=True):
            layers.append(ShuffleUnit(width, out_channels, stage.stride, True, norm_layer))
            for _ in range(stage.repeats - 1):
                layers.append(ShuffleUnit(out_channels, out_channels, 1, False, norm_layer))
            width = out_channels
        layers.append(ConvNormAct(width, self.last_channel, 1, norm_layer=norm_layer))
        self.features = nn.Sequential(*layers)

        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(self.last_channel, num_classes),
        )
        init_weights(self)


def shufflenet_v2(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    width_mult: float = 1.0,
    dropout: float = 0.0,
    norm_layer: NormLayer | None = None,
) -> ShuffleNetV2:
    """Build a ShuffleNetV2 [1]_ sized for ``input_size`` pixel inputs.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_channels : int
        Input image channels (1 for digits / Fashion-MNIST).
    input_size : int
        Side of the square input; the earliest strides (Conv1, then the max
        pool, then the stages' first units) are dropped for small inputs (see
        ``fedsim.models.layers.stride_plan``): total stride 32 at 224 px, 8 at
        28 or 32 px, 2 at 8 px.
    width_mult : float
        One of the widths of Table 5 in [1]_: 0.5, 1.0, 1.5 or 2.0.
    dropout : float
        Dropout probability before the FC layer (0 in [1]_ but for 2.0x).
    norm_layer : NormLayer or None
        Norm factory, e.g. ``group_norm`` or ``no_norm``; ``None`` means
        ``nn.BatchNorm2d`` with its default settings, as in torchvision.

    Returns
    -------
    ShuffleNetV2
        Randomly initialised model.
    """
    if width_mult not in WIDTH_CHANNELS:
        raise ValueError(
            f"ShuffleNetV2 widths are {sorted(WIDTH_CHANNELS)} (Table 5 of [1]), got {width_mult}"
        )
    strides = stride_plan(
        [STEM_STRIDE, MAX_POOL_STRIDE] + [s.stride for s in SHUFFLENET_V2_STAGES], input_size
    )
    stages = [
        replace(stage, stride=s) for stage, s in zip(SHUFFLENET_V2_STAGES, strides[2:], strict=True)
    ]
    return ShuffleNetV2(
        stages=stages,
        stem_stride=strides[0],
        pool_stride=strides[1],
        channels=WIDTH_CHANNELS[width_mult],
        num_classes=num_classes,
        in_channels=in_channels,
        dropout=dropout,
        norm_layer=norm_layer if norm_layer is not None else nn.BatchNorm2d,
    )
