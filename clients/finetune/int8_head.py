"""``int8_head``: the head trains over a post-training-quantised int8 backbone.

What a phone running a deployed int8 model can fine-tune: the backbone is replaced, for one
client-round only, by an int8 copy quantised after training and calibrated on the phone's own
images (:func:`clients.quantize.quantize_backbone`); its pooled features are computed once (or
every epoch, without ``cache_features``) and the float head trains on them. The float backbone
is frozen, as in ``head``, and never changed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from clients.finetune.base import PASS_CHUNK, pooled_features
from clients.finetune.head import Head
from clients.quantize import CALIBRATION_BATCH, quantize_backbone


class Int8Head(Head):
    """``head`` over an int8 copy of the backbone, calibrated on the shard."""

    name = "int8_head"
    int8_backbone = True

    def trained_part(
        self, model: nn.Module, x: torch.Tensor, chunk: int = PASS_CHUNK
    ) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
        """The classifier, on the int8 backbone's features of the shard.

        Calibration and the feature passes run at most ``chunk`` samples at once (calibration
        at most ``CALIBRATION_BATCH``, so that its histograms do not depend on the phone).
        """
        backbone = quantize_backbone(model.features, x, min(CALIBRATION_BATCH, chunk))
        if self.cache_features:
            features = pooled_features(backbone, x, chunk)  # (N, C)
            return model.classifier, lambda: features
        return model.classifier, lambda: pooled_features(backbone, x, chunk)
