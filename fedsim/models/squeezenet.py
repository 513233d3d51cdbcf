"""SqueezeNet 1.1: fire modules and a convolutional classifier (Iandola et al., 2016).

The file reads top to bottom: architecture table, the fire module, the model,
and the ``squeezenet`` builder that adapts the table to the input size and width.

SqueezeNet 1.1 is the revision published with the official code [2]_ (2.4x
fewer FLOPs than 1.0 of [1]_ at the same accuracy): a 3x3 stride-2 stem with 64
channels instead of 7x7 with 96, and the max pools moved earlier. Its table,
in the notation of Table 1 of [1]_ (s1x1: squeeze, e1x1 / e3x3: the two
expand convs, concatenated; output channels = e1x1 + e3x3)::

    layer        output (224 px)  s1x1  e1x1  e3x3  channels
    conv1 3x3/2  111x111                               64
    maxpool 3/2   55x55
    fire2         55x55            16    64    64     128
    fire3         55x55            16    64    64     128
    maxpool 3/2   27x27
    fire4         27x27            32   128   128     256
    fire5         27x27            32   128   128     256
    maxpool 3/2   13x13
    fire6         13x13            48   192   192     384
    fire7         13x13            48   192   192     384
    fire8         13x13            64   256   256     512
    fire9         13x13            64   256   256     512
    dropout 50%
    conv10 1x1    13x13                             classes
    avgpool       1x1

At width 1.0, 1000 classes and 224 px the model has 1,235,496 parameters, the
count of the reference implementation (torchvision's ``squeezenet1_1``); [2]_
reports 1.24M. Without a norm layer (the default, as in [1]_) every conv has a
bias; a norm factory adds a norm after every conv and drops the biases.

The classifier, and how it differs from [1]_. fedsim's ``FeaturesClassifier``
pools the features *before* the classifier (head-only fine-tuning caches the
pooled features, ``clients.finetune.pooled_features``), while [1]_ runs conv10
and its ReLU on the 13x13 map and pools the class scores. Here the classifier
is Dropout -> Linear -> ReLU on the pooled features:

- conv10 is a 1x1 conv, i.e. the same linear map at every position, and a
  linear map commutes with averaging: ``mean(W x + b) = W mean(x) + b``. So the
  ``Linear`` *is* conv10 (its weight is conv10's, reshaped) applied after
  rather than before the pool, with the same parameters and scores.
- the ReLU does not commute: [1]_ computes ``mean(relu(s))`` over positions,
  this head ``relu(mean(s))``, which is smaller or equal (Jensen) and equal
  when a class's score has one sign over the whole map. It is kept (rather than
  dropped) so logits stay non-negative as in [1]_.
- dropout drops whole pooled channels instead of single positions of the
  13x13 map; both drop 50 % of conv10's inputs in expectation.

References
----------
.. [1] Iandola, Han, Moskewicz, Ashraf, Dally, Keutzer, "SqueezeNet:
   AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size",
   2016. https://arxiv.org/abs/1602.07360
.. [2] forresti/SqueezeNet, ``SqueezeNet_v1.1`` (the official Caffe model and
   its README). https://github.com/forresti/SqueezeNet
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedsim.models.layers import (
    ConvNormAct,
    FeaturesClassifier,
    NormLayer,
    init_weights,
    make_divisible,
    no_norm,
    stride_plan,
)


@dataclass(frozen=True)
class Fire:
    """One fire module of the table (channels before the width multiplier).

    Attributes
    ----------
    squeeze : int
        Output channels of the 1x1 squeeze conv (s1x1).
    expand : int
        Output channels of *each* expand conv (e1x1 = e3x3 in SqueezeNet 1.1).
    pool_before : bool
        Whether a 3x3 stride-2 max pool precedes the module.
    """

    squeeze: int
    expand: int
    pool_before: bool = False


# SqueezeNet 1.1 of [2]_, after the 64-channel stride-2 stem (and its max pool, before fire2).
SQUEEZENET_1_1_FIRES: tuple[Fire, ...] = (
    Fire(squeeze=16, expand=64, pool_before=True),
    Fire(squeeze=16, expand=64),
    Fire(squeeze=32, expand=128, pool_before=True),
    Fire(squeeze=32, expand=128),
    Fire(squeeze=48, expand=192, pool_before=True),
    Fire(squeeze=48, expand=192),
    Fire(squeeze=64, expand=256),
    Fire(squeeze=64, expand=256),
)
STEM_CHANNELS = 64
STEM_STRIDE = 2
POOL_STRIDE = 2


class FireModule(nn.Module):
    """Fire module, Fig. 1 of [1]_: squeeze 1x1, then expand 1x1 and 3x3 side by side.

    The squeeze layer has fewer channels than the expand layers' input would
    otherwise have, which is [1]_'s strategy 2 (fewer input channels to the
    3x3 filters); half the expand filters are 1x1 (strategy 1). All convs are
    followed by ReLU.

    Parameters
    ----------
    in_channels : int
        Module input channels.
    squeeze, expand : int
        Squeeze channels and channels of each expand conv (width applied).
    norm_layer : NormLayer
        Norm factory for every conv.
    """

    def __init__(self, in_channels: int, squeeze: int, expand: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.squeeze = ConvNormAct(in_channels, squeeze, 1, norm_layer=norm_layer)
        self.expand1x1 = ConvNormAct(squeeze, expand, 1, norm_layer=norm_layer)
        self.expand3x3 = ConvNormAct(squeeze, expand, 3, norm_layer=norm_layer)
        self.out_channels = 2 * expand

    def forward(self, x: Tensor) -> Tensor:
        s = self.squeeze(x)  # (B, S, H, W)
        return torch.cat([self.expand1x1(s), self.expand3x3(s)], dim=1)  # (B, 2E, H, W)


class SqueezeNet(FeaturesClassifier):
    """SqueezeNet 1.1 [2]_ split into ``features`` and ``classifier``.

    ``features`` runs the stem, the max pools and fire2-fire9; ``classifier``
    is conv10 as Dropout -> Linear -> ReLU on the pooled features (see the
    module docstring for why this is, and is not quite, [1]_'s conv10).

    Parameters
    ----------
    fires : sequence of Fire
        Architecture table.
    stem_stride : int
        Stride of conv1 (2 in [2]_, 1 for small inputs).
    pool_strides : sequence of int
        Planned stride of each max pool; a pool planned to stride 1 is left
        out (a stride-1 3x3 max pool only blurs), as CIFAR variants do.
    num_classes : int
        Output logits.
    in_channels : int
        Input image channels.
    width_mult : float
        Multiplier on every channel count, rounded to multiples of 8.
    dropout : float
        Dropout probability before conv10 (0.5 in [1]_).
    norm_layer : NormLayer
        Norm factory for every conv of ``features``.
    """

    def __init__(
        self,
        fires: Sequence[Fire],
        stem_stride: int,
        pool_strides: Sequence[int],
        num_classes: int,
        in_channels: int,
        width_mult: float,
        dropout: float,
        norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        channels = make_divisible(STEM_CHANNELS * width_mult)
        # Same padding (unlike [2]_'s unpadded conv1: 112 vs 111 px at 224), so an 8 px input
        # keeps its border pixels; the parameters are the same.
        layers: list[nn.Module] = [
            ConvNormAct(in_channels, channels, 3, stem_stride, norm_layer=norm_layer)
        ]
        pools = iter(pool_strides)
        for fire in fires:
            if fire.pool_before and next(pools) == 2:
                # ceil_mode as in [2]_ (Caffe rounds pooled sizes up): 111 -> 55 -> 27 -> 13.
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
            squeeze = make_divisible(fire.squeeze * width_mult)
            expand = make_divisible(fire.expand * width_mult)
            module = FireModule(channels, squeeze, expand, norm_layer)
            layers.append(module)
            channels = module.out_channels
        self.features = nn.Sequential(*layers)

        self.last_channel = channels
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(channels, num_classes),  # conv10, moved after the pool
            nn.ReLU(),
        )
        init_weights(self)


def squeezenet(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 224,
    width_mult: float = 1.0,
    dropout: float = 0.5,
    norm_layer: NormLayer | None = None,
) -> SqueezeNet:
    """Build a SqueezeNet 1.1 [2]_ sized for ``input_size`` pixel inputs.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_channels : int
        Input image channels (1 for digits / Fashion-MNIST).
    input_size : int
        Side of the square input; the earliest strides (conv1, then the max
        pools) are dropped for small inputs (see
        ``fedsim.models.layers.stride_plan``): total stride 16 at 224 px (as in
        [2]_), 8 at 28 or 32 px, 2 at 8 px.
    width_mult : float
        Channel multiplier, rounded to multiples of 8 ([1]_ explores the
        squeeze ratio instead; a uniform multiplier is the MobileNet knob).
    dropout : float
        Dropout probability before conv10 (0.5 in [1]_).
    norm_layer : NormLayer or None
        Norm factory, e.g. ``group_norm``; ``None`` means no norm layer
        (``no_norm``: convs with biases), as in [1]_.

    Returns
    -------
    SqueezeNet
        Randomly initialised model.
    """
    num_pools = sum(fire.pool_before for fire in SQUEEZENET_1_1_FIRES)
    strides = stride_plan([STEM_STRIDE] + [POOL_STRIDE] * num_pools, input_size)
    return SqueezeNet(
        fires=SQUEEZENET_1_1_FIRES,
        stem_stride=strides[0],
        pool_strides=strides[1:],
        num_classes=num_classes,
        in_channels=in_channels,
        width_mult=width_mult,
        dropout=dropout,
        norm_layer=norm_layer if norm_layer is not None else no_norm,
    )
