"""Adaptive clipping, noise_cohort_size and local DP, each checked against hand-computed values."""

import math

import dp_accounting
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg, QFedAvg

from clients.local_dp import privatize
from fedsim import keys
from fedsim.privacy import PrivacyConfigError
from fedsim.privacy.accounting import PrivacyAccountant, epsilon
from fedsim.privacy.local_accounting import LocalDPAccountant
from fedsim.privacy.local_options import LocalDP
from fedsim.privacy.options import CentralDPAdaptiveClipping, CentralDPFixedClipping, deployment
from fedsim.privacy.plan import AdaptiveClipping, CentralNoise, LocalNoise
from fedsim.strategy.central_dp import CentralDP
from fedsim.strategy.local_dp import LocalDPInstructions
from fedsim.strategy.stack import with_privacy
from fedsim.server.sampler import CohortSampler
from tests.helpers import FakeGrid, replies_for

RUN = {"population": 100, "cohort": 10, "sampling": "poisson", "seed": 0, "rounds": 5}


# --- adaptive clipping (Andrew et al. 2021) ----------------------------------------------------


def test_adaptive_norm_moves_by_the_papers_step_by_hand() -> None:
    # No count noise: b_bar = (unclipped - n/2) / m + 1/2 = (1 - 2) / 4 + 0.5 = 0.25.
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_stddev=0.0)
    dp = CentralDP(FedAvg(), 1.0, 0.0, expected_cohort=4, seed=0, adaptive=adaptive)
    updates = [[0.5, 0.0], [2.0, 0.0], [0.0, 3.0], [4.0, 0.0]]  # norms 0.5, 2, 3, 4: one within C
    dp.aggregate_train(1, replies_for(dp, [0.0, 0.0], updates, [1, 1, 1, 1]))
    assert dp.norms_used == {1: 1.0}
    assert dp.clipping_norm == pytest.approx(math.exp(-0.2 * (0.25 - 0.5)))  # 1.0513: grows
    assert dp.clipped == [(3, 4)]


def test_adaptive_norm_shrinks_when_every_update_is_within_it() -> None:
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_stddev=0.0)
    dp = CentralDP(FedAvg(), 10.0, 0.0, expected_cohort=2, seed=0, adaptive=adaptive)
    dp.aggregate_train(1, replies_for(dp, [0.0], [[1.0], [2.0]], [1, 1]))
    assert dp.clipping_norm == pytest.approx(10.0 * math.exp(-0.2 * 0.5))  # b_bar = 1


def test_adaptive_option_accounts_the_total_z_and_noises_updates_with_z_delta() -> None:
    plan = CentralDPAdaptiveClipping(noise_multiplier=1.0, clipped_count_stddev=2.0).plan(**RUN)
    z_delta = (1.0**-2 - (2 * 2.0) ** -2) ** -0.5  # 1.0328
    assert plan.report["update_noise_multiplier"] == pytest.approx(z_delta)
    assert plan.noise.noise_multiplier == pytest.approx(z_delta)
    fixed = CentralDPFixedClipping(noise_multiplier=1.0).plan(**RUN)
    assert plan.epsilon_after(5) == pytest.approx(fixed.epsilon_after(5))  # same budget
    # Default sigma_b: cohort / 20 = 0.5 would leave nothing for the updates; it becomes z.
    small = CentralDPAdaptiveClipping(noise_multiplier=1.0).plan(**RUN)
    assert small.report["clipped_count_stddev"] == 1.0


def test_adaptive_count_noise_that_uses_up_the_budget_is_refused() -> None:
    with pytest.raises(PrivacyConfigError, match="clipped_count_stddev"):
        CentralDPAdaptiveClipping(noise_multiplier=2.0, clipped_count_stddev=0.5).plan(**RUN)


# --- noise_cohort_size (pfl-research) ----------------------------------------------------------


def test_noise_cohort_size_keeps_the_sampling_rate_and_scales_the_noise() -> None:
    where = deployment(population=100, cohort=10, noise_cohort_size=1000, accounting_population=None)
    assert (where.population, where.cohort, where.noise_scale) == (10_000, 1000, 0.01)
    plan = CentralDPFixedClipping(noise_multiplier=1.0, noise_cohort_size=1000).plan(**RUN)
    assert plan.noise.noise_multiplier == pytest.approx(0.01)  # z * m / M on the sum
    delta = 10_000**-1.1  # of the accounting population: 10^-4.4 = 3.98e-5
    direct = PrivacyAccountant(1.0, delta, "poisson", 10_000, 1000, "pld").epsilon_after(5)
    assert plan.epsilon_after(5) == pytest.approx(direct)
    assert plan.report["delta"] == pytest.approx(3.981e-5, rel=1e-3)
    assert "deployment sampling 1000 of 10000" in plan.report["epsilon_is_for"]


