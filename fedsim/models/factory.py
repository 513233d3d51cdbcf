"""A picklable, hashable recipe for building the student on any process.

The ClientApp is shipped to Ray actors by value on every call, so it must carry a *recipe*
rather than a model. :class:`ModelBuilder` is that recipe: the Hydra ``model`` and ``norm``
nodes (as JSON) plus the dataset's shape, which are only known at run time and are passed in at
instantiate time, as the Hydra idiom goes.

Every student and teacher is built in the channels-last memory format (NHWC). On the CPU that
sends each convolution, pointwise ones included, to oneDNN's NHWC kernels instead of PyTorch's
im2col fallback, which it otherwise picks for 1x1 convolutions at small batches on one thread:
a training step of the default student is about 15 % faster on 8x8 digits and 40 % faster on
28x28 images (``docs/benchmarks.md``). The format changes strides only: parameter names, shapes
and values, and so everything that is exchanged or checkpointed, are the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn


@dataclass(frozen=True)
class ModelBuilder:
    """Builds the configured student for a given dataset shape.

    Parameters
    ----------
    model_spec, norm_spec : str
        JSON of the Hydra ``model`` and ``norm`` config nodes (each with a ``_target_``).
    num_classes, in_channels, input_size : int
        Taken from the dataset.
    """

    model_spec: str
    norm_spec: str
    num_classes: int
    in_channels: int
    input_size: int

    @classmethod
    def from_config(
        cls, model: dict[str, Any], norm: dict[str, Any], input_shape: tuple[int, int, int],
        num_classes: int,
    ) -> ModelBuilder:
        channels, height, _ = input_shape
        return cls(
            json.dumps(model, sort_keys=True), json.dumps(norm, sort_keys=True),
            num_classes, channels, height,
        )

    def __call__(self) -> nn.Module:
        norm_layer = instantiate(json.loads(self.norm_spec))
        model = instantiate(
            json.loads(self.model_spec),
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            input_size=self.input_size,
            norm_layer=norm_layer,
        )
        return model.to(memory_format=torch.channels_last)

    @property
    def model_name(self) -> str:
        """The builder function's name, e.g. ``mobilenet_v2``."""
        return str(json.loads(self.model_spec)["_target_"]).rsplit(".", 1)[-1]
