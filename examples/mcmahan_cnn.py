"""The CNN of McMahan et al. 2017, given to fedsim as a user model by ``_target_``.

An example of bringing your own PyTorch model: any callable that accepts the keyword arguments
fedsim's model builder passes (``num_classes``, ``in_channels``, ``input_size``, ``norm_layer``)
and returns an ``nn.Module`` can be the student::

    python run_sim.py dataset=fashion_mnist model._target_=examples.mcmahan_cnn.mcmahan_cnn

Only ``finetune=full`` applies to it: head and bias fine-tuning need the
``features``/``classifier`` seam of ``fedsim.models.layers.FeaturesClassifier`` and refuse a model
without it. ``conf/experiment/mcmahan2017.yaml`` uses it to reproduce the paper's FedSGD vs FedAvg
comparison (docs/benchmarks.md, "FedAvg vs FedSGD").

References
----------
.. [1] McMahan, Moore, Ramage, Hampson & Agüera y Arcas, "Communication-Efficient Learning of
   Deep Networks from Decentralized Data", AISTATS 2017, Section 3 ("CNN").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class McMahanCNN(nn.Module):
    """Two 5x5 convolutions (32 and 64 channels, ReLU), each followed by 2x2 max pooling, a
    512-unit ReLU dense layer and a linear softmax layer: 1,663,370 parameters at 28x28x1 [1]_.

    Parameters
    ----------
    num_classes : int
        Output logits (softmax is in the loss).
    in_channels : int
        Input image channels.
    input_size : int
        Side of the square input; the convolutions are padded ("same"), so the dense layer sees
        ``64 * (input_size // 4) ** 2`` features.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = input_size // 4
        self.dense = nn.Sequential(nn.Linear(64 * side * side, 512), nn.ReLU(inplace=True))
        self.out = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        return self.out(self.dense(torch.flatten(self.conv(x), 1)))


def mcmahan_cnn(
    num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **unused: Any,
) -> McMahanCNN:
    """The paper's CNN; fedsim's ``norm_layer`` is ignored (the paper's model has no norm layer).

    Returns
    -------
    McMahanCNN
    """
    return McMahanCNN(num_classes, in_channels, input_size)
