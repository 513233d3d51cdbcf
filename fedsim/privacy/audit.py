"""The ``audit`` config group: empirical privacy of the final model, for every run.

After the last round the final global model scores members and non-members by their loss
(the loss-threshold attack of Yeom et al. 2018; the math is :mod:`fedsim.privacy.membership`),
and the run reports AUC, TPR at 1 % and 0.1 % FPR, each with a bootstrap interval, the bound
(epsilon, delta)-DP allows at the same FPRs, and a log-log ROC plot. A non-DP baseline gets the
same audit with epsilon = infinity, so the two are comparable.

- ``audit=example`` (default): members are the training examples of the phones that trained,
  non-members examples of the test split, which no phone holds and nothing trains on; both are
  drawn from the same distribution, and the two sets are balanced by a seeded subsample. No
  phone is withheld, and a few hundred non-members resolve TPR at FPR 1 %.
- ``audit=membership``: client level. ``holdout_clients`` virtual clients get shards from the
  same partition (ids ``population .. population + holdout - 1``) but are never sampled; each
  client's score is its mean loss. It costs the run those phones' data, and resolves FPR 1 %
  only with 100 held-out phones or more.
- ``audit=none``.

Which guarantee the model is held to. The bound is for the mechanism the *simulated* phones
went through: ``epsilon_simulated``, which differs from the reported (deployment's) epsilon
under ``privacy.noise_cohort_size`` (:mod:`fedsim.privacy.options`). User-level DP bounds
example-level membership too, since an example belongs to one user: datasets with and without
one example differ in one user's data. Under replace-one accounting (fixed-size sampling, local
DP) those are neighbours, and the same (epsilon, delta) applies; under add/remove-one accounting
(Poisson sampling) they are two steps apart (remove the user, add it back without the example),
so the example-level bound uses group privacy of 2, ``(2 eps, (1 + e^eps) delta)``. The bound
describes a test between two fixed neighbours; held against members and non-members drawn from
one distribution it is the reference one-run audits use (Steinke, Nasr & Jagielski, "Privacy
Auditing with One (1) Training Run", NeurIPS 2023), and a TPR whose interval stays above it
would be evidence against the accounting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.data.splits import ArrayDataset
from fedsim.privacy import PrivacyConfigError
from fedsim.privacy.bootstrap import CONFIDENCE, RESAMPLES
from fedsim.privacy.membership import (
    client_score,
    group_guarantee,
    membership_report,
    plot_roc,
    roc_curve,
)

ROC_FILE = "membership_roc.png"
_BATCH = 256  # examples per forward pass when scoring


@dataclass(frozen=True)
class Guarantee:
    """What DP promised about the audited model.

    ``epsilon`` is the reported one (the deployment's under ``noise_cohort_size``),
    ``epsilon_simulated`` the simulated phones' (None for both: no DP; ``math.inf``: a DP
    mechanism without noise). ``add_remove``: the accountant's neighbours differ by adding or
    removing a client, else by replacing one.
    """

    epsilon: float | None = None
    epsilon_simulated: float | None = None
    delta: float | None = None
    add_remove: bool = False

    def for_clients(self) -> tuple[float, float]:
        """``(epsilon, delta)`` bounding client-level membership: the simulated mechanism's."""
        eps = self.epsilon if self.epsilon_simulated is None else self.epsilon_simulated
        return (math.inf if eps is None else eps), (self.delta or 0.0)

    def for_examples(self) -> tuple[float, float]:
        """``(epsilon, delta)`` bounding example-level membership (see the module docstring)."""
        eps, delta = self.for_clients()
        return group_guarantee(eps, delta, 2 if self.add_remove else 1)


@dataclass(frozen=True)
class AuditInputs:
    """What an audit reads: the final model, the data, who trained, and the guarantee."""

    model: nn.Module
    train: ArrayDataset
    test: ArrayDataset
    shard_ids: Callable[[int], np.ndarray]  # client id -> its train-split ids
    members: frozenset[int]  # clients that trained
    population: int
    guarantee: Guarantee
    seed: int
    out_dir: Path
    title: str = ""


@torch.no_grad()
def example_losses(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy of ``model`` (eval mode) on ``(x, y)``, float64 ``(n,)``."""
    model.eval()
    losses = [
        F.cross_entropy(
            model(torch.from_numpy(x[i : i + _BATCH])), torch.from_numpy(y[i : i + _BATCH]),
            reduction="none",
        ).numpy()
        for i in range(0, len(y), _BATCH)
    ]
    return np.concatenate(losses).astype(np.float64) if losses else np.empty(0)


def client_scores(
    model: nn.Module, train: ArrayDataset, shard_ids: Callable[[int], np.ndarray],
    ids: Iterable[int],
) -> np.ndarray:
    """:func:`client_score` of each client in ``ids`` under ``model``."""
    scores = []
    for client_id in ids:
        idx = shard_ids(int(client_id))
        if len(idx) == 0:
            continue  # a client without data cannot be scored (nor can it have trained)
        scores.append(client_score(example_losses(model, train.x[idx], train.y[idx])))
    return np.asarray(scores)


def balanced_examples(
    member_ids: np.ndarray, nonmembers: int, cap: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Equal-sized seeded subsamples of member train ids and of test positions ``[0, nonmembers)``.

    Equal counts keep AUC from leaning on the larger class; ``cap`` bounds both (and the cost).
    """
    n = min(len(member_ids), nonmembers, cap)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA0D1]))
    members = np.sort(rng.choice(member_ids, n, replace=False))
    return members, np.sort(rng.choice(nonmembers, n, replace=False))


