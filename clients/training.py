"""Local training on one phone's shard: plain PyTorch, no Flower.

Minibatch SGD with momentum and weight decay (``clients.sgd``) for ``epochs`` passes over the
shard, shuffled by a generator the caller seeds, plus FedProx's proximal term when ``proximal_mu > 0``
(Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, eq. 2:
``(mu / 2) * ||w - w_global||^2``). ``train_locally`` trains whatever requires a gradient;
``train_in_mode`` first puts the model in a fine-tuning mode (``clients.finetune``) and runs
it the way a phone would: frozen features computed once, QAT under fake quantisation, an int8
backbone for ``int8_head`` (``clients.quantize``). Given a teacher's logits on the shard, the
objective is Hinton et al.'s distillation loss (``clients.distillation``) instead of plain
cross-entropy; the reported loss stays the cross-entropy, so runs with and without
distillation compare.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clients.distillation import KDLoss
from clients.finetune import FineTuneMode, apply_mode
from clients.quantize import FakeQuantMode, quantize_backbone
from clients.sgd import MomentumSGD

FEATURE_BATCH = 256  # samples per no-grad backbone pass when computing features


@dataclass(frozen=True)
class LocalRecipe:
    """Hyperparameters of one client-round of local training."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0


@dataclass(frozen=True)
class LocalResult:
    """What a client-round of training produced (besides the weights themselves)."""

    mean_loss: float  # sample-weighted mean cross-entropy over all local steps (also under KD)
    steps: int
    num_examples: int  # size of the shard: the weight FedAvg gives this client


def proximal_term(params: list[torch.Tensor], anchor: list[torch.Tensor]) -> torch.Tensor:
    """``sum ||p - a||^2`` over parameter tensors (FedProx's penalty without ``mu / 2``)."""
    return sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))


def train_locally(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: LocalRecipe,
    generator: torch.Generator,
    teacher_logits: torch.Tensor | None = None,
    kd: KDLoss | None = None,
) -> LocalResult:
    """Train ``model`` in place on ``(x, y)``.

    Parameters
    ----------
    model : nn.Module
        The received global model; only parameters with ``requires_grad`` are updated.
    x, y : torch.Tensor
        The shard, ``(N, C, H, W)`` float and ``(N,)`` int64.
    recipe : LocalRecipe
        Epochs, batch size and optimiser settings.
    generator : torch.Generator
        Seeds the per-epoch shuffles, so a client-round is reproducible.
    teacher_logits : torch.Tensor or None
        ``(N, classes)`` logits of a teacher on ``x``: the objective becomes ``kd``.
    kd : KDLoss or None
        The distillation loss (default ``KDLoss()``) when ``teacher_logits`` are given.
    """
    model.train()
    return _sgd(model, lambda: x, y, recipe, generator, teacher_logits, kd)


def _sgd(
    model: nn.Module,
    inputs: Callable[[], torch.Tensor],
    y: torch.Tensor,
    recipe: LocalRecipe,
    generator: torch.Generator,
    teacher_logits: torch.Tensor | None = None,
    kd: KDLoss | None = None,
) -> LocalResult:
    """The SGD loop over ``inputs()`` (called once per epoch); the caller sets train/eval modes.

    With ``teacher_logits`` the step minimises ``kd`` against them; the loss it reports is the
    cross-entropy either way.
    """
    kd = kd or KDLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if recipe.proximal_mu > 0 else []
    optimizer = MomentumSGD(
        params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    total_loss, seen, steps = 0.0, 0, 0
    n = len(y)
    for _ in range(recipe.epochs):
        x = inputs()
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            logits = model(x[batch])  # (B, classes)
            loss = F.cross_entropy(logits, y[batch])
            objective = loss
            if teacher_logits is not None:
                objective = kd(logits, teacher_logits[batch], y[batch])
            if anchor:
                objective = objective + 0.5 * recipe.proximal_mu * proximal_term(params, anchor)
            optimizer.zero_grad()
            objective.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            seen += len(batch)
            steps += 1
    return LocalResult(mean_loss=total_loss / max(seen, 1), steps=steps, num_examples=n)


@torch.no_grad()
def pooled_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` pooled backbone features of ``x``, the classifier's input in
    ``FeaturesClassifier.forward``; computed without autograd, ``FEATURE_BATCH`` at a time."""
    chunks = [
        torch.flatten(F.adaptive_avg_pool2d(backbone(x[i : i + FEATURE_BATCH]), 1), 1)
        for i in range(0, len(x), FEATURE_BATCH)
    ]
    return torch.cat(chunks)  # (N, C)


def train_in_mode(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: LocalRecipe,
    generator: torch.Generator,
    mode: FineTuneMode | str,
    cache_features: bool = True,
    teacher_logits: torch.Tensor | None = None,
    kd: KDLoss | None = None,
) -> LocalResult:
    """Train ``model`` in place on ``(x, y)`` in fine-tuning ``mode``.

    The mode is applied first (``clients.finetune.apply_mode``: ``requires_grad``, and eval mode
    for a frozen backbone, which ``train_locally``'s ``model.train()`` would undo). Then:

    - ``full`` / ``bias``: the SGD loop of ``train_locally`` (``bias`` keeps BatchNorm in train
      mode, as TinyTL does).
    - ``head``: with ``cache_features``, the frozen backbone (eval mode) runs once over the shard
      without autograd and only ``model.classifier`` trains on the pooled features; the
      shuffles are the same, so the head ends where the uncached path (the whole model, every
      epoch) does, up to float rounding.
    - ``int8_head``: the backbone is replaced, for this call only, by an int8 copy quantised
      after training and calibrated on ``x`` (``clients.quantize.quantize_backbone``); its
      features are computed once (or every epoch, without ``cache_features``) and the head
      trains on them. The float backbone is not changed.
    - ``qat``: the loop runs under ``clients.quantize.FakeQuantMode``; leaving it leaves a
      plain float model with unchanged parameter names.

    Nothing stays attached to ``model`` (no hooks, wrappers or extra modules), so one instance
    can be trained again in any mode; each call re-applies its own mode.

    Parameters
    ----------
    model : nn.Module
        The received global model, a ``FeaturesClassifier`` for ``head`` and ``int8_head``.
    x, y, recipe, generator
        As for ``train_locally``.
    mode : FineTuneMode or str
        The fine-tuning mode.
    cache_features : bool
        Compute a frozen backbone's features once rather than every epoch.
    teacher_logits, kd
        Distill from a teacher's logits on ``x`` (see ``train_locally``); in every mode.

    Returns
    -------
    LocalResult
        As ``train_locally``'s: ``steps`` and ``num_examples`` do not depend on the mode.
    """
    mode = FineTuneMode(mode)
    apply_mode(model, mode)
    soft = (teacher_logits, kd)
    if mode is FineTuneMode.HEAD and not cache_features:
        return _sgd(model, lambda: x, y, recipe, generator, *soft)
    if mode in (FineTuneMode.HEAD, FineTuneMode.INT8_HEAD):
        backbone = model.features
        if mode is FineTuneMode.INT8_HEAD:
            backbone = quantize_backbone(model.features, x)
        if cache_features:
            features = pooled_features(backbone, x)
            return _sgd(model.classifier, lambda: features, y, recipe, generator, *soft)
        return _sgd(
            model.classifier, lambda: pooled_features(backbone, x), y, recipe, generator, *soft
        )
    quantized = FakeQuantMode(model) if mode is FineTuneMode.QAT else contextlib.nullcontext()
    with quantized:
        return _sgd(model, lambda: x, y, recipe, generator, *soft)
