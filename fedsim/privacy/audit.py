"""The ``audit`` config group: empirical privacy of the final model, for every run.

``audit=membership`` keeps ``holdout_clients`` virtual clients out of training: they get shards
from the same partition (ids ``population .. population + holdout - 1``) but the sampler never
picks them. After the last round the final global model scores every client that trained
(members) and every held-out client (non-members) by its loss
(:mod:`fedsim.privacy.membership`), and the run reports AUC, TPR at 1 % and 0.1 % FPR and the
bound the reported epsilon allows at the same FPRs, plus a log-log ROC plot. A non-DP baseline
gets the same audit with epsilon = infinity, so the two are comparable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.privacy import PrivacyConfigError
from fedsim.privacy.membership import client_score, membership_report, plot_roc, roc_curve

ROC_FILE = "membership_roc.png"


@torch.no_grad()
def client_scores(
    model: nn.Module, shards: Callable[[int], tuple[np.ndarray, np.ndarray]], ids: Iterable[int]
) -> np.ndarray:
    """:func:`client_score` of each client in ``ids`` under ``model`` (eval mode)."""
    model.eval()
    scores = []
    for client_id in ids:
        x, y = shards(int(client_id))
        if len(y) == 0:
            continue  # a client without data cannot be scored (nor can it have trained)
        losses = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y), reduction="none")
        scores.append(client_score(losses.numpy()))
    return np.asarray(scores)


@dataclass(frozen=True)
class NoAudit:
    """No membership audit; every client id is available for training."""

    holdout_clients: int = 0

    def run(self, **_: Any) -> dict[str, Any]:
        return {"audit": "none"}


@dataclass(frozen=True)
class MembershipAudit:
    """Client-level loss-threshold membership inference on the final model.

    Parameters
    ----------
    holdout_clients : int
        Virtual clients kept out of training as the non-members.
    """

    holdout_clients: int = 20

    def __post_init__(self) -> None:
        if self.holdout_clients < 1:
            raise PrivacyConfigError(
                f"audit.holdout_clients: must be >= 1, got {self.holdout_clients}"
            )

    def run(
        self, *, model: nn.Module, shards: Callable[[int], tuple[np.ndarray, np.ndarray]],
        members: Iterable[int], population: int, epsilon: float | None, delta: float | None,
        out_dir: Path, title: str = "",
    ) -> dict[str, Any]:
        """Score members and held-out clients; write the ROC plot; return the summary fields."""
        member_scores = client_scores(model, shards, sorted(set(members)))
        nonmember_scores = client_scores(
            model, shards, range(population, population + self.holdout_clients)
        )
        if member_scores.size == 0 or nonmember_scores.size == 0:
            return {"audit": "membership", "mia_auc": None}
        eps = math.inf if epsilon is None else epsilon
        report = membership_report(member_scores, nonmember_scores, eps, delta or 0.0)
        plot_roc(
            {"loss-threshold attack": roc_curve(member_scores, nonmember_scores)},
            out_dir / ROC_FILE,
            epsilon=None if math.isinf(eps) else eps,
            delta=delta or 0.0,
            title=title,
        )
        return {
            "audit": "membership",
            "mia_auc": report.auc,
            "mia_tpr_at_fpr_0.01": report.tpr_at_1pct,
            "mia_tpr_at_fpr_0.001": report.tpr_at_01pct,
            "mia_tpr_bound_at_fpr_0.01": report.bound_at_1pct,
            "mia_tpr_bound_at_fpr_0.001": report.bound_at_01pct,
            "mia_members": report.members,
            "mia_nonmembers": report.nonmembers,
        }
