"""Which Flower aggregators a privacy mechanism can sit on, and the one-line refusals.

Central DP's sensitivity bound (McMahan et al., ICLR 2018) and secure aggregation's sum (Bell et
al., CCS 2020) both need an aggregate that is a (weighted) mean of the updates: the median,
trimmed mean, Krum, Bulyan and q-FedAvg look at (or reweight) individual updates. Local DP
privatises each update on the phone, so any aggregator may follow, except one that weighs
clients by what local DP does not privatise (q-FedAvg: the training loss).

The checks run on the user's strategy before Ray starts (:mod:`fedsim.run.preparation`) and
again when a wrapper is built around it (:mod:`fedsim.strategy`).
"""

from __future__ import annotations

from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, QFedAvg, Strategy

from fedsim.privacy import PrivacyConfigError

# Aggregates that are not a (weighted) mean of the replies; MultiKrum subclasses Krum.
NOT_MEAN_AGGREGATORS = (FedMedian, FedTrimmedAvg, Krum, Bulyan, QFedAvg)


def refuse_for_central_dp(strategy: Strategy) -> None:
    """Central DP noises one mean; an aggregate that is not a mean has another sensitivity."""
    if isinstance(strategy, NOT_MEAN_AGGREGATORS):
        raise PrivacyConfigError(
            f"privacy: central DP needs a mean-type strategy; {type(strategy).__name__} "
            "does not aggregate by a weighted mean, so the sensitivity bound would not hold"
        )


def refuse_for_local_dp(strategy: Strategy) -> None:
    """Local DP privatises the update, not the training loss q-FedAvg weighs clients by."""
    if isinstance(strategy, QFedAvg):
        raise PrivacyConfigError(
            "privacy: local DP cannot run under QFedAvg: it weighs clients by their training "
            "loss, which local DP does not privatise"
        )


def refuse_for_secure_aggregation(strategy: Strategy) -> None:
    """SecAgg+ reveals only the sum: aggregators that need each update cannot run on it."""
    if isinstance(strategy, NOT_MEAN_AGGREGATORS):
        raise PrivacyConfigError(
            f"secagg: {type(strategy).__name__} needs every client's update, but secure "
            "aggregation reveals only their sum; use a mean-type strategy"
        )
