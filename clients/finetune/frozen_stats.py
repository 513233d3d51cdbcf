"""``frozen_stats``: every parameter trains, BatchNorm keeps the statistics it received.

The phone trains all weights (BatchNorm's affine parameters too) but runs every BatchNorm layer
in eval mode, normalising with the running statistics of the model it received instead of its
own batches'. Fine-tuning with frozen BatchNorm statistics is the usual way to fine-tune a
pre-trained BatchNorm network on small batches (He, Girshick, Dollar, "Rethinking ImageNet
Pre-training", ICCV 2019, Section 3), and what makes such a network usable under user-level
DP: the statistics are the server's pre-trained, public ones, they never change on the phone,
so they are neither uploaded nor privatised, and DP clips and noises the weights alone (a
BatchNorm student in ``full`` mode uploads statistics computed on its data, which DP cannot
protect: ``fedsim.run.checks.refuse_batch_statistics``). Without a pre-trained student the
statistics are those of the random initialisation, so this mode is for
``pretrain=proxy`` (or another pre-trained start).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from clients.finetune.base import FineTuneMode


class FrozenStatistics(FineTuneMode):
    """Every parameter trains; BatchNorm layers run in eval mode (statistics as received).

    Examples
    --------
    >>> from collections import OrderedDict
    >>> net = nn.Sequential(OrderedDict(features=nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)),
    ...                                  classifier=nn.Linear(2, 3)))
    >>> sorted(FrozenStatistics().uploaded_names(net))  # doctest: +NORMALIZE_WHITESPACE
    ['classifier.bias', 'classifier.weight', 'features.0.bias', 'features.0.weight',
     'features.1.bias', 'features.1.weight']
    """

    name = "frozen_stats"

    def uploaded_names(self, model: nn.Module) -> set[str]:
        """The parameters: the running statistics leave the round as they arrived."""
        return self.trainable_names(model)

    def prepare(self, model: nn.Module) -> None:
        """Train every parameter with each BatchNorm layer in eval mode."""
        super().prepare(model)
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
