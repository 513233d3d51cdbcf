"""Where knowledge distillation happens in a run: the ``distill`` config node and its places.

A compact student learns from a larger teacher (:mod:`fedsim.proxy.teacher`) through Hinton et al.'s
loss (:mod:`clients.distillation`). ``distill.where`` picks the place, a config group
(``conf/distill.where/``) whose options are the small classes below; each answers the questions
the run asks of it (does it need the teacher, the teacher's logits on the proxy split, a
distilled starting point, a wrapper in the strategy stack, a teacher on the phones):

``none`` (:class:`NoDistillation`)
    No distillation (the teacher is never trained).
``server_pre`` (:class:`ServerPre`)
    Before federated training, the server distills the student from the teacher on its proxy
    split; the phones start from that student. This *is* the server's pre-training
    (:mod:`fedsim.proxy.pretrain`) with the distillation loss in place of cross-entropy
    (:class:`DistilledPretraining`), cached the same way, with the ``pretrain`` node's recipe.
``server_ensemble`` (:class:`ServerEnsemble`)
    After every aggregation the server refines the global student on the proxy split against
    the teacher's logits, the average logits of the round's client models, or both
    (``distill.ensemble``): FedDF, Lin, Kong, Stich and Jaggi, "Ensemble Distillation for
    Robust Model Fusion in Federated Learning", NeurIPS 2020
    (:class:`fedsim.strategy.ensemble_distillation.EnsembleDistillation`, which the strategy
    stack adds when :attr:`DistillationPlace.refines_aggregate` says so).
``client`` (:class:`OnClients`)
    Each phone computes the teacher's logits on its own shard and trains against them. The
    teacher's download, inference memory and FLOPs count against the phone's memory budget and
    its simulated clock, so only phones that can afford it distill; the others train with plain
    cross-entropy and the round record says why (``no_kd``: ``memory`` or ``deadline``).

Every place but ``none`` needs the server's proxy split. With ``pretrain=proxy`` it is
``pretrain.fraction``; otherwise ``distill.proxy_fraction`` of the train split is held out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from clients.distillation import KDLoss
from fedsim.errors import ConfigError
from fedsim.proxy.pretrain import NOT_IN_KEY, Pretraining, PretrainReport, pretrain_student

ENSEMBLES = ("teacher", "clients", "both")

T = TypeVar("T")


class ProxyTeacher(Protocol):
    """The trained teacher as the server holds it (:class:`fedsim.run.starting_point.PreparedTeacher`)."""

    report: dict[str, Any]  # its cache "key" names the teacher a distilled student learnt from
    proxy_logits: np.ndarray | None  # (proxy samples, classes), in the proxy split's order


@dataclass(frozen=True)
class DistillationPlace:
    """A ``distill.where`` option: the hooks the run asks where distillation happens.

    The defaults are those of a place that distills on the server with the teacher; each place
    overrides what differs.
    """

    name: ClassVar[str]  # the option's name, as summary.json["distill"]["where"] says it
    enabled: ClassVar[bool] = True  # the server holds out a proxy split and trains a teacher
    # The server runs the teacher over its proxy split (the phones do, for client distillation).
    needs_proxy_logits: ClassVar[bool] = True
    # The strategy stack refines each aggregate (FedDF, fedsim.strategy.stack.build_stack).
    refines_aggregate: ClassVar[bool] = False
    # The phones distill: they download and run the teacher, and train locally against it.
    phones_distill: ClassVar[bool] = False

    def uses_teacher(self, ensemble: str) -> bool:
        """Whether the run needs the teacher trained (``ensemble``: ``distill.ensemble``)."""
        return self.enabled

    def uses_client_models(self, ensemble: str) -> bool:
        """Whether the server looks at individual client models (FedDF's ensemble)."""
        return False

    def pretraining(
        self, pretraining: Pretraining, distill: Distillation, fraction: float,
        teacher: ProxyTeacher | None,
    ) -> Pretraining:
        """The server's pre-training recipe for the starting point (``pretraining`` as it is)."""
        return pretraining

    def on_device(self, teacher: T | None) -> T | None:
        """The teacher the phones run (the device simulation costs it, the ClientEnvironment
        carries it), or None when they do not distill."""
        return teacher if self.phones_distill else None

    def report(self, distill: Distillation) -> dict[str, Any]:
        """What summary.json's ``distill`` says about this place beyond the loss."""
        return {}


@dataclass(frozen=True)
class NoDistillation(DistillationPlace):
    """``distill.where=none``: no distillation; the teacher is never trained."""

    name: ClassVar[str] = "none"
    enabled: ClassVar[bool] = False


@dataclass(frozen=True)
class ServerPre(DistillationPlace):
    """``distill.where=server_pre``: the starting point is distilled on the proxy split.

    Parameters
    ----------
    client_lr : float
        The phones' fine-tuning rate from the distilled student: ``simulation.local.lr``
        defaults to it, as it does to ``pretrain.client_lr`` from a pre-trained one.
    """

    name: ClassVar[str] = "server_pre"
    client_lr: float = 0.01

    def pretraining(
        self, pretraining: Pretraining, distill: Distillation, fraction: float,
        teacher: ProxyTeacher | None,
    ) -> Pretraining:
        assert teacher is not None, "server_pre needs the prepared teacher"
        return distilled_pretraining(
            pretraining, distill, fraction, teacher.report["key"], teacher.proxy_logits
        )


@dataclass(frozen=True)
class ServerEnsemble(DistillationPlace):
    """``distill.where=server_ensemble``: FedDF refines every aggregate on the proxy split."""

    name: ClassVar[str] = "server_ensemble"
    refines_aggregate: ClassVar[bool] = True

    def uses_teacher(self, ensemble: str) -> bool:
        return ensemble != "clients"

    def uses_client_models(self, ensemble: str) -> bool:
        return ensemble != "teacher"

    def report(self, distill: Distillation) -> dict[str, Any]:
        return {"ensemble": distill.ensemble}


@dataclass(frozen=True)
class OnClients(DistillationPlace):
    """``distill.where=client``: the phones that can afford the teacher distill locally."""

    name: ClassVar[str] = "client"
    needs_proxy_logits: ClassVar[bool] = False
    phones_distill: ClassVar[bool] = True


PLACES = (NoDistillation, ServerPre, ServerEnsemble, OnClients)


@dataclass(frozen=True)
class Distillation:
    """The ``distill`` node.

    Parameters
    ----------
    where : DistillationPlace
        The ``distill.where`` option (module docstring).
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

    where: DistillationPlace = NoDistillation()
    temperature: float = 4.0
    alpha: float = 0.9
    proxy_fraction: float = 0.1
    ensemble: str = "teacher"
    server_epochs: int = 1
    server_batch_size: int = 64
    server_lr: float = 0.01

    def __post_init__(self) -> None:
        places = ", ".join(p.name for p in PLACES)
        checks = (
            ("where", isinstance(self.where, DistillationPlace), f"must be one of {places}"),
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
        return self.where.enabled

    @property
    def uses_teacher(self) -> bool:
        """Whether the run needs the teacher trained."""
        return self.where.uses_teacher(self.ensemble)

    @property
    def uses_client_models(self) -> bool:
        """Whether the server looks at individual client models (FedDF's ensemble)."""
        return self.where.uses_client_models(self.ensemble)

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
