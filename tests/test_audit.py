"""Membership audit on real models: chance for a model that saw nobody, high for an overfit one."""

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.privacy.audit import ROC_FILE, MembershipAudit, NoAudit, client_scores

CLIENTS, PER_CLIENT, DIM, CLASSES = 40, 5, 64, 10
rng = np.random.default_rng(0)
# Random inputs with random labels: only memorisation can lower a client's loss.
X = rng.normal(size=(2 * CLIENTS, PER_CLIENT, DIM)).astype(np.float32)
Y = rng.integers(0, CLASSES, size=(2 * CLIENTS, PER_CLIENT))


def shards(client_id: int) -> tuple[np.ndarray, np.ndarray]:
    return X[client_id], Y[client_id]


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(DIM, CLASSES)


def audit(model: nn.Module, tmp_path) -> dict:
    return MembershipAudit(holdout_clients=CLIENTS).run(
        model=model, shards=shards, members=range(CLIENTS), population=CLIENTS,
        epsilon=None, delta=None, out_dir=tmp_path,
    )


def test_a_model_that_saw_neither_group_is_at_chance(tmp_path) -> None:
    report = audit(linear(), tmp_path)
    # 40 vs 40 i.i.d. scores: AUC has std ~0.065 around 0.5.
    assert abs(report["mia_auc"] - 0.5) < 0.2
    assert (report["mia_members"], report["mia_nonmembers"]) == (CLIENTS, CLIENTS)
    assert (tmp_path / ROC_FILE).stat().st_size > 0


def test_an_overfit_model_exposes_its_members(tmp_path) -> None:
    model = linear()
    x = torch.from_numpy(X[:CLIENTS].reshape(-1, DIM))
    y = torch.from_numpy(Y[:CLIENTS].reshape(-1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):  # 200 examples, 650 parameters: it memorises the members
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    report = audit(model, tmp_path)
    assert report["mia_auc"] > 0.95
    assert report["mia_tpr_at_fpr_0.01"] > 0.5
    assert report["mia_tpr_bound_at_fpr_0.01"] == 1.0  # no DP: epsilon is infinite


def test_scores_are_negative_mean_losses_by_hand() -> None:
    model = nn.Linear(DIM, CLASSES)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    # Uniform logits: every loss is log(10), so every score is -log(10).
    np.testing.assert_allclose(client_scores(model, shards, [0, 1]), [-np.log(10)] * 2, rtol=1e-6)


def test_holdout_must_be_positive_and_none_holds_out_nobody() -> None:
    with pytest.raises(ValueError, match="^audit.holdout_clients: must be >= 1"):
        MembershipAudit(holdout_clients=0)
    assert NoAudit().holdout_clients == 0
