"""Membership audits on real models: chance for a model that saw nobody, high for an overfit one,
held to the simulated mechanism's epsilon, and refused when non-members overlap members."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.data.partition.iid import IidPartitioner
from fedsim.data.splits import ArrayDataset
from fedsim.errors import ConfigError
from fedsim.privacy.audit import (
    ROC_FILE,
    AuditInputs,
    ExampleAudit,
    Guarantee,
    MembershipAudit,
    NoAudit,
    client_scores,
)
from fedsim.run.checks import refuse_overlapping_holdout

CLIENTS, PER_CLIENT, CLASSES = 40, 5, 10
rng = np.random.default_rng(0)
# Random 8x8 inputs with random labels: only memorisation can lower a loss. Clients 0..39 are
# members; 40..79 are the held-out clients; the test split is as many fresh examples.
TRAIN = ArrayDataset(
    rng.normal(size=(2 * CLIENTS * PER_CLIENT, 1, 8, 8)).astype(np.float32),
    rng.integers(0, CLASSES, size=2 * CLIENTS * PER_CLIENT),
)
TEST = ArrayDataset(
    rng.normal(size=(CLIENTS * PER_CLIENT, 1, 8, 8)).astype(np.float32),
    rng.integers(0, CLASSES, size=CLIENTS * PER_CLIENT),
)


def shard_ids(client_id: int) -> np.ndarray:
    return np.arange(client_id * PER_CLIENT, (client_id + 1) * PER_CLIENT)


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, CLASSES))


@pytest.fixture(scope="module")
def overfit() -> nn.Module:
    model = linear()
    x, y = torch.from_numpy(TRAIN.x[: CLIENTS * PER_CLIENT]), torch.from_numpy(TRAIN.y[:200])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):  # 200 examples, 650 parameters: it memorises the members
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


def inputs(model: nn.Module, out_dir: Path, guarantee: Guarantee = Guarantee()) -> AuditInputs:
    return AuditInputs(
        model=model, train=TRAIN, test=TEST, shard_ids=shard_ids, members=frozenset(range(CLIENTS)),
        population=CLIENTS, guarantee=guarantee, seed=0, out_dir=out_dir,
    )


@pytest.mark.parametrize("audit", [MembershipAudit(holdout_clients=CLIENTS), ExampleAudit()])
def test_a_model_that_saw_neither_group_is_at_chance(audit, tmp_path) -> None:
    report = audit.run(inputs(linear(), tmp_path))
    # 40 vs 40 i.i.d. client scores: AUC has std ~0.065 around 0.5 (200 vs 200 examples: ~0.03).
    assert abs(report["mia_auc"] - 0.5) < 0.2
    low, high = report["mia_auc_ci"]
    assert low <= report["mia_auc"] <= high and low < 0.5 < high
    assert (tmp_path / ROC_FILE).stat().st_size > 0


def test_client_audit_with_40_holdouts_does_not_read_fpr_1pct_at_0(overfit, tmp_path) -> None:
    report = MembershipAudit(holdout_clients=CLIENTS).run(inputs(overfit, tmp_path))
    assert report["audit"] == "membership" and report["mia_auc"] > 0.95
    assert (report["mia_members"], report["mia_nonmembers"]) == (CLIENTS, CLIENTS)
    # FPR moves in steps of 1/40: 1 % and 0.1 % are not resolvable, so no TPR is claimed.
    assert report["mia_tpr_at_fpr_0.01"] is None and report["mia_tpr_at_fpr_0.01_ci"] is None
    assert report["mia_min_resolvable_fpr"] == 1 / 40
    assert report["mia_tpr_bound_at_fpr_0.01"] == 1.0  # no DP: epsilon is infinite


def test_example_audit_exposes_an_overfit_models_examples(overfit, tmp_path) -> None:
    report = ExampleAudit().run(inputs(overfit, tmp_path))
    assert report["audit"] == "example" and report["mia_auc"] > 0.9  # measured 0.94
    # 200 member examples against 200 test examples: FPR 1 % is resolvable, 0.1 % is not.
    assert (report["mia_members"], report["mia_nonmembers"]) == (200, 200)
    # Some random test examples get a low loss by luck, so the low-FPR TPR is far below what the
    # AUC suggests (Carlini et al. 2022's point); it is measured, with its interval.
    assert report["mia_tpr_at_fpr_0.01"] >= 0.01
    low, high = report["mia_tpr_at_fpr_0.01_ci"]
    assert low <= report["mia_tpr_at_fpr_0.01"] <= high
    assert report["mia_tpr_at_fpr_0.001"] is None
    assert report["mia_within_bound"] is True  # no DP: the bound is 1


def test_example_audit_balances_members_and_non_members(tmp_path) -> None:
    report = ExampleAudit(nonmembers=30).run(inputs(linear(), tmp_path))
    assert (report["mia_members"], report["mia_nonmembers"]) == (30, 30)
    few = AuditInputs(**{**inputs(linear(), tmp_path).__dict__, "members": frozenset({0, 1})})
    assert ExampleAudit().run(few)["mia_nonmembers"] == 10  # 2 members x 5 examples


def test_the_bound_is_the_simulated_mechanisms_not_the_deployments(tmp_path) -> None:
    # noise_cohort_size: the deployment's epsilon is 0.56, the simulated phones' 50.
    borrowed = Guarantee(epsilon=0.56, epsilon_simulated=50.0, delta=1e-5)
    report = MembershipAudit(holdout_clients=CLIENTS).run(inputs(linear(), tmp_path, borrowed))
    assert report["mia_bound_epsilon"] == 50.0 and report["mia_tpr_bound_at_fpr_0.01"] == 1.0
    own = Guarantee(epsilon=1.0, epsilon_simulated=1.0, delta=1e-5)
    report = ExampleAudit().run(inputs(linear(), tmp_path, own))
    assert report["mia_tpr_bound_at_fpr_0.01"] == pytest.approx(math.e * 0.01 + 1e-5)


def test_add_remove_accounting_bounds_examples_by_group_privacy(tmp_path) -> None:
    # Poisson sampling accounts add/remove-one client; dropping one example of a client is two
    # such steps: (2 eps, (1 + e^eps) delta).
    poisson = Guarantee(epsilon=1.0, epsilon_simulated=1.0, delta=1e-5, add_remove=True)
    report = ExampleAudit().run(inputs(linear(), tmp_path, poisson))
    assert report["mia_bound_epsilon"] == 2.0
    assert report["mia_bound_delta"] == pytest.approx((1 + math.e) * 1e-5)
    bound = math.e**2 * 0.01 + (1 + math.e) * 1e-5  # 0.07393
    assert report["mia_tpr_bound_at_fpr_0.01"] == pytest.approx(bound)
    # A client-level test is one add/remove step: no group factor.
    client = MembershipAudit(holdout_clients=CLIENTS).run(inputs(linear(), tmp_path, poisson))
    assert client["mia_bound_epsilon"] == 1.0


def test_scores_are_negative_mean_losses_by_hand() -> None:
    model = linear()
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)
    # Uniform logits: every loss is log(10), so every score is -log(10).
    scores = client_scores(model, TRAIN, shard_ids, [0, 1])
    np.testing.assert_allclose(scores, [-np.log(10)] * 2, rtol=1e-6)


def test_option_values_are_checked_and_only_membership_holds_phones_out() -> None:
    with pytest.raises(ValueError, match="^audit.holdout_clients: must be >= 1"):
        MembershipAudit(holdout_clients=0)
    with pytest.raises(ValueError, match="^audit.nonmembers: must be >= 1"):
        ExampleAudit(nonmembers=0)
    with pytest.raises(ValueError, match="^audit.confidence"):
        ExampleAudit(confidence=1.5)
    assert NoAudit().holdout_clients == 0 and ExampleAudit().holdout_clients == 0
    assert NoAudit().run(inputs(linear(), Path("."))) == {"audit": "none"}


def test_overlapping_shards_void_the_client_audit_and_are_refused() -> None:
    labels = np.repeat(np.arange(10), 10)
    sampled = IidPartitioner(samples_per_client=5).split(labels, 30, 0)
    disjoint = IidPartitioner().split(labels, 30, 0)
    with pytest.raises(ConfigError, match="^audit: membership's held-out phones") as err:
        refuse_overlapping_holdout(20, sampled)
    assert "\n" not in str(err.value)
    refuse_overlapping_holdout(20, disjoint)  # disjoint shards: held-out data is nobody else's
    refuse_overlapping_holdout(0, sampled)  # audit=example or none: nobody is held out
