"""epsilon_simulated: the epsilon of the mechanism the simulated phones actually got.

Under noise_cohort_size M the run's m-phone cohorts get noise z * m / M on their sum at the
run's own sampling rate m / N; epsilon_simulated is dp-accounting's epsilon of exactly that.
"""

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant

from fedsim.privacy.accounting import PLD_DISCRETIZATION, default_delta
from fedsim.privacy.local_options import LocalDP
from fedsim.privacy.options import CentralDPAdaptiveClipping, CentralDPFixedClipping
from fedsim.server.sampler import CohortSampler

RUN = {"population": 100, "cohort": 10, "sampling": "poisson", "seed": 0, "rounds": 25}


def pld_epsilon(z: float, q: float, rounds: int, delta: float) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds
    )
    return PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION).compose(
        event
    ).get_epsilon(delta)


def test_epsilon_simulated_is_dp_accountings_value_for_the_effective_noise() -> None:
    # z = 20 for a cohort of M = 100 (deployment: 100 of 1000); 10 phones get z = 20 * 10 / 100.
    plan = CentralDPFixedClipping(noise_multiplier=20.0, noise_cohort_size=100).plan(**RUN)
    delta = 1000**-1.1  # the deployment's population decides delta for both epsilons
    assert plan.report["delta"] == pytest.approx(delta)
    assert plan.report["simulated_noise_multiplier"] == pytest.approx(2.0)
    plan.accountant.step(25)
    assert plan.epsilon_spent() == pytest.approx(pld_epsilon(20.0, 0.1, 25, delta), rel=1e-9)
    assert plan.epsilon_simulated() == pytest.approx(pld_epsilon(2.0, 0.1, 25, delta), rel=1e-9)
    # The simulated phones got ten times less noise: a far weaker guarantee than reported.
    assert plan.epsilon_simulated() > 5 * plan.epsilon_spent()
    report = plan.final_report()
    assert report["epsilon_simulated"] == plan.epsilon_simulated()


def test_without_noise_cohort_size_both_epsilons_are_the_same() -> None:
    plan = CentralDPFixedClipping(noise_multiplier=1.0).plan(**RUN)
    assert plan.simulated is None and plan.report["delta"] == default_delta(100)
    plan.accountant.step(3)
    assert plan.final_report()["epsilon_simulated"] == plan.epsilon_spent() > 0
    local = LocalDP(noise_multiplier=1.0).plan(population=20, sampler=CohortSampler(20, 4, 0))
    local.accountant.step(2)
    assert local.epsilon_simulated() == local.epsilon_spent()
    assert local.report["delta"] == pytest.approx(20**-1.1)


def test_adaptive_clipping_scales_its_total_noise_multiplier_too() -> None:
    plan = CentralDPAdaptiveClipping(
        noise_multiplier=20.0, clipped_count_stddev=50.0, noise_cohort_size=100
    ).plan(**RUN)
    assert plan.report["simulated_noise_multiplier"] == pytest.approx(2.0)
    plan.accountant.step(5)
    assert plan.epsilon_simulated() == pytest.approx(pld_epsilon(2.0, 0.1, 5, 1000**-1.1))


def test_tiny_effective_noise_is_accounted_by_rdp_not_minutes_of_pld() -> None:
    # z * m / M = 1 * 10 / 1000 = 0.01: PLD would take over a minute for 25 rounds.
    plan = CentralDPFixedClipping(noise_multiplier=1.0, noise_cohort_size=1000).plan(**RUN)
    assert plan.report["simulated_accountant"] == "rdp"
    assert plan.report["accountant"] == "pld"
    plan.accountant.step(25)
    assert plan.epsilon_simulated() > 1000 > 10 > plan.epsilon_spent()  # 3.45 for the deployment


def test_no_privacy_has_no_epsilon_simulated() -> None:
    from fedsim.privacy.options import NoPrivacy

    plan = NoPrivacy().plan()
    assert plan.epsilon_simulated() is None and "epsilon_simulated" not in plan.final_report()
