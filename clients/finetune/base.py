"""The base of every fine-tuning mode: the hooks the trainer and the cost models read.

A mode (``finetune=<name>``, one small class per file in this package) says which parameters
a phone trains and how it runs the step. The trainer (:func:`clients.training.train_in_mode`)
calls its hooks in order::

    mode.prepare(model)                              # requires_grad, train / eval modes
    trained, inputs = mode.trained_part(model, x)    # what the SGD loop steps, fed what
    with mode.running(model):                        # e.g. fake quantisation
        ...SGD over inputs()...

The server's shape-only cost models (:mod:`fedsim.fleet.memory`, :mod:`fedsim.fleet.flops`)
cannot import from here what they compute, so a mode also *declares* what it does to the step,
as class attributes they read: ``frozen_backbone``, ``fake_quantized``, ``int8_backbone``.
This base trains every parameter, as ``full`` does; the others override a hook or a declaration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import InitVar, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.errors import ConfigError
from fedsim.models.state import exchangeable_state

# The name -> mode table, in the order error messages list the choices. Filled in (explicitly,
# not by subclassing) by clients/finetune/__init__.py, which imports every mode; importing any
# mode's module runs that first, so the table is complete before a mode is built.
MODES: dict[str, type[FineTuneMode]] = {}

HEAD_MODULE = "classifier"  # the seam of fedsim.models.layers.FeaturesClassifier: features | head
HEAD_PREFIX = f"{HEAD_MODULE}."
# Samples per pass over the whole shard (frozen features, teacher logits, the full-batch
# gradient) unless the server's memory budget tells the phone fewer (``LocalRecipe.chunk``):
# such a pass costs memory in proportion to its size, not to the training batch.
PASS_CHUNK = 256


@dataclass(frozen=True)
class FineTuneMode:
    """How much of the model a phone trains, and how it runs the step.

    Parameters
    ----------
    cache_features : bool
        A frozen backbone (``head``, ``int8_head``) runs once per client-round and its pooled
        features are reused every epoch, rather than re-run each epoch. Other modes ignore it.
    mode : str or None
        The option's name as its YAML spells it (``finetune.mode``); checked against
        :attr:`name`, so ``finetune.mode=lora`` fails in one line. Not stored.
    """

    name: ClassVar[str]  # what messages, tier profiles, budget.fallback and reports call it
    # Everything but the classifier is a fixed, eval-mode feature extractor.
    frozen_backbone: ClassVar[bool] = False
    # Convs and linears compute through int8 fake quantisation (clients.quantize.FakeQuantMode).
    fake_quantized: ClassVar[bool] = False
    # The frozen backbone runs as a post-training-quantised int8 copy (quantize_backbone).
    int8_backbone: ClassVar[bool] = False

    cache_features: bool = True
    mode: InitVar[str | None] = None

    def __post_init__(self, mode: str | None) -> None:
        if not isinstance(self.cache_features, bool):
            raise ConfigError(
                f"finetune.cache_features: must be true or false, got {self.cache_features!r}"
            )
        if mode is not None and mode != self.name:
            other = mode_class(mode).name  # an unknown name fails here, in one line
            raise ConfigError(
                f"finetune.mode: {other!r} is another option; choose it with finetune={other}"
            )

    @property
    def caches_features(self) -> bool:
        """The frozen backbone's features are computed once per client-round."""
        return self.frozen_backbone and self.cache_features

    def trainable_names(self, model: nn.Module) -> set[str]:
        """Names of the parameters this mode trains (as in ``model.named_parameters()``).

        A pure function of the model's structure: nothing is modified. Here: all of them.
        """
        return {name for name, _ in model.named_parameters()}

    def uploaded_names(self, model: nn.Module) -> set[str]:
        """Names of the exchanged tensors this mode changes, which is what the phone uploads.

        The trained parameters (:meth:`trainable_names`) and the float buffers of the modules
        the step runs in train mode (BatchNorm running statistics): all of them, or with a
        frozen backbone only the classifier's (the backbone runs in eval mode, see
        :meth:`prepare`). Every other exchanged tensor leaves the round as it arrived, so the
        server already has it. A pure function of the model's structure, like
        :meth:`trainable_names`; names as in :func:`fedsim.models.state.exchangeable_state`.
        """
        trained = self.trainable_names(model)
        parameters = {name for name, _ in model.named_parameters()}
        return {
            name
            for name in exchangeable_state(model)
            if name in trained
            or (
                name not in parameters
                and (not self.frozen_backbone or name.startswith(HEAD_PREFIX))
            )
        }

    def prepare(self, model: nn.Module) -> None:
        """Set ``requires_grad`` to :meth:`trainable_names` and put ``model`` in train mode.

        With a frozen backbone everything but the ``classifier`` then goes back to eval mode:
        a fixed feature extractor must not update its BatchNorm running statistics (in train
        mode they would drift with each local batch, and differ between clients with non-IID
        data, although no parameter trains) and its dropout must not fire. A later
        ``model.train()`` undoes this, so a training loop prepares after (or instead of) it.
        """
        names = self.trainable_names(model)
        for name, param in model.named_parameters():
            param.requires_grad_(name in names)
        model.train()
        if self.frozen_backbone:
            for name, child in model.named_children():
                if name != HEAD_MODULE:
                    child.eval()

    def trained_part(
        self, model: nn.Module, x: torch.Tensor, chunk: int = PASS_CHUNK
    ) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
        """The module the SGD loop steps, and what it feeds it (called once per epoch).

        Here the whole model on the shard itself. ``chunk`` is the most samples a pass over
        the whole shard (a frozen backbone's features) may run at once.
        """
        return model, lambda: x

    def running(self, model: nn.Module) -> AbstractContextManager:
        """A context the SGD loop runs in; here none."""
        return contextlib.nullcontext()


def mode_class(name: str, key: str = "finetune.mode") -> type[FineTuneMode]:
    """The mode class ``name`` stands for; an unknown name is a one-line ConfigError on ``key``."""
    if name not in MODES:
        raise ConfigError(f"{key}: no mode {name!r} (choose from {', '.join(MODES)})")
    return MODES[name]


def head_names(model: nn.Module) -> set[str]:
    """The parameters under ``classifier.``; a model without that seam is refused."""
    if not isinstance(getattr(model, HEAD_MODULE, None), nn.Module):
        raise TypeError(
            "head and bias fine-tuning need a `classifier` submodule "
            "(the features/classifier seam of fedsim.models.layers.FeaturesClassifier)"
        )
    return {name for name, _ in model.named_parameters() if name.startswith(HEAD_PREFIX)}


@torch.no_grad()
def pooled_features(backbone: nn.Module, x: torch.Tensor, chunk: int = PASS_CHUNK) -> torch.Tensor:
    """``(N, C)`` pooled backbone features of ``x``, the classifier's input in
    ``FeaturesClassifier.forward``; computed without autograd, ``chunk`` samples at a time.

    Each chunk's features are written into one preallocated ``(N, C)`` tensor, so the phone
    holds the shard's features once (concatenating a list of chunks would hold them twice).
    """
    features: torch.Tensor | None = None
    for i in range(0, len(x), chunk):
        pooled = torch.flatten(F.adaptive_avg_pool2d(backbone(x[i : i + chunk]), 1), 1)
        if features is None:
            features = pooled.new_empty((len(x), pooled.shape[1]))  # (N, C)
        features[i : i + len(pooled)] = pooled
    assert features is not None, "an empty shard has no features"
    return features
