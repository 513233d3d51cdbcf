"""What a phone uploads after local work: its update, attacked if malicious, then compressed.

The ClientApp shell (:mod:`clients.client_app`) calls these in order, the way pfl-research
applies client post-processors on the device and undoes them in reverse on the server:

1. :func:`full_batch_gradient` (``update.kind=gradient`` only): the FedSGD gradient of
   McMahan et al. (AISTATS 2017), the mean loss over the whole shard at the received weights.
2. :func:`payload_tensors`: the tensors the kind uploads (trained weights, the delta, or the
   gradient with float buffers as deltas; see :mod:`fedsim.updates`).
3. :func:`attacked`: a malicious client's behaviour, applied to the *change* it uploads.
4. :func:`encode_upload`: the codec, with error feedback when it is lossy.

All are pure functions of numpy/torch inputs; nothing here touches Flower.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clients.finetune.base import PASS_CHUNK
from fedsim.attacks.byzantine import ByzantineBehaviour
from fedsim.compression.codecs import Encoded
from fedsim.compression.error_feedback import compress_with_feedback
from fedsim.updates import DELTA, GRADIENT, WEIGHTS, UpdateRule

Update = dict[str, np.ndarray]


@dataclass(frozen=True)
class GradientResult:
    """One full-batch gradient and what it cost."""

    gradient: dict[str, torch.Tensor]  # per parameter name; zeros for frozen parameters
    mean_loss: float  # mean cross-entropy over the shard at the received weights
    passes: int  # forward/backward passes (chunks) it took
    num_examples: int


def full_batch_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = PASS_CHUNK
) -> GradientResult:
    """The gradient of ``mean_i loss(x_i, y_i)`` over the whole shard, at the model's weights.

    ``chunk`` samples per forward/backward pass bound the activation memory on large shards
    (the server's budget picks it per phone: ``LocalRecipe.chunk``). Without batch-statistics
    layers the summed gradient is the full-batch one; with BatchNorm each chunk normalises by
    its own statistics, as in gradient accumulation.

    The model runs in training mode (dropout active, BatchNorm running statistics updated by
    the forward passes), as in the first step of local training. Each chunk's summed loss is
    divided by the shard size before ``backward``, so the accumulated gradient is that of the
    mean loss over the shard (McMahan et al. 2017, FedSGD).
    """
    model.train()
    model.zero_grad(set_to_none=True)
    n = len(x)
    total, passes = 0.0, 0
    for start in range(0, n, chunk):
        logits = model(x[start : start + chunk])  # (B, classes)
        summed = F.cross_entropy(logits, y[start : start + chunk], reduction="sum")
        (summed / n).backward()
        total += summed.item()
        passes += 1
    gradient = {
        name: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        for name, p in model.named_parameters()
    }
    model.zero_grad(set_to_none=True)
    return GradientResult(gradient, total / max(n, 1), passes, n)


def payload_tensors(
    payload_kind: str,
    received: Mapping[str, np.ndarray],
    after: Mapping[str, np.ndarray],
    gradient: Mapping[str, np.ndarray] | None = None,
) -> Update:
    """The float32 tensors a ``payload_kind`` upload carries, named like ``received``.

    ``after`` is the model's exchangeable state after local work (trained weights, or the
    received weights with BatchNorm statistics moved by the gradient's forward passes).
    A ``gradient`` payload carries ``gradient`` for parameters and ``after - received`` for
    the other float tensors, which have no gradient.
    """
    if payload_kind == WEIGHTS:
        return {name: np.asarray(after[name], np.float32) for name in received}
    if payload_kind == DELTA:
        return {name: after[name] - received[name] for name in received}
    if payload_kind == GRADIENT:
        assert gradient is not None, "a gradient payload needs the gradient"
        return {
            name: np.asarray(gradient[name], np.float32)
            if name in gradient
            else after[name] - received[name]
            for name in received
        }
    raise ValueError(f"unknown payload kind {payload_kind!r}")


def attacked(
    payload_kind: str,
    tensors: Mapping[str, np.ndarray],
    received: Mapping[str, np.ndarray],
    behaviour: ByzantineBehaviour,
    rng: np.random.Generator,
) -> Update:
    """``behaviour`` applied to the change the upload carries.

    Model-poisoning behaviours act on the update (Blanchard et al. 2017; Fang et al. 2020):
    a delta or gradient directly; for a ``weights`` upload on ``weights - received``, added
    back to ``received``, so a sign flip sends ``received - delta`` either way.
    """
    if payload_kind == WEIGHTS:
        change = {name: tensors[name] - received[name] for name in received}
        poisoned = behaviour.apply(change, rng)
        return {name: received[name] + poisoned[name] for name in received}
    return behaviour.apply(tensors, rng)


def encode_upload(
    rule: UpdateRule, tensors: Mapping[str, np.ndarray], residual: Mapping[str, np.ndarray] | None
) -> tuple[Encoded, Update | None]:
    """Encode ``tensors`` with the rule's codec; with error feedback, also the new residual."""
    if rule.uses_feedback:
        return compress_with_feedback(rule.compression, tensors, residual)
    return rule.compression.encode(tensors), None
