"""Central DP-FedAvg wrapper: fixed denominator, equal weights, clipping, noise, refusals, budget."""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg, FedAvgM, FedMedian, Krum

from fedsim.privacy import PrivacyConfigError
from fedsim.privacy.accounting import PrivacyAccountant
from fedsim.strategy.central_dp import CentralDP
from fedsim.privacy.options import CentralDPFixedClipping
from fedsim.privacy.plan import PrivacyPlan
from fedsim.server.rounds import budget_exhausted
from tests.helpers import FakeGrid, replies_for, run_cli
from tests.helpers import rounds as read_rounds


def arrays(values) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.asarray(values, dtype=np.float32))})


def test_sum_of_updates_over_expected_cohort_with_equal_weights() -> None:
    # z = 0: no noise. Three clients of a planned ten; sample counts 1, 100, 1000 must not matter.
    dp = CentralDP(FedAvg(), clipping_norm=100.0, noise_multiplier=0.0, expected_cohort=10, seed=0)
    replies = replies_for(dp, [1.0, 1.0], [[1, 0], [0, 2], [3, 3]], [1, 100, 1000])
    agg, _ = dp.aggregate_train(1, replies)
    # global + (sum of updates) / 10 = [1, 1] + [4, 5] / 10
    np.testing.assert_allclose(agg["w"].numpy(), [1.4, 1.5], rtol=1e-6)
    assert dp.clipped == [(0, 3)]


def test_each_update_is_clipped_before_summing() -> None:
    dp = CentralDP(FedAvg(), clipping_norm=1.0, noise_multiplier=0.0, expected_cohort=1, seed=0)
    agg, _ = dp.aggregate_train(1, replies_for(dp, [0.0, 0.0], [[3, 4]], [5]))
    np.testing.assert_allclose(agg["w"].numpy(), [0.6, 0.8], rtol=1e-6)  # [3,4] * 1/5
    assert dp.clipped == [(1, 1)]


def test_noise_std_is_z_c_over_m() -> None:
    dp = CentralDP(FedAvg(), clipping_norm=2.0, noise_multiplier=1.5, expected_cohort=10, seed=0)
    start = np.zeros(20_000)
    agg, _ = dp.aggregate_train(1, replies_for(dp, start, [np.zeros(20_000)], [1]))
    # std = z * C / m = 1.5 * 2 / 10 = 0.3; the sample std of 20k draws is within 2 %.
    assert np.std(agg["w"].numpy()) == pytest.approx(0.3, rel=0.02)


def test_noise_is_seeded_per_round() -> None:
    def noisy(seed: int, rnd: int) -> np.ndarray:
        dp = CentralDP(FedAvg(), 1.0, 1.0, expected_cohort=10, seed=seed)
        dp.configure_train(rnd, arrays(np.zeros(5)), ConfigRecord(), FakeGrid([1, 2]))
        return dp.aggregate_train(rnd, [])[0]["w"].numpy()

    assert np.array_equal(noisy(0, 1), noisy(0, 1))
    assert not np.array_equal(noisy(0, 1), noisy(0, 2))
    assert np.std(noisy(0, 1)) > 0  # an empty cohort still releases noise


def test_optimiser_strategies_receive_the_noisy_mean() -> None:
    dp = CentralDP(FedAvgM(server_momentum=0.0), 100.0, 0.0, expected_cohort=2, seed=0)
    agg, _ = dp.aggregate_train(1, replies_for(dp, [0.0], [[1.0], [3.0]], [1, 1]))
    np.testing.assert_allclose(agg["w"].numpy(), [2.0])  # (1 + 3) / 2


@pytest.mark.parametrize("strategy", [FedMedian(), Krum()])
def test_non_mean_aggregators_are_refused(strategy) -> None:
    with pytest.raises(PrivacyConfigError, match="needs a mean-type strategy"):
        CentralDP(strategy, 1.0, 1.0, expected_cohort=10, seed=0)


def test_budget_stops_before_the_round_that_would_exceed_it() -> None:
    ledger = PrivacyAccountant(1.0, 0.01, "poisson", 100, 10, "pld")
    eps = [PrivacyAccountant.from_state({**ledger.state(), "rounds": t}).epsilon() for t in (1, 2, 3)]
    target = (eps[1] + eps[2]) / 2  # rounds 1 and 2 fit, round 3 would not
    plan = PrivacyPlan(accountant=ledger, target_epsilon=target)
    assert [budget_exhausted(plan, r) for r in (1, 2, 3)] == [False, False, True]


def test_calibrate_picks_noise_that_meets_the_target() -> None:
    plan = CentralDPFixedClipping(target_epsilon=2.0, on_target="calibrate").plan(
        population=100, cohort=10, sampling="poisson", seed=0, rounds=10
    )
    z = plan.report["noise_multiplier"]
    spent = plan.epsilon_after(10)
    assert spent <= 2.0 and spent > 1.9  # tight: calibrate finds the smallest z
    assert plan.target_epsilon is None  # calibrated runs do not stop early
    assert 0.3 < z < 5


@pytest.mark.slow  # starts Ray
def test_dp_run_reports_epsilon_per_round_and_stops_at_the_budget(tmp_path) -> None:
    ledger = PrivacyAccountant(1.0, 0.05, "poisson", 20, 4, "pld")
    eps = [PrivacyAccountant.from_state({**ledger.state(), "rounds": t}).epsilon() for t in (1, 2, 3)]
    target = (eps[1] + eps[2]) / 2
    run_cli(
        tmp_path, "privacy=central_dp", "simulation.sampling=poisson", "simulation.rounds=5",
        "privacy.noise_multiplier=1.0", "privacy.delta=0.05", f"privacy.target_epsilon={target}",
        "norm=group",
    )
    records = read_rounds(tmp_path)
    assert [r["round"] for r in records] == [1, 2]
    assert [r["epsilon"] for r in records] == pytest.approx(eps[:2], rel=1e-9)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"] == "privacy_budget"
    assert summary["epsilon"] == pytest.approx(eps[1]) and summary["delta"] == 0.05
    assert summary["accountant"] == "pld" and summary["noise_multiplier"] == 1.0
    assert 0.0 <= summary["clipped_fraction"] <= 1.0
