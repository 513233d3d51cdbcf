"""Central evaluation of the global model on the server's held-out test split."""

from __future__ import annotations

from flwr.app import ArrayRecord
from torch import nn

from fedsim.data.splits import ArrayDataset
from fedsim.models.evaluation import evaluate_model
from fedsim.models.state import load_exchangeable_state


class CentralEvaluator:
    """Loads aggregated arrays into one server-side model and evaluates it."""

    def __init__(self, model: nn.Module, test: ArrayDataset, batch_size: int) -> None:
        self.model = model
        self.test = test
        self.batch_size = batch_size

    def __call__(self, arrays: ArrayRecord) -> Evaluation:
        load_exchangeable_state(self.model, arrays.to_torch_state_dict())
        return evaluate_model(self.model, self.test, self.batch_size)