def _audit_fields(
    name: str, members: np.ndarray, nonmembers: np.ndarray, bound: tuple[float, float],
    inputs: AuditInputs, resamples: int, confidence: float,
) -> dict[str, Any]:
    """Report, plot and summary fields shared by both audits (``name``: the option's)."""
    report = membership_report(
        members, nonmembers, *bound, resamples=resamples, confidence=confidence, seed=inputs.seed
    )
    g = inputs.guarantee
    simulated = g.for_clients()[0]
    label = f"DP bound for the simulated mechanism (ε_sim={_fmt(simulated)})"
    if bound[0] != simulated:
        label += f",\nexample level ε={_fmt(bound[0])} (group of 2)"
    level = "example" if name == "example" else "client"
    title = f"{level}-level membership inference, {inputs.title}"
    if g.epsilon is not None:
        whose = "deployment's" if g.epsilon != simulated else "reported"
        title += f"\n{whose} ε={_fmt(g.epsilon)}, δ={g.delta:.2g}"
    unit = "examples" if level == "example" else "clients"
    plot_roc(
        {f"loss-threshold attack (AUC {report.auc:.2f})": roc_curve(members, nonmembers)},
        inputs.out_dir / ROC_FILE, bound=bound if math.isfinite(bound[0]) else None,
        bound_label=label, title=title, unit=unit,
    )
    return {"audit": name, **report.fields()}


def _fmt(value: float | None) -> str:
    return "∞" if value is None or math.isinf(value) else f"{value:.3g}"


def _check_bootstrap(resamples: int, confidence: float) -> None:
    if resamples < 1:
        raise PrivacyConfigError(f"audit.resamples: must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise PrivacyConfigError(f"audit.confidence: must be in (0, 1), got {confidence}")


@dataclass(frozen=True)
class NoAudit:
    """No membership audit; every client id is available for training."""

    holdout_clients: int = 0

    def run(self, inputs: AuditInputs) -> dict[str, Any]:
        return {"audit": "none"}


@dataclass(frozen=True)
class ExampleAudit:
    """Example-level loss-threshold membership inference on the final model.

    Parameters
    ----------
    nonmembers : int
        Most test examples to use as non-members (and as many member examples); with ``n`` of
        them an FPR below ``1/n`` is reported as not resolvable.
    resamples, confidence : int, float
        Of the bootstrap intervals (:mod:`fedsim.privacy.bootstrap`).
    """

    holdout_clients: ClassVar[int] = 0  # no phone is withheld from training
    nonmembers: int = 1000
    resamples: int = RESAMPLES
    confidence: float = CONFIDENCE

    def __post_init__(self) -> None:
        if self.nonmembers < 1:
            raise PrivacyConfigError(f"audit.nonmembers: must be >= 1, got {self.nonmembers}")
        _check_bootstrap(self.resamples, self.confidence)

    def run(self, inputs: AuditInputs) -> dict[str, Any]:
        """Score balanced member and test examples; write the ROC plot; return the fields."""
        trained = [inputs.shard_ids(c) for c in sorted(inputs.members)]
        # Sampled shards may overlap: an example two members hold is one member example.
        member_ids = np.unique(np.concatenate(trained)) if trained else np.empty(0, np.int64)
        if len(member_ids) == 0 or len(inputs.test) == 0:
            return {"audit": "example", "mia_auc": None}
        members, nonmembers = balanced_examples(
            member_ids, len(inputs.test), self.nonmembers, inputs.seed
        )
        model, train, test = inputs.model, inputs.train, inputs.test
        member_scores = -example_losses(model, train.x[members], train.y[members])
        nonmember_scores = -example_losses(model, test.x[nonmembers], test.y[nonmembers])
        return _audit_fields(
            "example", member_scores, nonmember_scores, inputs.guarantee.for_examples(), inputs,
            self.resamples, self.confidence,
        )


@dataclass(frozen=True)
class MembershipAudit:
    """Client-level loss-threshold membership inference on the final model.

    Parameters
    ----------
    holdout_clients : int
        Virtual clients kept out of training as the non-members (100 or more resolve FPR 1 %).
    resamples, confidence : int, float
        Of the bootstrap intervals (:mod:`fedsim.privacy.bootstrap`).
    """

    holdout_clients: int = 20
    resamples: int = RESAMPLES
    confidence: float = CONFIDENCE

    def __post_init__(self) -> None:
        if self.holdout_clients < 1:
            raise PrivacyConfigError(
                f"audit.holdout_clients: must be >= 1, got {self.holdout_clients}"
            )
        _check_bootstrap(self.resamples, self.confidence)

    def run(self, inputs: AuditInputs) -> dict[str, Any]:
        """Score members and held-out clients; write the ROC plot; return the summary fields."""
        model, train, shard_ids = inputs.model, inputs.train, inputs.shard_ids
        member_scores = client_scores(model, train, shard_ids, sorted(inputs.members))
        holdout = range(inputs.population, inputs.population + self.holdout_clients)
        nonmember_scores = client_scores(model, train, shard_ids, holdout)
        if member_scores.size == 0 or nonmember_scores.size == 0:
            return {"audit": "membership", "mia_auc": None}
        return _audit_fields(
            "membership", member_scores, nonmember_scores, inputs.guarantee.for_clients(),
            inputs, self.resamples, self.confidence,
        )


Audit = NoAudit | ExampleAudit | MembershipAudit
