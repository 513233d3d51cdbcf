"""Which parameters a phone trains, and how: the fine-tuning modes of on-device training.

Each mode is a small class (``finetune=<name>`` instantiates it from ``conf/finetune/``) with
the hooks of :class:`~clients.finetune.base.FineTuneMode`. They trade accuracy for memory and
compute on the phone:

- ``full`` (:mod:`~clients.finetune.full`): every parameter, the FedAvg default.
- ``head`` (:mod:`~clients.finetune.head`): only the ``classifier`` of a ``FeaturesClassifier``
  over a frozen backbone, whose features can be computed once per client-round.
- ``bias`` (:mod:`~clients.finetune.bias`): biases, norm layers and the head (TinyTL).
- ``frozen_stats`` (:mod:`~clients.finetune.frozen_stats`): every parameter, with BatchNorm
  normalising by the statistics the phone received (fine-tuning a pre-trained student under DP).
- ``qat`` (:mod:`~clients.finetune.qat`): every parameter, through int8 fake quantisation.
- ``int8_head`` (:mod:`~clients.finetune.int8_head`): the head over an int8 copy of the backbone.

Names travel where objects cannot: the per-round message carries the mode's name
(``fedsim.keys.FINETUNE_MODE``), tier profiles say ``finetune: head`` and ``budget.fallback``
lists names. :data:`MODES` maps them back to the classes. A new mode is a class in this
package, a row in :data:`MODES` and a ``conf/finetune/<name>.yaml``.
"""

from __future__ import annotations

from clients.finetune.base import MODES, PASS_CHUNK, FineTuneMode, mode_class, pooled_features
from clients.finetune.bias import Bias
from clients.finetune.frozen_stats import FrozenStatistics
from clients.finetune.full import Full
from clients.finetune.head import Head
from clients.finetune.int8_head import Int8Head
from clients.finetune.qat import Qat

# The name -> mode table (kept in base.py, where a mode checks its own name), in the order
# error messages list the choices.
MODES.update({m.name: m for m in (Full, Head, Bias, FrozenStatistics, Qat, Int8Head)})


def mode_named(name: str, cache_features: bool = True) -> FineTuneMode:
    """The mode a name (a message's, a tier's, a fallback's) stands for."""
    return mode_class(name)(cache_features=cache_features)


__all__ = [
    "MODES", "PASS_CHUNK", "Bias", "FineTuneMode", "FrozenStatistics", "Full", "Head", "Int8Head", "Qat", "mode_class",
    "mode_named",
    "pooled_features",
]
