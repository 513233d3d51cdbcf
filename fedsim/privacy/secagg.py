"""The ``secagg`` config group: what secure aggregation would cost, as a labelled *model*.

SecAgg+ (Bell, Bonawitz, Gascón, Lepoint & Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020) lets the server learn only the sum of the cohort's
updates. fedsim does **not** run the protocol: Flower 1.42's ``SecAggPlusWorkflow`` needs the
legacy ``LegacyContext`` strategy API (``configure_fit``/``aggregate_fit``), and its client mod
keeps protocol state per Flower node, whereas fedsim multiplexes many virtual clients onto each
node and runs Message-API strategies. Instead :class:`SecAggPlusCostModel` reports, per round,
what the protocol would add, with the parameters of Flower's workflow:

- **round trips**: four server/client exchanges (setup, share keys, collect masked vectors,
  unmask) instead of one;
- **bytes per client**: the masked vector is ``d + 1`` integers of ``log2(modulus_range)`` bits
  (the update and its weight, quantised; sparsifying or int8 compression cannot survive
  masking), plus key agreement: two public keys up, the neighbours' keys down, one encrypted
  share pair per neighbour up and down, and the shares revealed at unmasking;
- **abort probability** under the round's realised drop-out rate ``p`` (failed / sampled):
  each client's secrets are split into ``k = num_shares`` shares, kept by itself and ``k - 1``
  neighbours, and reconstruction needs ``t = reconstruction_threshold`` of them. A surviving
  client fails if fewer than ``t - 1`` of its neighbours survive, a dropped one if fewer than
  ``t`` do, so per client ``f = (1-p) P[Bin(k-1, 1-p) <= t-2] + p P[Bin(k-1, 1-p) <= t-1]``,
  and the round aborts with probability ``1 - (1 - f)^n`` for ``n`` sampled clients (treating
  clients as independent, which the shared neighbourhoods make approximate).

Every figure is a function of the config and of ``metrics.jsonl``; the outputs carry the label
``"SecAgg+ cost model (protocol not run)"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flwr.serverapp.strategy import Strategy

from fedsim.privacy import PrivacyConfigError
from fedsim.privacy.aggregators import refuse_for_secure_aggregation

LABEL = "SecAgg+ cost model (protocol not run)"
ROUND_TRIPS = 4  # setup, share keys, collect masked vectors, unmask


def binomial_cdf(successes: int, trials: int, prob: float) -> float:
    """``P[Bin(trials, prob) <= successes]``."""
    if successes < 0:
        return 0.0
    return sum(
        math.comb(trials, i) * prob**i * (1 - prob) ** (trials - i)
        for i in range(min(successes, trials) + 1)
    )


def abort_probability(clients: int, dropout: float, num_shares: int, threshold: int) -> float:
    """Probability that SecAgg+ cannot unmask the sum (see the module docstring)."""
    if clients == 0:
        return 0.0
    neighbours, alive = num_shares - 1, 1 - dropout
    per_client = alive * binomial_cdf(threshold - 2, neighbours, alive) + dropout * binomial_cdf(
        threshold - 1, neighbours, alive
    )
    return 1 - (1 - per_client) ** clients


@dataclass(frozen=True)
class NoSecureAggregation:
    """Updates reach the server in the clear (or as DP makes them)."""

    def check(self, strategy: Strategy) -> None:
        return None

    def round_cost(self, **_: Any) -> None:
        return None

    def report(self, costs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"secagg": "none"}


@dataclass(frozen=True)
class SecAggPlusCostModel:
    """SecAgg+ costs with the parameters of Flower's ``SecAggPlusWorkflow``.

    Parameters
    ----------
    num_shares : int
        ``k``: shares per client secret (the client keeps one, ``k - 1`` neighbours get one).
    reconstruction_threshold : int
        ``t``: shares needed to reconstruct a secret; ``2 <= t <= k``.
    modulus_range : int
        Masked integers live in ``[0, modulus_range)``; a power of two (Flower: ``2**32``).
    public_key_bytes : int
        One serialised public key (SECP384R1, DER: 120 bytes).
    share_ciphertext_bytes : int
        One encrypted pair of Shamir shares with ids and authenticated-encryption overhead.
    """

    num_shares: int = 3
    reconstruction_threshold: int = 2
    modulus_range: int = 2**32
    public_key_bytes: int = 120
    share_ciphertext_bytes: int = 256

    def __post_init__(self) -> None:
        if self.num_shares < 2:
            raise PrivacyConfigError(f"secagg.num_shares: must be >= 2, got {self.num_shares}")
        if not 2 <= self.reconstruction_threshold <= self.num_shares:
            raise PrivacyConfigError(
                f"secagg.reconstruction_threshold: must be in [2, num_shares={self.num_shares}], "
                f"got {self.reconstruction_threshold}"
            )
        if self.modulus_range < 2 or self.modulus_range & (self.modulus_range - 1):
            raise PrivacyConfigError(
                f"secagg.modulus_range: must be a power of two, got {self.modulus_range}"
            )

    def check(self, strategy: Strategy) -> None:
        """SecAgg+ reveals only the sum: aggregators that need each update cannot run on it."""
        refuse_for_secure_aggregation(getattr(strategy, "strategy", strategy))  # under a wrapper

    def round_cost(self, *, sampled: int, failed: int, num_params: int) -> dict[str, Any]:
        """What one round would add: round trips, bytes per client and abort probability."""
        neighbours = self.num_shares - 1
        masked = (num_params + 1) * math.ceil(math.log2(self.modulus_range)) // 8
        up = 2 * self.public_key_bytes + neighbours * self.share_ciphertext_bytes + masked
        up += self.num_shares * self.share_ciphertext_bytes // 2  # shares revealed at unmasking
        down = neighbours * (2 * self.public_key_bytes + self.share_ciphertext_bytes)
        dropout = failed / sampled if sampled else 0.0
        return {
            "round_trips": ROUND_TRIPS,
            "bytes_up_per_client": up,
            "bytes_down_per_client_extra": down,
            "dropout": dropout,
            "abort_probability": abort_probability(
                sampled, dropout, self.num_shares, self.reconstruction_threshold
            ),
        }

    def report(self, costs: list[dict[str, Any]]) -> dict[str, Any]:
        survive = math.prod(1 - c["abort_probability"] for c in costs)
        return {
            "secagg": LABEL,
            "secagg_num_shares": self.num_shares,
            "secagg_reconstruction_threshold": self.reconstruction_threshold,
            "secagg_round_trips_per_round": ROUND_TRIPS,
            "secagg_bytes_up_per_client": costs[-1]["bytes_up_per_client"] if costs else None,
            "secagg_probability_any_abort": 1 - survive,
        }
