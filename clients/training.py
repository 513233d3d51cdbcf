"""Local training on one phone's shard: plain PyTorch, no Flower.

Minibatch SGD with momentum and weight decay for ``epochs`` passes over the shard, shuffled by a
generator the caller seeds, plus FedProx's proximal term when ``proximal_mu > 0``
(Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, eq. 2:
``(mu / 2) * ||w - w_global||^2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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

    mean_loss: float  # sample-weighted mean cross-entropy over all local steps
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
    """
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if recipe.proximal_mu > 0 else []
    optimizer = torch.optim.SGD(
        params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    model.train()
    total_loss, seen, steps = 0.0, 0, 0
    n = len(x)
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            logits = model(x[batch])  # (B, classes)
            loss = F.cross_entropy(logits, y[batch])
            objective = loss
            if anchor:
                objective = loss + 0.5 * recipe.proximal_mu * proximal_term(params, anchor)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            seen += len(batch)
            steps += 1
    return LocalResult(mean_loss=total_loss / max(seen, 1), steps=steps, num_examples=n)
