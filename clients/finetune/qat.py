"""``qat``: every parameter trains through int8 fake quantisation (Jacob et al. 2018).

Weights (per channel, symmetric) and conv / linear outputs (per tensor, affine) are rounded to
int8 in the forward and the gradient passes straight through, so the model degrades little
when deployed in int8; :mod:`clients.quantize` holds the maths. Leaving the step leaves a plain
float model with unchanged parameter names, which is what the phone uploads.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from torch import nn

from clients.finetune.base import FineTuneMode
from clients.quantize import FakeQuantMode


class Qat(FineTuneMode):
    """Every parameter trains, under :class:`clients.quantize.FakeQuantMode`."""

    name = "qat"
    fake_quantized = True

    def running(self, model: nn.Module) -> AbstractContextManager:
        """``model``'s convs and linears fake-quantised while the loop runs."""
        return FakeQuantMode(model)
