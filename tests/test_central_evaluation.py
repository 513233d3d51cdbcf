"""Central evaluation reuses the test split's backbone features while only the head changes,
with the loss and accuracy of the whole-model pass bit for bit."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.data.splits import ArrayDataset
from fedsim.models.evaluation import evaluate_model
from fedsim.models.mobilenet_v2 import mobilenet_v2
from fedsim.server.evaluation import CentralEvaluator
from tests.helpers import tiny_model


def _test_split(n: int = 37) -> ArrayDataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    return ArrayDataset(x, y)


def _student() -> torch.nn.Module:
    torch.manual_seed(0)
    model = mobilenet_v2(num_classes=10, in_channels=1, input_size=8, width_mult=0.5)
    return model.to(memory_format=torch.channels_last)


def _arrays(model: torch.nn.Module) -> ArrayRecord:
    return ArrayRecord(model.state_dict())


def test_head_only_changes_reuse_features_and_match_the_whole_model_exactly():
    test = _test_split()  # 37 samples at batch 10: a short last batch
    global_model, reference = _student(), _student()
    evaluator = CentralEvaluator(_student(), test, batch_size=10)

    first = evaluator(_arrays(global_model))
    assert first == evaluate_model(global_model, test, 10)
    features = evaluator._cached.features

    with torch.no_grad():  # a head-only round: only the classifier moves
        global_model.classifier[-1].weight[3].add_(0.5)  # class 3 gains on every image
    second = evaluator(_arrays(global_model))
    assert evaluator._cached.features is features  # the backbone did not run again
    reference.load_state_dict(global_model.state_dict())
    assert second == evaluate_model(reference, test, 10)
    assert second != first


def test_a_changed_backbone_weight_or_statistic_recomputes_the_features():
    test = _test_split()
    global_model = _student()
    evaluator = CentralEvaluator(_student(), test, batch_size=16)
    evaluator(_arrays(global_model))
    features = evaluator._cached.features

    with torch.no_grad():
        next(global_model.features.parameters()).mul_(1.5)
    assert evaluator(_arrays(global_model)) == evaluate_model(global_model, test, 16)
    assert evaluator._cached.features is not features

    features = evaluator._cached.features
    batch_norm = next(m for m in global_model.features.modules() if hasattr(m, "running_mean"))
    batch_norm.running_mean.add_(0.1)  # a buffer only: frozen_stats and full rounds move these
    assert evaluator(_arrays(global_model)) == evaluate_model(global_model, test, 16)
    assert evaluator._cached.features is not features


def test_a_model_without_the_seam_is_evaluated_whole():
    test = _test_split()
    model = tiny_model()
    evaluator = CentralEvaluator(tiny_model(), test, batch_size=8)
    assert evaluator(_arrays(model)) == evaluate_model(model, test, 8)
    assert evaluator._cached is None
