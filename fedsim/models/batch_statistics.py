"""BatchNorm running statistics that describe the model being evaluated.

fedsim's BatchNorm layers default to ``momentum=None`` (``conf/norm/batch.yaml``): PyTorch then
keeps a *cumulative* average of the batch statistics since ``num_batches_tracked`` was last
zero, instead of an exponential one. A phone trains only a few steps a round (a shard of ~14
digits at batch 8 is 2 steps an epoch), so an exponential average with PyTorch's default
momentum 0.1 still carries ~35 % of the statistics it received after 10 steps: the statistics
of last round's global model, not of the weights it uploads. Counting from the start of the
round (:func:`restart_running_statistics`, called whenever a model state is loaded) makes the
uploaded statistics the plain mean over this round's batches, which FedAvg then averages.

After long centralised training (server pre-training) the cumulative average would mix in
early, unrelated statistics, so :func:`recompute_running_statistics` re-estimates them with the
final weights in one pass over the data: "precise BN" (Wu & Johnson 2021, "Rethinking 'Batch'
in BatchNorm", arXiv:2105.07576).
"""

from __future__ import annotations

import torch
from torch import nn


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def restart_running_statistics(model: nn.Module) -> None:
    """Zero every BatchNorm's batch counter, so a cumulative average starts afresh.

    The running mean and variance are kept: with ``momentum=None`` the first batch replaces
    them (its weight is 1 / 1); with a float momentum the counter is never read.
    """
    for norm in batch_norms(model):
        norm.num_batches_tracked.zero_()


@torch.no_grad()
def recompute_running_statistics(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Re-estimate every BatchNorm's running statistics with ``model``'s current weights.

    One pass over ``x`` in train mode with gradients off, each layer's momentum set to
    ``None`` for the pass (an equally weighted mean over the batches), then restored. The
    weights and the model's train/eval mode are unchanged.
    """
    norms = batch_norms(model)
    if not norms:
        return
    was_training = model.training
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    for start in range(0, len(x), batch_size):
        model(x[start : start + batch_size])
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.train(was_training)
