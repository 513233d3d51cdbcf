"""``head``: only the classifier trains, over a frozen backbone (linear probing).

The backbone (``features`` of a ``FeaturesClassifier``) is a fixed, eval-mode feature
extractor, so no backbone activation has to be kept for backward. Being a fixed function, it
can run once per client-round over the shard, without autograd, and the head then trains on
the cached pooled features (``cache_features``); the shuffles are the same, so the head ends
where the uncached path (the whole model, every epoch) does, up to float rounding. This is the
cheapest mode of TinyTL's comparison [1]_.

References
----------
.. [1] Cai, Gan, Zhu, Han, "TinyTL: Reduce Memory, Not Parameters for Efficient On-Device
   Learning", NeurIPS 2020. https://arxiv.org/abs/2007.11622
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from clients.finetune.base import PASS_CHUNK, FineTuneMode, head_names, pooled_features


class Head(FineTuneMode):
    """The ``classifier`` trains; the frozen backbone's features are cached unless told not to."""

    name = "head"
    frozen_backbone = True

    def trainable_names(self, model: nn.Module) -> set[str]:
        """Those under ``classifier.``."""
        return head_names(model)

    def trained_part(
        self, model: nn.Module, x: torch.Tensor, chunk: int = PASS_CHUNK
    ) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
        """The classifier on the backbone's features computed once, ``chunk`` samples a pass,
        or (uncached) the whole model on the shard, its backbone in eval mode."""
        if not self.cache_features:
            return model, lambda: x
        features = pooled_features(model.features, x, chunk)  # (N, C)
        return model.classifier, lambda: features
