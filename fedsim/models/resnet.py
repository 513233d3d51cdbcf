"""A CIFAR-style ResNet: the server's teacher (He et al., CVPR 2016, Section 4.2).

The file reads top to bottom: the table, the basic block, the model and the ``resnet`` builder.

Section 4.2 of [1]_ defines the ResNets for 32x32 inputs that knowledge-distillation papers use
as teachers: a 3x3 stem with 16 channels, then three stages of ``n`` basic blocks (two 3x3
convs) at 16, 32 and 64 channels, the second and third starting with stride 2, global average
pooling and one linear layer; ``depth = 6n + 2``::

    stage    output (32 px)  blocks  channels
    conv1    32x32                   16
    stage1   32x32           n       16
    stage2   16x16           n       32
    stage3    8x8            n       64
    avgpool   1x1
    fc                               classes

At depth 20 and 10 classes it has 0.27M parameters (Table 6 of [1]_: "0.27M"; this code counts
272,474 with BatchNorm, the shortcut being a 1x1 conv + norm where the shape changes, option B
of [1]_, where the paper's CIFAR models use zero-padding, option A: 0.6 % more weights).
``width_mult`` scales every channel count (``width_mult=4`` is the wide teacher of KD work).

Like the students it is a ``FeaturesClassifier`` (``features`` / ``classifier``), so the memory
estimator, the FLOP counter and every fine-tuning mode work on it too.

References
----------
.. [1] He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
   https://arxiv.org/abs/1512.03385
"""

from __future__ import annotations

from torch import Tensor, nn

from fedsim.models.layers import FeaturesClassifier, NormLayer, init_weights, make_divisible

STAGE_CHANNELS = (16, 32, 64)


class BasicBlock(nn.Module):
    """Two 3x3 conv + norm, with the input added back before the last ReLU ([1]_ Fig. 2)."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        bias = _has_no_norm(norm_layer)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=bias)
        self.norm1 = norm_layer(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=bias)
        self.norm2 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:  # option B: a projection
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=bias),
                norm_layer(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _has_no_norm(norm_layer: NormLayer) -> bool:
    """Convs keep a bias only when nothing normalises (and shifts) their output."""
    return isinstance(norm_layer(8), nn.Identity)


class ResNet(FeaturesClassifier):
    """Stem, three stages of basic blocks, pooled linear classifier."""

    def __init__(
        self, blocks_per_stage: int, num_classes: int, in_channels: int,
        channels: tuple[int, int, int], first_stride: int, norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=_has_no_norm(norm_layer)),
            norm_layer(channels[0]),
            nn.ReLU(inplace=False),
        ]
        previous = channels[0]
        for stage, width in enumerate(channels):
            for block in range(blocks_per_stage):
                stride = (first_stride if stage == 0 else 2) if block == 0 else 1
                layers.append(BasicBlock(previous, width, stride, norm_layer))
                previous = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(previous, num_classes))
        init_weights(self)


def resnet(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    depth: int = 20,
    width_mult: float = 1.0,
    norm_layer: NormLayer | None = None,
) -> ResNet:
    """Build the depth-``6n + 2`` CIFAR ResNet of [1]_ for ``input_size`` pixel inputs.

    Parameters
    ----------
    num_classes, in_channels : int
        Output logits; input image channels.
    input_size : int
        Side of the square input. At 28-32 px the table above applies as is (total stride 4);
        above 64 px the first stage also downsamples (total stride 8), so the network stays
        cheap on ImageNet-sized inputs; below 16 px the second stage's stride is the only one
        (8 px digits would otherwise shrink to 2x2).
    depth : int
        ``6n + 2`` layers: 8, 14, 20, 32, 44, 56, 110.
    width_mult : float
        Multiplies 16 / 32 / 64, rounded to multiples of 8.
    norm_layer : NormLayer or None
        Norm factory; ``None`` is BatchNorm, as in [1]_.

    Returns
    -------
    ResNet
        Initialised like the students (``fedsim.models.layers.init_weights``).
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}")
    if width_mult <= 0:
        raise ValueError(f"resnet width_mult must be > 0, got {width_mult}")
    norm_layer = norm_layer or nn.BatchNorm2d
    channels = tuple(make_divisible(c * width_mult) for c in STAGE_CHANNELS)
    first_stride = 2 if input_size > 64 else 1
    model = ResNet((depth - 2) // 6, num_classes, in_channels, channels, first_stride, norm_layer)
    if input_size < 16:  # keep only stage 2's stride: 8 px -> 4 px maps, not 2 px
        _unstride(model, stage=3)
    return model


def _unstride(model: ResNet, stage: int) -> None:
    """Make ``stage``'s first block (and its projection) stride 1."""
    blocks = [m for m in model.features if isinstance(m, BasicBlock)]
    per_stage = len(blocks) // 3
    block = blocks[(stage - 1) * per_stage]
    block.conv1.stride = (1, 1)
    if isinstance(block.shortcut, nn.Sequential):
        block.shortcut[0].stride = (1, 1)