def test_noise_cohort_size_gives_the_mean_the_production_std() -> None:
    plan = CentralDPFixedClipping(
        clipping_norm=2.0, noise_multiplier=1.5, noise_cohort_size=100
    ).plan(**RUN)
    dp = with_privacy(FedAvg(), plan.noise)  # the wrapper the strategy stack builds
    assert isinstance(dp, CentralDP)
    agg, _ = dp.aggregate_train(1, replies_for(dp, np.zeros(20_000), [np.zeros(20_000)], [1]))
    # std on the mean = z * C / M = 1.5 * 2 / 100 = 0.03, whatever the simulated cohort (10).
    assert np.std(agg["w"].numpy()) == pytest.approx(0.03, rel=0.02)


def test_accounting_population_without_noise_cohort_size_is_refused() -> None:
    with pytest.raises(PrivacyConfigError, match="^privacy.accounting_population"):
        CentralDPFixedClipping(accounting_population=5000).plan(**RUN)


# --- local DP -------------------------------------------------------------------------------


def test_privatize_clips_then_adds_z_c_noise() -> None:
    received = {"w": np.zeros(2, np.float32)}
    rng = np.random.default_rng(0)
    out, clipped = privatize(received, {"w": np.array([3.0, 4.0], np.float32)}, 1.0, 0.0, rng)
    np.testing.assert_allclose(out["w"], [0.6, 0.8], rtol=1e-6)
    assert clipped and out["w"].dtype == np.float32
    big = {"w": np.zeros(20_000, np.float32)}
    noisy, clipped = privatize(big, big, clipping_norm=2.0, noise_multiplier=1.5, rng=rng)
    assert not clipped
    assert np.std(noisy["w"]) == pytest.approx(3.0, rel=0.02)  # z * C


def test_local_dp_accountant_reports_the_most_sampled_client() -> None:
    sampler = CohortSampler(population=10, clients_per_round=3, seed=4, scheme="fixed")
    ledger = LocalDPAccountant(1.0, 1e-3, sampler, "pld")
    ledger.step(6)
    counts = np.bincount(np.concatenate([sampler.cohort(r) for r in range(1, 7)]), minlength=10)
    assert ledger.max_reports == counts.max()
    gaussian = dp_accounting.GaussianDpEvent(0.5)  # replace-one: sensitivity 2C -> z / 2
    direct = epsilon(dp_accounting.SelfComposedDpEvent(gaussian, int(counts.max())), 1e-3, "pld")
    assert ledger.epsilon() == pytest.approx(direct)
    # What-if queries agree with stepping, forwards and backwards.
    fresh = LocalDPAccountant(1.0, 1e-3, sampler, "pld")
    assert fresh.epsilon_after(6) == pytest.approx(ledger.epsilon())
    assert ledger.epsilon_after(2) == fresh.epsilon_after(2)


def test_local_dp_stamps_every_message_and_counts_clipped_reports() -> None:
    wrapped = LocalDPInstructions(FedAvg(), clipping_norm=0.5, noise_multiplier=2.0)
    start = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    messages = list(wrapped.configure_train(1, start, ConfigRecord(), FakeGrid([1, 2])))
    assert messages
    for message in messages:
        config = message.content.config_records["config"]
        assert config[keys.LOCAL_DP_CLIPPING_NORM] == 0.5
        assert config[keys.LOCAL_DP_NOISE_MULTIPLIER] == 2.0


def test_local_dp_refuses_loss_weighted_aggregation() -> None:
    plan = LocalDP().plan(population=10, sampler=CohortSampler(10, 2, 0))
    assert plan.noise == LocalNoise(clipping_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(PrivacyConfigError, match="QFedAvg"):
        plan.check(QFedAvg(client_learning_rate=0.1))  # before Ray starts
    with pytest.raises(PrivacyConfigError, match="QFedAvg"):
        with_privacy(QFedAvg(client_learning_rate=0.1), plan.noise)


def test_the_stack_builds_the_wrapper_each_option_describes() -> None:
    central = with_privacy(FedAvg(), CentralNoise(2.0, 0.5, expected_cohort=10, seed=3))
    assert isinstance(central, CentralDP) and central.adaptive is None
    assert (central.clipping_norm, central.noise_multiplier, central.expected_cohort,
            central.seed) == (2.0, 0.5, 10, 3)
    local = with_privacy(FedAvg(), LocalNoise(0.5, 2.0))
    assert isinstance(local, LocalDPInstructions)
    assert (local.clipping_norm, local.noise_multiplier) == (0.5, 2.0)
    user = FedAvg()
    assert with_privacy(user, None) is user
