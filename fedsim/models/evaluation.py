"""Test loss and accuracy of a model on a labelled split: the one evaluation every part uses.

The server's central evaluation (:mod:`fedsim.server.evaluation`), pre-training and the teacher
(:mod:`fedsim.proxy`) and the benchmarks all call :func:`evaluate_model`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.data.splits import ArrayDataset


@dataclass(frozen=True)
class Evaluation:
    """Test-split loss (mean cross-entropy) and accuracy of one global model."""

    loss: float
    accuracy: float


@torch.no_grad()
def evaluate_model(model: nn.Module, data: ArrayDataset, batch_size: int) -> Evaluation:
    """Mean cross-entropy and top-1 accuracy of ``model`` on ``data``, in eval mode."""
    model.eval()
    return score(model, torch.from_numpy(data.x), torch.from_numpy(data.y), batch_size)


@torch.no_grad()
def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Evaluation:
    """Mean cross-entropy and top-1 accuracy of ``model``'s logits on inputs ``x`` (images, or
    a head's features), ``batch_size`` at a time; ``model`` is already in the mode wanted."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])  # (B, classes)
        target = y[start : start + batch_size]
        total_loss += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    return Evaluation(loss=total_loss / len(x), accuracy=correct / len(x))
