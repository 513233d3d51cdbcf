"""Does the exported file keep what the simulation promised? Accuracy, agreement, latency.

The exported file is run by its own runtime (:data:`fedsim.export.runtime.Predict`) on the run's
whole test split and compared with the PyTorch student on the same images:

- ``accuracy``: top-1 accuracy of the exported file; ``pytorch_accuracy`` the student's.
- ``agreement``: the share of test images on which both pick the same class, the number that
  says whether the phone behaves like the simulation (int8 can keep accuracy while flipping
  individual predictions both ways).
- ``max_logit_diff``: the largest absolute logit difference (fp32 exports: float rounding only).
- ``latency_ms``: the median wall time of one forward pass at batch 1 on one thread, over
  ``runs`` calls after ``warmup`` calls, cycling through test images. The median, not the mean,
  because the CPU is shared and a few calls are descheduled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from fedsim.data.splits import ArrayDataset
from fedsim.export.runtime import Predict, torch_threads

EVAL_BATCH = 256
LATENCY_RUNS, LATENCY_WARMUP = 200, 20


@dataclass(frozen=True)
class Parity:
    """The exported file against the PyTorch student on the test split (see the module doc)."""

    test_samples: int
    accuracy: float
    pytorch_accuracy: float
    agreement: float
    max_logit_diff: float
    latency_ms: float
    pytorch_latency_ms: float
    latency_runs: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def batched(predict: Predict, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """``predict`` over ``x`` in batches of ``batch``: ``(N, classes)`` float32 logits."""
    return np.concatenate([predict(x[i : i + batch]) for i in range(0, len(x), batch)])


def torch_predict(model: nn.Module) -> Predict:
    """The PyTorch student as a :data:`Predict` function (eval mode, no gradients)."""

    @torch.no_grad()
    def predict(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).numpy()

    return predict


def median_latency_ms(
    call: Callable[[np.ndarray], object], images: np.ndarray, runs: int = LATENCY_RUNS,
    warmup: int = LATENCY_WARMUP,
) -> float:
    """Median milliseconds of ``call`` on one image ``(1, C, H, W)``, cycling through ``images``."""
    singles = [images[i : i + 1] for i in range(min(len(images), runs))]
    for i in range(warmup):
        call(singles[i % len(singles)])
    times = []
    for i in range(runs):
        start = time.perf_counter()
        call(singles[i % len(singles)])
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def measure(
    exported: Predict, model: nn.Module, test: ArrayDataset, runs: int = LATENCY_RUNS
) -> Parity:
    """Run ``exported`` and ``model`` on ``test``; accuracy, agreement and batch-1 latency.

    ``exported`` runs its runtime on one thread (the exporters set it up so); PyTorch is held to
    one thread here for its own latency, so the two latencies compare like for like.
    """
    with torch_threads(1):
        reference = batched(torch_predict(model), test.x)
        exported_logits = batched(exported, test.x)
        pytorch_ms = median_latency_ms(torch_predict(model), test.x, runs)
        exported_ms = median_latency_ms(exported, test.x, runs)
    picked, reference_picked = exported_logits.argmax(axis=1), reference.argmax(axis=1)
    return Parity(
        test_samples=len(test),
        accuracy=float((picked == test.y).mean()),
        pytorch_accuracy=float((reference_picked == test.y).mean()),
        agreement=float((picked == reference_picked).mean()),
        max_logit_diff=float(np.abs(exported_logits - reference).max()),
        latency_ms=round(exported_ms, 4),
        pytorch_latency_ms=round(pytorch_ms, 4),
        latency_runs=runs,
    )
