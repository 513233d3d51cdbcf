"""User-level DP-FedAvg accounting against dp_accounting itself, on numbers one can re-derive.

Setting throughout: population 100, cohort 10 (q = 0.1), delta = 1/100, as in the report table.
"""

import json
import math

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fedsim.privacy import PrivacyConfigError
from fedsim.privacy.accounting import (
    CALIBRATION_TOL,
    MIN_NOISE_MULTIPLIER,
    PrivacyAccountant,
    calibrate_noise,
    default_delta,
    dp_event,
    epsilon,
    rounds_within_budget,
)

N, M, DELTA = 100, 10, 0.01


def eps(z: float, rounds: int, sampling: str = "poisson", accountant: str = "pld") -> float:
    return epsilon(dp_event(z, rounds, sampling, N, M), DELTA, accountant)


def test_poisson_epsilon_equals_dp_accounting_computed_by_hand() -> None:
    by_hand = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), 25
    )
    assert dp_event(1.0, 25, "poisson", N, M) == by_hand
    # The library's default PLD grid is 1e-4; ours is 1e-3 (pessimistic, so never below it).
    pld = PLDAccountant().compose(by_hand).get_epsilon(DELTA)
    assert eps(1.0, 25) == pytest.approx(pld, rel=1e-3)
    assert eps(1.0, 25) >= pld - 1e-9
    rdp = RdpAccountant().compose(by_hand).get_epsilon(DELTA)
    assert eps(1.0, 25, accountant="rdp") == pytest.approx(rdp, rel=1e-12)


def test_rdp_upper_bounds_pld_and_stays_close() -> None:
    # Observed RDP / PLD: 1.37 (z=0.6), 1.38 (z=1), 1.35 (z=2); RDP's conversion to (eps, delta)
    # is lossy, PLD is tight up to its discretisation.
    for z in (0.6, 1.0, 2.0):
        pld, rdp = eps(z, 25), eps(z, 25, accountant="rdp")
        assert pld <= rdp <= 1.5 * pld


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    by_rounds = [eps(1.0, t) for t in (1, 10, 25, 50)]
    assert by_rounds == sorted(by_rounds) and len(set(by_rounds)) == 4
    by_noise = [eps(z, 25) for z in (0.8, 1.0, 2.0, 4.0)]
    assert by_noise == sorted(by_noise, reverse=True) and len(set(by_noise)) == 4


@pytest.mark.parametrize(
    ("sampling", "accountant"), [("poisson", "pld"), ("poisson", "rdp"), ("fixed", "rdp")]
)
def test_no_noise_is_infinite_and_no_rounds_is_free(sampling: str, accountant: str) -> None:
    assert eps(0.0, 25, sampling, accountant) == math.inf
    assert eps(1.0, 0, sampling, accountant) == 0.0


def test_fixed_sampling_is_rdp_replace_one_at_half_the_multiplier() -> None:
    # Replace-one moves the clipped sum by 2C; dp_accounting's without-replacement RDP reads the
    # multiplier as std / sensitivity, so z = 1 must enter as 0.5 (google/differential-privacy#378).
    by_hand = dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(N, M, dp_accounting.GaussianDpEvent(0.5)), 25
    )
    assert dp_event(1.0, 25, "fixed", N, M) == by_hand
    replace_one = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    assert eps(1.0, 25, "fixed", "rdp") == pytest.approx(
        replace_one.compose(by_hand).get_epsilon(DELTA), rel=1e-12
    )
    assert not PLDAccountant().supports(by_hand)  # why "fixed" + "pld" is refused
    with pytest.raises(PrivacyConfigError, match=r"^privacy\.accountant: "):
        eps(1.0, 25, "fixed", "pld")


def test_calibrate_noise_meets_the_target_within_tolerance() -> None:
    z = calibrate_noise(2.0, DELTA, 25, "poisson", N, M)
    assert eps(z, 25) <= 2.0
    assert eps(z - 2 * CALIBRATION_TOL, 25) > 2.0  # z is at most tol above the optimum
    # RDP over-estimates epsilon, so it asks for more noise.
    assert calibrate_noise(2.0, DELTA, 25, "poisson", N, M, "rdp") > z


def test_calibrate_noise_edges() -> None:
    assert calibrate_noise(2.0, DELTA, 0, "poisson", N, M) == 0.0
    assert calibrate_noise(1e4, DELTA, 1, "poisson", N, M, "rdp") == MIN_NOISE_MULTIPLIER
    with pytest.raises(PrivacyConfigError, match=r"^privacy\.target_epsilon: "):
        calibrate_noise(1e-9, DELTA, 1000, "poisson", N, 100, "rdp")


def test_rounds_within_budget_is_the_last_round_inside() -> None:
    rounds = rounds_within_budget(2.0, DELTA, 1.0, "poisson", N, M, max_rounds=1000)
    assert eps(1.0, rounds) <= 2.0 < eps(1.0, rounds + 1)
    assert rounds_within_budget(2.0, DELTA, 1.0, "poisson", N, M, max_rounds=5) == 5
    assert rounds_within_budget(2.0, DELTA, 0.0, "poisson", N, M, max_rounds=50) == 0


def test_accountant_counts_rounds_and_round_trips_its_state() -> None:
    accountant = PrivacyAccountant(1.0, DELTA, "poisson", N, M)
    assert accountant.epsilon() == 0.0
    for _ in range(25):
        accountant.step()
    assert accountant.rounds == 25
    assert accountant.epsilon() == pytest.approx(eps(1.0, 25), rel=1e-12)
    restored = PrivacyAccountant.from_state(json.loads(json.dumps(accountant.state())))
    assert restored.rounds == 25 and restored.state() == accountant.state()
    assert restored.epsilon() == accountant.epsilon()


def test_config_errors_are_one_line_and_name_the_key() -> None:
    cases = [
        (lambda: PrivacyAccountant(1.0, DELTA, "fixed", N, M), "privacy.accountant"),
        (lambda: PrivacyAccountant(-1.0, DELTA, "poisson", N, M), "privacy.noise_multiplier"),
        (lambda: PrivacyAccountant(1.0, 1.5, "poisson", N, M), "privacy.delta"),
        (lambda: PrivacyAccountant(1.0, DELTA, "shuffle", N, M), "simulation.sampling"),
        (
            lambda: PrivacyAccountant(1.0, DELTA, "poisson", N, N + 1),
            "simulation.clients_per_round",
        ),
        (lambda: PrivacyAccountant(1.0, DELTA, "poisson", N, M, "gdp"), "privacy.accountant"),
    ]
    for build, key in cases:
        with pytest.raises(PrivacyConfigError) as err:
            build()
        assert str(err.value).startswith(f"{key}: ") and "\n" not in str(err.value)


def test_default_delta_is_population_to_the_minus_1_1() -> None:
    assert default_delta(100) == pytest.approx(0.0063096, rel=1e-4)  # 100^-1.1 < 1/100
    assert default_delta(10**6) == pytest.approx(2.512e-7, rel=1e-3)
    assert default_delta(20) == pytest.approx(0.037057, rel=1e-4)
