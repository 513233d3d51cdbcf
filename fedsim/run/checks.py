"""Refusals of option combinations that cannot work together, checked before Ray starts.

Each option checks its own values when it is built (:mod:`fedsim.run.options`); what is left are
the rules that span options: DP with BatchNorm, over-selection with DP, FedSGD with a
fine-tuning mode, distillation that reads what privacy hides. Each failure is one line naming
what to fix.
"""

from __future__ import annotations

from typing import Any

import torch

from clients.finetune import FineTuneMode
from fedsim.config import Faults, Simulation
from fedsim.errors import ConfigError
from fedsim.fleet.budget import MemoryBudget
from fedsim.fleet.fleet import Fleet
from fedsim.models.factory import ModelBuilder
from fedsim.privacy.plan import PrivacyPlan
from fedsim.privacy.secagg import NoSecureAggregation
from fedsim.proxy.distillation import Distillation
from fedsim.updates import GRADIENT, UpdateRule


def refuse_batch_statistics(builder: ModelBuilder, privacy: PrivacyPlan) -> None:
    """DP covers the exchanged update; BatchNorm's running statistics would be noised into
    nonsense (a negative variance) or would have to travel unprotected, so DP runs need
    ``norm=group`` or ``norm=none`` (the DP options select ``group`` by default)."""
    if privacy.accountant is None:
        return
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in builder().modules()):
        raise ConfigError(
            f"norm: privacy={privacy.report.get('privacy')} cannot protect BatchNorm running "
            "statistics; use norm=group or norm=none"
        )


def check_fleet(
    settings: Simulation, fleet: Fleet, finetune: FineTuneMode, budget: MemoryBudget,
    update: UpdateRule, privacy: PrivacyPlan,
) -> None:
    """Refuse device settings that cannot work together.

    - Over-selection keeps the first finishers, so who is aggregated depends on speed: DP's
      accounting assumes a cohort sampled independently of the data and the device, and the
      sampling-amplification bound would no longer hold.
    - A FedSGD gradient (``update.kind=gradient``) is one full-batch gradient of every
      parameter; it has no fine-tuning mode.
    """
    if settings.overcommit > 0 and privacy.accountant is not None:
        raise ConfigError(
            "simulation.overcommit: over-selection keeps the fastest phones, which breaks DP's "
            "sampling assumption; use overcommit=0 with privacy"
        )
    modes = {finetune.name} | {p.finetune for p in fleet.tiers.values() if p.finetune}
    if budget.policy == "adapt":
        modes |= set(budget.fallback)
    if update.kind == GRADIENT and modes != {"full"}:
        raise ConfigError(
            f"finetune.mode: update.kind=gradient sends a full-batch gradient of every parameter; "
            f"fine-tuning mode(s) {', '.join(sorted(modes - {'full'}))} need kind weights or delta"
        )


def check_distillation(
    distill: Distillation, privacy: PrivacyPlan, secagg: Any, update: UpdateRule
) -> None:
    """Refuse distillation settings that cannot work with the rest of the run.

    - FedDF's client ensemble runs every client model on the proxy split: central DP protects
      only the noised aggregate, and secure aggregation hides the individual models.
    - A FedSGD gradient (``update.kind=gradient``) is plain cross-entropy's.
    """
    if distill.uses_client_models and privacy.accountant is not None:
        raise ConfigError(
            f"distill.ensemble: '{distill.ensemble}' reads every client model, which central DP "
            "does not protect; use distill.ensemble=teacher with privacy"
        )
    if distill.uses_client_models and not isinstance(secagg, NoSecureAggregation):
        raise ConfigError(
            f"distill.ensemble: '{distill.ensemble}' needs the individual client models, which "
            "secure aggregation hides; use distill.ensemble=teacher or secagg=none"
        )
    if distill.where.phones_distill and update.kind == GRADIENT:
        raise ConfigError(
            "distill.where: client distillation trains locally; update.kind=gradient sends one "
            "cross-entropy gradient (use kind weights or delta)"
        )


def check_faults(faults: Faults, settings: Simulation) -> None:
    """A slow phone is one that overruns ``simulation.client_timeout_s``: without one, none can."""
    if faults.slow_client_rate and settings.client_timeout_s is None:
        raise ConfigError("faults.slow_client_rate: needs simulation.client_timeout_s to overrun")
