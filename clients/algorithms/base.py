"""The phone half of a client algorithm: hooks around local training, plain SGD by default.

A phone's round with a client algorithm, in order (:func:`clients.client_app.train_reply`):

1. it receives the model and, in the same message, the server half's extra tensors
   (``received``: SCAFFOLD's server control variate), and reads what it kept from its last
   participation (``kept``: its own control variate; empty the first time);
2. :meth:`LocalAlgorithm.correction` says what changes in every local step (a
   :class:`Correction`: a term added to the gradients before the optimiser step, or a move of
   the weights after it, SCAFFOLD's ``- lr (c - c_i)``); ``None`` leaves the SGD loop exactly
   as it is;
3. local training runs (:mod:`clients.training`);
4. :meth:`LocalAlgorithm.finish` turns the start and end weights into what the phone sends
   beside its update (``Outcome.sent``, in the reply's :data:`fedsim.keys.ALGORITHM` record),
   what it keeps for its next round (``Outcome.kept``, stored by fedsim:
   :class:`fedsim.compression.phone_files.PhoneFiles`, checkpointed with the run) and extra
   metrics (FedNova's normalised steps).

The class attributes tell the server's cost models what the algorithm costs the phone:
``memory_copies`` fp32 copies of the trained parameters held during training (the memory
budget, :mod:`fedsim.fleet.round_memory`) and ``download_copies`` copies of the model's
parameters downloaded with it (the clock, :mod:`fedsim.fleet.device_simulation`); what it
uploads is measured (``fedsim.keys.PAYLOAD_BYTES``).

Subclasses are small frozen dataclasses of hyperparameters (FedJAX's "builder that captures
hyperparameters"); the maths is in pure functions beside them, which the tests check by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Correction:
    """What a client algorithm changes in every local SGD step, at one of two points.

    Attributes
    ----------
    gradient : callable or None
        Called with the trained parameters after each backward pass; adds to their ``.grad``
        in place, so momentum and weight decay fold it in like the loss's own gradient: a term
        of the local objective (FedDyn's linear and quadratic terms).
    after_step : callable or None
        Called with the trained parameters and the step's learning rate after each optimiser
        step; moves the weights in place, outside momentum: a correction of the step itself
        (SCAFFOLD's ``- lr (c - c_i)``, as the Flower NIID-Bench baseline applies it). Through
        momentum it would be amplified by ``1 / (1 - momentum)`` on top of a ``c_i`` that option
        II already measured from momentum's amplified steps, and the run diverges.
    """

    gradient: Callable[[list[torch.Tensor]], None] | None = None
    after_step: Callable[[list[torch.Tensor], float], None] | None = None


@dataclass(frozen=True)
class Outcome:
    """What a client algorithm adds to the phone's reply, and what the phone keeps."""

    sent: dict[str, np.ndarray] = field(default_factory=dict)  # beside the update (fp32)
    kept: dict[str, np.ndarray] | None = None  # the phone's state for its next round
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalAlgorithm:
    """Plain local SGD: no correction, nothing sent, nothing kept (the default)."""

    name: ClassVar[str] = "sgd"
    stateful: ClassVar[bool] = False  # keeps per-phone state between rounds
    memory_copies: ClassVar[int] = 0  # fp32 copies of the trained parameters held in training
    download_copies: ClassVar[int] = 0  # copies of the model's parameters received with it

    def correction(
        self, received: Arrays, kept: Arrays, named: Mapping[str, torch.Tensor],
    ) -> Correction | None:
        """What to change in every local step (``None``: nothing, the loop is unchanged).

        Parameters
        ----------
        received : mapping of str to np.ndarray
            The server half's extra tensors this round, by parameter name.
        kept : mapping of str to np.ndarray
            What this phone kept from its last participation (empty the first time).
        named : mapping of str to torch.Tensor
            The model's parameters by name (the trained ones are among them).
        """
        return None

    def finish(
        self, start: Arrays, end: Arrays, received: Arrays, kept: Arrays, steps: int,
        lr: float, momentum: float,
    ) -> Outcome:
        """What the phone sends, keeps and reports after training.

        Parameters
        ----------
        start, end : mapping of str to np.ndarray
            The trained parameters as received and after local training.
        received, kept : mapping of str to np.ndarray
            As for :meth:`correction`.
        steps : int
            Local SGD steps taken.
        lr, momentum : float
            The round's local learning rate and momentum.
        """
        return Outcome()


def by_identity(named: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """``tensors`` keyed by ``id`` of the parameter of the same name.

    The SGD loop sees the trained part's parameters (the classifier alone in head mode), not
    their names; they are the same tensor objects as the model's named parameters.
    """
    return {id(named[name]): t for name, t in tensors.items() if name in named}


def step_against(offsets: dict[int, torch.Tensor]) -> Correction:
    """A :class:`Correction` moving each parameter by ``- lr * offsets[id(p)]`` after every
    optimiser step."""

    @torch.no_grad()
    def correct(params: list[torch.Tensor], lr: float) -> None:
        pairs = [(p, offsets[id(p)]) for p in params if id(p) in offsets]
        if pairs:
            weights, terms = zip(*pairs)
            torch._foreach_add_(list(weights), list(terms), alpha=-lr)

    return Correction(after_step=correct)
