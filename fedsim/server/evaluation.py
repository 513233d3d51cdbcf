"""Central evaluation of the global model on the server's held-out test split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord
from torch import nn

from fedsim.data.datasets import ArrayDataset
from fedsim.models.state import load_exchangeable_state


@dataclass(frozen=True)
class Evaluation:
    """Test-split loss (mean cross-entropy) and accuracy of one global model."""

    loss: float
    accuracy: float


@torch.no_grad()
def evaluate_model(model: nn.Module, data: ArrayDataset, batch_size: int) -> Evaluation:
    """Mean cross-entropy and top-1 accuracy of ``model`` on ``data``, in eval mode."""
    model.eval()
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])  # (B, classes)
        target = y[start : start + batch_size]
        total_loss += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    return Evaluation(loss=total_loss / len(x), accuracy=correct / len(x))


class CentralEvaluator:
    """Loads aggregated arrays into one server-side model and evaluates it."""

    def __init__(self, model: nn.Module, test: ArrayDataset, batch_size: int) -> None:
        self.model = model
        self.test = test
        self.batch_size = batch_size

    def __call__(self, arrays: ArrayRecord) -> Evaluation:
        load_exchangeable_state(self.model, arrays.to_torch_state_dict())
        return evaluate_model(self.model, self.test, self.batch_size)
