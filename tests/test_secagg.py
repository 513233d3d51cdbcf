"""SecAgg+ cost model: abort probability and bytes by hand, refusals."""

import pytest
from flwr.serverapp.strategy import FedAvg, FedMedian

from fedsim.privacy import PrivacyConfigError
from fedsim.strategy.central_dp import CentralDP
from fedsim.privacy.secagg import LABEL, SecAggPlusCostModel, abort_probability, binomial_cdf


def test_binomial_cdf_by_hand() -> None:
    assert binomial_cdf(0, 2, 0.9) == pytest.approx(0.01)
    assert binomial_cdf(1, 2, 0.9) == pytest.approx(0.19)
    assert binomial_cdf(-1, 2, 0.9) == 0.0 and binomial_cdf(2, 2, 0.9) == pytest.approx(1.0)


def test_abort_probability_by_hand() -> None:
    # k = 3 shares (2 neighbours), t = 2, p = 0.1: a survivor fails if no neighbour survives
    # (0.01), a dropped client if at most one does (0.19): f = 0.9*0.01 + 0.1*0.19 = 0.028.
    assert abort_probability(10, 0.1, 3, 2) == pytest.approx(1 - 0.972**10)  # 0.2471
    assert abort_probability(10, 0.0, 3, 2) == 0.0  # nobody drops: nothing to reconstruct
    assert abort_probability(10, 0.0, 3, 3) == 0.0
    assert abort_probability(0, 0.5, 3, 2) == 0.0


def test_round_cost_bytes_by_hand() -> None:
    cost = SecAggPlusCostModel(num_shares=3, reconstruction_threshold=2).round_cost(
        sampled=10, failed=1, num_params=1000
    )
    # (1000 + 1) * 32 bits = 4004 B masked; 2 keys * 120; 2 share ciphertexts * 256; 3 * 128.
    assert cost["bytes_up_per_client"] == 4004 + 240 + 512 + 384
    assert cost["bytes_down_per_client_extra"] == 2 * (240 + 256)
    assert cost["dropout"] == 0.1 and cost["round_trips"] == 4
    assert cost["abort_probability"] == pytest.approx(1 - 0.972**10)


def test_report_compounds_the_rounds_abort_probabilities() -> None:
    model = SecAggPlusCostModel()
    costs = [{"abort_probability": 0.1, "bytes_up_per_client": 5}] * 2
    report = model.report(costs)
    assert report["secagg"] == LABEL
    assert report["secagg_probability_any_abort"] == pytest.approx(1 - 0.9**2)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_shares": 1}, "secagg.num_shares"),
        ({"reconstruction_threshold": 4}, "secagg.reconstruction_threshold"),
        ({"modulus_range": 1000}, "secagg.modulus_range"),
    ],
)
def test_bad_parameters_name_the_key(kwargs, key) -> None:
    with pytest.raises(PrivacyConfigError, match=f"^{key}: "):
        SecAggPlusCostModel(**kwargs)


def test_aggregators_that_need_each_update_are_refused_even_under_dp() -> None:
    with pytest.raises(PrivacyConfigError, match="^secagg: FedMedian needs every"):
        SecAggPlusCostModel().check(FedMedian())
    SecAggPlusCostModel().check(CentralDP(FedAvg(), 1.0, 1.0, expected_cohort=10, seed=0))
