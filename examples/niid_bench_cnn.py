"""The small CNN of the NIID-Bench study, given to fedsim as a user model by ``_target_``.

Like :mod:`examples.mcmahan_cnn`, any callable that accepts fedsim's model-builder keywords
(``num_classes``, ``in_channels``, ``input_size``, ``norm_layer``) can be the student::

    python run_sim.py dataset=fashion_mnist model._target_=examples.niid_bench_cnn.niid_bench_cnn

It has no norm layer, so label skew cannot corrupt BatchNorm statistics and the comparison of
client algorithms in ``conf/experiment/niid_strategies.yaml`` measures the algorithms alone.

References
----------
.. [1] Li, Diao, Chen & He, "Federated Learning on Non-IID Data Silos: An Experimental Study",
   ICDE 2022, Section V ("simple-cnn"; its code: github.com/Xtra-Computing/NIID-Bench).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class NiidBenchCNN(nn.Module):
    """Two unpadded 5x5 convolutions (6 and 16 channels, ReLU, 2x2 max pooling) and dense layers
    of 120 and 84 units (ReLU) before the logits [1]_: 44,426 parameters at 28x28x1.

    Parameters
    ----------
    num_classes : int
        Output logits.
    in_channels : int
        Input image channels.
    input_size : int
        Side of the square input, at least 16 (two unpadded 5x5 convolutions, each followed by
        halving): 4x4x16 features at 28 px.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"niid_bench_cnn needs inputs of at least 16 px, got {input_size}")
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.dense = nn.Sequential(
            nn.Linear(16 * side * side, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
        )
        self.out = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        return self.out(self.dense(torch.flatten(self.conv(x), 1)))


def niid_bench_cnn(
    num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **unused: Any,
) -> NiidBenchCNN:
    """NIID-Bench's simple CNN; fedsim's ``norm_layer`` is ignored (the model has none).

    Returns
    -------
    NiidBenchCNN
    """
    return NiidBenchCNN(num_classes, in_channels, input_size)
