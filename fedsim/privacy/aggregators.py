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

from flwr.server import strategy as legacy
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, QFedAvg, Strategy

from fedsim.privacy import PrivacyConfigError

# Aggregates that are not a (weighted) mean of the replies (MultiKrum subclasses Krum), in
# either Flower API.
NOT_MEAN_AGGREGATORS = (
    FedMedian, FedTrimmedAvg, Krum, Bulyan, QFedAvg,
    legacy.FedMedian, legacy.FedTrimmedAvg, legacy.Krum, legacy.Bulyan, legacy.QFedAvg,
)


def users(strategy: Strategy) -> object:
    """The aggregator itself: a legacy strategy under the adapter that runs it (its
    ``.strategy``, :mod:`fedsim.strategy.legacy`), else ``strategy``."""
    inner = getattr(strategy, "strategy", None)
    return inner if isinstance(inner, legacy.Strategy) else strategy


def refuse_for_central_dp(strategy: Strategy) -> None:
    """Central DP noises one mean; an aggregate that is not a mean has another sensitivity."""
    strategy = users(strategy)
    if isinstance(strategy, NOT_MEAN_AGGREGATORS):
        raise PrivacyConfigError(
            f"privacy: central DP needs a mean-type strategy; {type(strategy).__name__} "
            "does not aggregate by a weighted mean, so the sensitivity bound would not hold"
        )


def refuse_for_local_dp(strategy: Strategy) -> None:
    """Local DP privatises the update, not the training loss q-FedAvg weighs clients by."""
    if isinstance(users(strategy), (QFedAvg, legacy.QFedAvg)):
        raise PrivacyConfigError(
            "privacy: local DP cannot run under QFedAvg: it weighs clients by their training "
            "loss, which local DP does not privatise"
        )


def refuse_for_secure_aggregation(strategy: Strategy) -> None:
    """SecAgg+ reveals only the sum: aggregators that need each update cannot run on it."""
    strategy = users(strategy)
    if isinstance(strategy, NOT_MEAN_AGGREGATORS):
        raise PrivacyConfigError(
            f"secagg: {type(strategy).__name__} needs every client's update, but secure "
            "aggregation reveals only their sum; use a mean-type strategy"
        )
