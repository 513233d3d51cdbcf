"""Knowledge distillation: the loss, and a teacher's logits over a dataset.

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (NIPS 2014 Deep
Learning Workshop, arXiv:1503.02531), Section 2: the student matches the teacher's class
probabilities softened by a temperature ``T``,

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

where ``s`` and ``t`` are the student's and the teacher's logits. The ``T^2`` keeps the soft
term's gradients the same size as the hard term's when ``T`` changes ("since the magnitudes of
the gradients produced by the soft targets scale as 1/T^2 it is important to multiply them by
T^2"). The KL is averaged over the batch, as cross-entropy is.

The same loss serves the server (pre-distilling the student, ``distill.where=server_pre``, and
FedDF's ensemble distillation after each aggregation, ``server_ensemble``) and the phones
(``client``), so it lives on the device side where both can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INFERENCE_BATCH = 256  # samples per no-grad teacher pass


@dataclass(frozen=True)
class KDLoss:
    """Hinton et al.'s distillation loss with its two knobs.

    Parameters
    ----------
    temperature : float
        ``T > 0``; higher spreads the teacher's probabilities towards uniform.
    alpha : float
        Weight of the soft term in ``[0, 1]``; ``0`` is plain cross-entropy.
    """

    temperature: float = 4.0
    alpha: float = 0.9

    def __call__(self, student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
        return kd_loss(student, teacher, labels, self.temperature, self.alpha)


@dataclass(frozen=True)
class TeacherOnDevice:
    """What a phone needs to run the teacher (``distill.where=client``): picklable, small.

    The weights are read from the server's cache file once per process; on a Ray cluster the
    cache directory must be on storage every node sees (as the data must be).
    """

    builder: Callable[[], nn.Module]  # a hashable recipe (fedsim.models.factory.ModelBuilder)
    path: str


def soft_targets(logits: Tensor, temperature: float) -> Tensor:
    """``softmax(logits / T)`` over the last dimension: the teacher's softened probabilities."""
    return F.softmax(logits / temperature, dim=-1)


def kd_loss(
    student: Tensor, teacher: Tensor, labels: Tensor, temperature: float, alpha: float
) -> Tensor:
    """``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(student, labels)``, batch-averaged.

    Parameters
    ----------
    student, teacher : Tensor
        ``(B, classes)`` logits; the teacher's carry no gradient.
    labels : Tensor
        ``(B,)`` int64 class labels.
    temperature, alpha : float
        See :class:`KDLoss`.

    Returns
    -------
    Tensor
        A scalar. At ``alpha = 0`` it is exactly ``F.cross_entropy(student, labels)``.
    """
    hard = F.cross_entropy(student, labels)
    if alpha == 0.0:
        return hard
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher.detach() / temperature, dim=-1)
    # KL(p_t || p_s) = sum p_t (log p_t - log p_s); "batchmean" divides by B, as CE does.
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


@torch.no_grad()
def logits_of(model: nn.Module, x: Tensor, batch: int = INFERENCE_BATCH) -> Tensor:
    """``(N, classes)`` logits of ``model`` in eval mode, ``batch`` samples per pass.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
    finally:
        model.train(was_training)
