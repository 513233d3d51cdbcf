"""Minibatch SGD with heavy-ball momentum and L2 weight decay: the phone's optimiser.

The update is exactly ``torch.optim.SGD``'s with ``dampening=0`` and ``nesterov=False``
(Polyak 1964; Sutskever et al., ICML 2013, eq. 1 in PyTorch's form)::

    g = grad + weight_decay * w
    b = g                      (first step)
    b = momentum * b + g       (later steps)
    w = w - lr * b

and the tests hold it bit-identical to ``torch.optim.SGD`` over many steps. fedsim has its own
because of where it runs: a client-round builds a fresh optimiser in a long-lived Ray actor,
and ``torch.optim`` pays for an import of ``torch._dynamo`` on the first optimiser a process
builds (about 1.3 s on this CPU, on every actor's first client call and again after every actor
restart), and by default loops over the ~160 tensors of a MobileNet on the CPU one kernel at a
time. Here each step is four multi-tensor (``torch._foreach_*``) kernels over all parameters,
about a quarter less time per step for the default student (``docs/benchmarks.md``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class MomentumSGD:
    """SGD over ``params`` (tensors with ``requires_grad``), stepped after each backward.

    Parameters
    ----------
    params : iterable of torch.Tensor
        The parameters to train; one whose ``.grad`` is ``None`` at a step is left alone (as
        ``torch.optim.SGD`` does), and so is its momentum.
    lr : float
        Learning rate.
    momentum : float
        Heavy-ball coefficient; ``0`` keeps no buffers.
    weight_decay : float
        L2 coefficient added to the gradient.
    """

    def __init__(
        self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = list(params)
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        # One buffer per parameter, created at that parameter's first step (torch.optim's rule).
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        """Drop the gradients (``set_to_none``: the next backward allocates fresh ones)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        params = [self.params[i] for i in live]
        grads = [self.params[i].grad for i in live]
        if self.weight_decay != 0:
            # In place on .grad (zero_grad drops it before the next backward): no extra copy.
            torch._foreach_add_(grads, params, alpha=self.weight_decay)
        if self.momentum != 0:
            grads = self._momentum(live, grads)
        torch._foreach_add_(params, grads, alpha=-self.lr)

    def _momentum(self, live: list[int], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Fold ``grads`` into the momentum buffers of ``live``; return the buffers."""
        if all(self.buffers[i] is not None for i in live):
            buffers = [self.buffers[i] for i in live]
            torch._foreach_mul_(buffers, self.momentum)
            torch._foreach_add_(buffers, grads)
            return buffers
        for i, g in zip(live, grads, strict=True):  # some parameter's first step
            if self.buffers[i] is None:
                self.buffers[i] = g.detach().clone()
            else:
                self.buffers[i].mul_(self.momentum).add_(g)
        return [self.buffers[i] for i in live]

    def state_tensors(self) -> list[torch.Tensor]:
        """The momentum buffers that exist (what the memory model counts as optimiser state)."""
        return [b for b in self.buffers if b is not None]
