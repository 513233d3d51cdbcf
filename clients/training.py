"""Local training on one phone's shard: plain PyTorch, no Flower.

Minibatch SGD with momentum and weight decay (``clients.sgd``) for ``epochs`` passes over the
shard, shuffled by a generator the caller seeds, plus FedProx's proximal term when ``proximal_mu > 0``
(Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, eq. 2:
``(mu / 2) * ||w - w_global||^2``). ``train_locally`` trains whatever requires a gradient;
``train_in_mode`` runs the loop through a fine-tuning mode's hooks (``clients.finetune``), the
way a phone would: frozen features computed once, QAT under fake quantisation, an int8 backbone
for ``int8_head`` (``clients.quantize``). Given a teacher's logits on the shard, the
objective is Hinton et al.'s distillation loss (``clients.distillation``) instead of plain
cross-entropy; the reported loss stays the cross-entropy, so runs with and without
distillation compare. A client algorithm's ``correction`` (``clients.algorithms``) changes the
gradients before each step or the weights after it (SCAFFOLD's control variates).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clients.algorithms.base import Correction
from clients.distillation import KDLoss
from clients.finetune.base import PASS_CHUNK, FineTuneMode
from clients.sgd import MomentumSGD


@dataclass(frozen=True)
class LocalRecipe:
    """Hyperparameters of one client-round of local training."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    # Most samples one pass over the whole shard may run at once (frozen features, int8
    # calibration, teacher logits, the full-batch gradient's chunks): the server's memory
    # budget sets it per phone (fedsim.fleet.round_memory), as it sets the batch size.
    chunk: int = PASS_CHUNK


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
    correction: Correction | None = None,
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
    correction : Correction or None
        A client algorithm's change to every step (``clients.algorithms.base.Correction``).
    """
    model.train()
    return _sgd(model, lambda: x, y, recipe, generator, teacher_logits, kd, correction)


def _sgd(
    model: nn.Module,
    inputs: Callable[[], torch.Tensor],
    y: torch.Tensor,
    recipe: LocalRecipe,
    generator: torch.Generator,
    teacher_logits: torch.Tensor | None = None,
    kd: KDLoss | None = None,
    correction: Correction | None = None,
) -> LocalResult:
    """The SGD loop over ``inputs()`` (called once per epoch); the caller sets train/eval modes.

    With ``teacher_logits`` the step minimises ``kd`` against them; the loss it reports is the
    cross-entropy either way. ``correction`` changes the gradients between backward and step,
    or the weights after the step (``clients.algorithms.base.Correction``).
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
            if correction is not None and correction.gradient is not None:
                correction.gradient(params)
            optimizer.step()
            if correction is not None and correction.after_step is not None:
                correction.after_step(params, recipe.lr)
            total_loss += loss.item() * len(batch)
            seen += len(batch)
            steps += 1
    return LocalResult(mean_loss=total_loss / max(seen, 1), steps=steps, num_examples=n)


def train_in_mode(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: LocalRecipe,
    generator: torch.Generator,
    mode: FineTuneMode,
    teacher_logits: torch.Tensor | None = None,
    kd: KDLoss | None = None,
    correction: Correction | None = None,
) -> LocalResult:
    """Train ``model`` in place on ``(x, y)`` in fine-tuning ``mode``.

    The mode's hooks, in order: ``mode.prepare`` sets ``requires_grad`` and eval mode for a
    frozen backbone (which ``train_locally``'s ``model.train()`` would undo);
    ``mode.trained_part`` says which module the SGD loop steps and on what (the whole model on
    the shard; or the classifier on a frozen, possibly int8, backbone's features, computed
    once with ``cache_features``, ``recipe.chunk`` samples a pass); ``mode.running`` is the
    context the loop runs in (fake
    quantisation for ``qat``; leaving it leaves a plain float model with unchanged parameter
    names). See :mod:`clients.finetune` for each mode.

    Nothing stays attached to ``model`` (no hooks, wrappers or extra modules), so one instance
    can be trained again in any mode; each call re-applies its own mode.

    Parameters
    ----------
    model : nn.Module
        The received global model, a ``FeaturesClassifier`` for ``head`` and ``int8_head``.
    x, y, recipe, generator
        As for ``train_locally``.
    mode : FineTuneMode
        The fine-tuning mode (``clients.finetune.mode_named`` turns a message's name into one).
    teacher_logits, kd
        Distill from a teacher's logits on ``x`` (see ``train_locally``); in every mode.
    correction : Correction or None
        A client algorithm's change to every step (see ``train_locally``).

    Returns
    -------
    LocalResult
        As ``train_locally``'s: ``steps`` and ``num_examples`` do not depend on the mode.
    """
    mode.prepare(model)
    trained, inputs = mode.trained_part(model, x, recipe.chunk)
    with mode.running(model):
        return _sgd(trained, inputs, y, recipe, generator, teacher_logits, kd, correction)
