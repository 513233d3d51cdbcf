"""Central evaluation of the global model on the server's held-out test split.

When only the head changes between evaluations (``finetune=head`` or ``int8_head``: every phone
trains the classifier over a frozen backbone), the backbone's pooled features of the test split
are the same every round. :class:`CentralEvaluator` keeps them and runs only the classifier while
the backbone's weights and buffers are unchanged, exactly as a head-only phone caches its shard's
features (:mod:`clients.finetune.head`). Features are computed ``batch_size`` samples at a time,
the batches the whole-model pass uses, so the loss and accuracy are bit-identical to it
(``tests/test_central_evaluation.py``); on Fashion-MNIST's 10,000 test images this turns a
25-second evaluation into a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord
from torch import nn

from clients.finetune.base import pooled_features
from fedsim.data.splits import ArrayDataset
from fedsim.models.evaluation import Evaluation, evaluate_model, score
from fedsim.models.layers import FeaturesClassifier
from fedsim.models.state import load_exchangeable_state


@dataclass(frozen=True)
class _TestFeatures:
    """The test split's pooled features under one backbone state (a snapshot of it)."""

    backbone: dict[str, torch.Tensor]
    features: torch.Tensor  # (N, C)

    def computed_by(self, backbone: nn.Module) -> bool:
        """Whether ``backbone`` still holds exactly the weights and buffers these came from."""
        state = backbone.state_dict()
        return state.keys() == self.backbone.keys() and all(
            torch.equal(state[name], tensor) for name, tensor in self.backbone.items()
        )


class CentralEvaluator:
    """Loads aggregated arrays into one server-side model and evaluates it."""

    def __init__(self, model: nn.Module, test: ArrayDataset, batch_size: int) -> None:
        self.model = model
        self.test = test
        self.batch_size = batch_size
        self._cached: _TestFeatures | None = None

    def __call__(self, arrays: ArrayRecord) -> Evaluation:
        load_exchangeable_state(self.model, arrays.to_torch_state_dict())
        if not isinstance(self.model, FeaturesClassifier):
            return evaluate_model(self.model, self.test, self.batch_size)
        return self._evaluate_head(self._test_features())

    @torch.no_grad()
    def _test_features(self) -> torch.Tensor:
        """The test split's pooled features, recomputed only when the backbone changed."""
        backbone = self.model.features
        if self._cached is None or not self._cached.computed_by(backbone):
            self.model.eval()
            features = pooled_features(backbone, torch.from_numpy(self.test.x), self.batch_size)
            snapshot = {name: t.detach().clone() for name, t in backbone.state_dict().items()}
            self._cached = _TestFeatures(snapshot, features)
        return self._cached.features

    def _evaluate_head(self, features: torch.Tensor) -> Evaluation:
        """:func:`~fedsim.models.evaluation.evaluate_model` with the backbone's part done."""
        self.model.eval()
        return score(self.model.classifier, features, torch.from_numpy(self.test.y), self.batch_size)
