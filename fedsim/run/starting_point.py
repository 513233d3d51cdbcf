"""The model federated training starts from, and the teacher distillation learns from.

Both are trained by the server on its proxy split before the first round (and cached on disk):
the pre-trained or distilled student (:mod:`fedsim.proxy.pretrain`,
:mod:`fedsim.proxy.distillation`) and the teacher (:mod:`fedsim.proxy.teacher`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clients.distillation import TeacherOnDevice, logits_of
from fedsim.proxy.pretrain import load_pretrained, pretrained_state
from fedsim.proxy.teacher import trained_teacher
from fedsim.run.preparation import Prepared

log = logging.getLogger("fedsim")


def initial_model(prepared: Prepared) -> torch.nn.Module:
    """The initial global model (see :func:`starting_point`)."""
    return starting_point(prepared, prepared_teacher(prepared))[0]


@dataclass(frozen=True)
class PreparedTeacher:
    """The trained teacher, its logits on the proxy split, its report and its phone recipe."""

    model: torch.nn.Module
    # (proxy samples, classes) in the proxy split's order; None for client distillation, where
    # only the phones run the teacher.
    proxy_logits: np.ndarray | None
    report: dict[str, Any]
    on_device: TeacherOnDevice


def prepared_teacher(prepared: Prepared) -> PreparedTeacher | None:
    """The teacher trained on the proxy split (or from its cache), when distillation uses one."""
    if not prepared.distill.uses_teacher:
        return None
    splits = prepared.splits
    model, report, on_device = trained_teacher(
        prepared.teacher, prepared.shards, splits.input_shape, splits.num_classes, splits.test
    )
    warn_if_near_chance("teacher", report.get("test_accuracy"), splits.num_classes)
    logits = None
    if prepared.distill.where.needs_proxy_logits:  # the server distills on its proxy split
        x, _ = prepared.shards.proxy()
        logits = logits_of(model, torch.from_numpy(x)).numpy()
    return PreparedTeacher(model, logits, report, on_device)


def starting_point(
    prepared: Prepared, teacher: PreparedTeacher | None = None
) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """The initial global model, and the pre-training report (``None`` without pre-training).

    Without pre-training the model is the seeded initialisation (part of the run seed). With it,
    the server's pre-trained student (:mod:`fedsim.proxy.pretrain`, cached on disk) replaces it: its
    weights depend on ``pretrain.*`` and not on the run seed, so runs that differ in seed,
    fine-tuning mode or fleet all start from the same student. The distillation place may change
    the recipe: with ``distill.where=server_pre`` the pre-training distills from ``teacher``
    (:class:`fedsim.proxy.distillation.DistilledPretraining`) with the ``pretrain`` node's recipe.
    """
    torch.manual_seed(prepared.settings.seed)
    model = prepared.builder()
    pretraining = prepared.distill.where.pretraining(
        prepared.pretraining, prepared.distill, prepared.shards.proxy_fraction, teacher
    )
    if not pretraining.enabled:
        return model, None
    state, report = pretrained_state(
        pretraining, prepared.builder, prepared.shards, test=prepared.splits.test
    )
    load_pretrained(model, state)
    warn_if_near_chance("pre-trained student", report.get("test_accuracy"), prepared.splits.num_classes)
    return model, report


def near_chance(accuracy: float, num_classes: int) -> bool:
    """Whether ``accuracy`` is within a tenth of the way from chance to perfect.

    For 10 classes that is below 0.19: a model there has learnt next to nothing, and whatever
    starts from or distils it inherits that silently.
    """
    chance = 1.0 / num_classes
    return accuracy < chance + 0.1 * (1.0 - chance)


def warn_if_near_chance(what: str, accuracy: float | None, num_classes: int) -> None:
    """One warning line when the server's ``what`` tests near chance (``None``: not measured)."""
    if accuracy is not None and near_chance(accuracy, num_classes):
        log.warning(
            "%s tests at %.3f, near chance (%.3f): its recipe did not learn; see "
            "docs/on-device-learning.md, 'Starting point'", what, accuracy, 1.0 / num_classes,
        )
