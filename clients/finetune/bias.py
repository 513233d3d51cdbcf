"""``bias``: biases, norm affine parameters and the head train, as in TinyTL [1]_.

The trainable parameters are few, but gradients still flow through the whole backbone, and
BatchNorm stays in train mode, as TinyTL trains the norm layers. [1]_'s point is that bias
gradients need the conv *weights*, not their inputs, so a frozen conv need not store its input
activation; :mod:`fedsim.fleet.memory` says how much of that saving stock PyTorch realises
(none, for convolutions).

References
----------
.. [1] Cai, Gan, Zhu, Han, "TinyTL: Reduce Memory, Not Parameters for Efficient On-Device
   Learning", NeurIPS 2020. https://arxiv.org/abs/2007.11622
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from clients.finetune.base import FineTuneMode, head_names

# Norm layers whose affine parameters TinyTL trains alongside the biases.
NORM_TYPES: tuple[type[nn.Module], ...] = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)


def bias_and_norm_names(model: nn.Module) -> set[str]:
    """Every ``*.bias``, and the weight and bias of every BatchNorm / GroupNorm / LayerNorm."""
    names = {
        name for name, _ in model.named_parameters() if name.endswith(".bias") or name == "bias"
    }
    for module_name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            prefix = f"{module_name}." if module_name else ""
            names |= {prefix + name for name, _ in module.named_parameters(recurse=False)}
    return names


class Bias(FineTuneMode):
    """Biases, norm layers and the head train; every other weight is frozen.

    Examples
    --------
    >>> from collections import OrderedDict
    >>> net = nn.Sequential(OrderedDict(features=nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)),
    ...                                  classifier=nn.Linear(2, 3)))
    >>> sorted(Bias().trainable_names(net))  # doctest: +NORMALIZE_WHITESPACE
    ['classifier.bias', 'classifier.weight', 'features.0.bias', 'features.1.bias',
     'features.1.weight']
    """

    name = "bias"

    def trainable_names(self, model: nn.Module) -> set[str]:
        """The head, every bias and every norm layer's affine parameters."""
        return head_names(model) | bias_and_norm_names(model)
