"""Where knowledge distillation happens in a run: the ``distill`` config node.

A compact student learns from a larger teacher (:mod:`fedsim.proxy.teacher`) through Hinton et al.'s
loss (:mod:`clients.distillation`). ``distill.where`` picks the place:

``none``
    No distillation (the teacher is never trained).
``server_pre``
    Before federated training, the server distills the student from the teacher on its proxy
    split; the phones start from that student. This *is* the server's pre-training
    (:mod:`fedsim.proxy.pretrain`) with the distillation loss in place of cross-entropy
    (:class:`DistilledPretraining`), cached the same way, with the ``pretrain`` node's recipe.
``server_ensemble``
    After every aggregation the server refines the global student on the proxy split against
    the teacher's logits, the average logits of the round's client models, or both
    (``distill.ensemble``): FedDF, Lin, Kong, Stich and Jaggi, "Ensemble Distillation for
    Robust Model Fusion in Federated Learning", NeurIPS 2020
    (:class:`fedsim.strategy.ensemble_distillation.EnsembleDistillation`).
``client``
    Each phone computes the teacher's logits on its own shard and trains against them. The
    teacher's download, inference memory and FLOPs count against the phone's memory budget and
    its simulated clock, so only phones that can afford it distill; the others train with plain
    cross-entropy and the round record says why (``no_kd``: ``memory`` or ``deadline``).

Every mode but ``none`` needs the server's proxy split. With ``pretrain=proxy`` it is
``pretrain.fraction``; otherwise ``distill.proxy_fraction`` of the train split is held out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from clients.distillation import KDLoss
from fedsim.errors import ConfigError
from fedsim.proxy.pretrain import NOT_IN_KEY, Pretraining, PretrainReport, pretrain_student

WHERE = ("none", "server_pre", "server_ensemble", "client")
ENSEMBLES = ("teacher", "clients", "both")


@dataclass(frozen=True)
class Distillation:
    """The ``distill`` node.

    Parameters
    ----------
    where : str
        ``none``, ``server_pre``, ``server_ensemble`` or ``client`` (module docstring).
    temperature, alpha : float
        Of the distillation loss (:class:`clients.distillation.KDLoss`).
    proxy_fraction : float
        The server's proxy split when ``pretrain=none`` (in ``(0, 1)``).
    ensemble : str
        ``server_ensemble``'s targets: ``teacher`` (default), ``clients`` (FedDF) or ``both``
        (the mean of the teacher's logits and the clients' mean logits). ``clients`` and
        ``both`` run every client model over the proxy split each round, which costs minutes
        a round on a CPU server at Fashion-MNIST scale.
    server_epochs, server_batch_size, server_lr : int, int, float
        ``server_ensemble``'s SGD (momentum 0.9) on the proxy split after each aggregation.
    """

    where: str = "none"
    temperature: float = 4.0
    alpha: float = 0.9
    proxy_fraction: float = 0.1
    ensemble: str = "teacher"
    server_epochs: int = 1
    server_batch_size: int = 64
    server_lr: float = 0.01

    def __post_init__(self) -> None:
        checks = (
            ("where", self.where in WHERE, f"must be one of {', '.join(WHERE)}"),
            ("temperature", self.temperature > 0, "must be > 0"),
            ("alpha", 0.0 <= self.alpha <= 1.0, "must be in [0, 1]"),
            ("proxy_fraction", 0.0 < self.proxy_fraction < 1.0, "must be in (0, 1)"),
            ("ensemble", self.ensemble in ENSEMBLES, f"must be one of {', '.join(ENSEMBLES)}"),
            ("server_epochs", self.server_epochs >= 1, "must be >= 1"),
            ("server_batch_size", self.server_batch_size >= 1, "must be >= 1"),
            ("server_lr", self.server_lr > 0, "must be > 0"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"distill.{name}: {rule}, got {getattr(self, name)!r}")

    @property
    def enabled(self) -> bool:
        return self.where != "none"

    @property
    def uses_teacher(self) -> bool:
        """Whether the run needs the teacher trained."""
        if self.where == "server_ensemble":
            return self.ensemble != "clients"
        return self.enabled

    @property
    def uses_client_models(self) -> bool:
        """Whether the server looks at individual client models (FedDF's ensemble)."""
        return self.where == "server_ensemble" and self.ensemble != "teacher"

    @property
    def loss(self) -> KDLoss:
        return KDLoss(self.temperature, self.alpha)

    def proxy_fraction_for(self, pretraining: Pretraining) -> float:
        """The share of the train split the server holds out, given the ``pretrain`` node."""
        if pretraining.enabled:
            return pretraining.fraction
        return self.proxy_fraction if self.enabled else 0.0


@dataclass(frozen=True)
class DistilledPretraining(Pretraining):
    """Server pre-training by distillation (``distill.where=server_pre``).

    The ``pretrain`` node's recipe with the distillation loss: its cache key adds the
    temperature, alpha and the teacher's own cache key, so a student distilled from another
    teacher, or trained plainly, never shares a cache entry with it. ``teacher_logits`` (the
    teacher on the proxy split, in its order) are an input, not part of the key: the teacher's
    key already determines them.
    """

    temperature: float = 4.0
    alpha: float = 0.9
    teacher_key: str = ""
    teacher_logits: np.ndarray | None = field(
        default=None, compare=False, repr=False, metadata=NOT_IN_KEY
    )

    def train(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> PretrainReport:
        if self.teacher_logits is None or len(self.teacher_logits) != len(y):
            raise ValueError("distilled pre-training needs the teacher's logits on the proxy split")
        return pretrain_student(
            model, x, y, self, torch.from_numpy(self.teacher_logits),
            KDLoss(self.temperature, self.alpha),
        )


def distilled_pretraining(
    pretraining: Pretraining, distill: Distillation, fraction: float, teacher_key: str,
    teacher_logits: np.ndarray,
) -> DistilledPretraining:
    """``pretraining``'s recipe on the proxy split of ``fraction``, with the distillation loss."""
    fields = {f.name: getattr(pretraining, f.name) for f in dataclasses.fields(Pretraining)}
    return DistilledPretraining(
        **{**fields, "fraction": fraction}, temperature=distill.temperature,
        alpha=distill.alpha, teacher_key=teacher_key, teacher_logits=teacher_logits,
    )
