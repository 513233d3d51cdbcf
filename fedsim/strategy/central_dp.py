"""User-level central DP-FedAvg as a wrapper around any mean-type Flower strategy.

McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018: each
client's model update (trained minus received weights) is clipped to L2 norm ``C``, the clipped
updates are *summed* with equal weight, Gaussian noise with std ``z * C`` is added, and the sum
is divided by the *expected* cohort size ``m`` (the fixed-denominator estimator: dividing by
the realised cohort size would make the output depend on how many clients Poisson sampling
drew, which the sensitivity argument does not cover). One round is then a subsampled Gaussian
mechanism with noise multiplier ``z`` on a sum of sensitivity ``C`` (add/remove one client),
which is what :mod:`fedsim.privacy.accounting` composes.

Like Flower's ``DifferentialPrivacyServerSideFixedClipping`` this wraps the user's strategy
rather than replacing it, but it differs where Flower's is not right for user-level DP under
sampling: Flower weights clients by sample count and divides by the realised cohort. Here the
inner strategy receives a single reply carrying ``global + noisy mean update`` with weight 1, so
FedAvg returns it as is and FedAdam/FedYogi/FedAvgM treat it as their pseudo-gradient (all
post-processing). Strategies whose aggregate is not a mean (median, trimmed mean, Krum, Bulyan,
q-FedAvg) would turn one reply into nonsense and are refused.

The clipped and noised coordinates are the tensors some phone of the run can upload
(``exchanged``, :attr:`fedsim.fleet.exchange.Exchange.uploaded`; all of them by default): under
``finetune=head`` the classifier. The rest is the server's own model, public, sent to the phones
and not changed by them, so it carries no client's data and needs no noise; the aggregate keeps
it exactly. The set is fixed by the config, not by who was sampled (a set that followed the
realised cohort would reveal whether a phone of some mode took part), so the sensitivity is
still ``C`` and the accounting, which depends only on ``z``, the sampling and the rounds, is
unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import keys
from fedsim.privacy.aggregators import refuse_for_central_dp
from fedsim.privacy.clipping import (
    adaptive_clip_update,
    noisy_mean_of_clipped,
    noisy_unclipped_fraction,
)
from fedsim.privacy.plan import AdaptiveClipping
from fedsim.strategy.saved_state import clipping_state, load_clipping_state
from fedsim.strategy.wrapper import StrategyWrapper

# Distinguish the DP noise streams from every other consumer of the run seed.
_NOISE_STREAM = 0xD9
_COUNT_STREAM = 0xD9C


class CentralDP(StrategyWrapper):
    """Clip, sum, noise and divide by the expected cohort; hand the result to ``strategy``.

    Parameters
    ----------
    strategy : Strategy
        A mean-type Flower strategy (FedAvg and its optimiser variants, or a user's).
    clipping_norm : float
        ``C``: L2 bound on each client's update.
    noise_multiplier : float
        Noise std on the simulated cohort's sum divided by ``C``. This is ``z`` itself, or
        ``z * m / noise_cohort_size`` when the run borrows a production cohort's noise level,
        and with adaptive clipping the update share ``z_delta`` of the budget.
    expected_cohort : float
        ``m``: the fixed denominator (clients per round, or its expectation).
    seed : int
        Run seed; the noise of round ``r`` is drawn from ``(seed, r)``.
    adaptive : AdaptiveClipping, optional
        Adapt ``C`` after every round from a noisy count of unclipped updates.
    exchanged : frozenset of str, optional
        The tensors clipped and noised (those the run's phones can upload); ``None``: all.
    """

    def __init__(
        self, strategy: Strategy, clipping_norm: float, noise_multiplier: float,
        expected_cohort: float, seed: int, adaptive: AdaptiveClipping | None = None,
        exchanged: frozenset[str] | None = None,
    ) -> None:
        refuse_for_central_dp(strategy)
        self.strategy = strategy
        self.clipping_norm = clipping_norm
        self.noise_multiplier = noise_multiplier
        self.expected_cohort = expected_cohort
        self.seed = seed
        self.adaptive = adaptive
        self.exchanged = exchanged
        self._global: ArrayRecord | None = None
        self.clipped: list[tuple[int, int]] = []  # per round: (clipped, aggregated) updates
        self.norms_used: dict[int, float] = {}  # per round: the clipping norm applied

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this layer (:mod:`fedsim.strategy.saved_state`)."""
        return clipping_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_clipping_state(self, state)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays  # updates are measured against the model the cohort received
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self._global is not None, "configure_train runs before aggregate_train"
        valid = [r for r in replies if not r.has_error()]
        covered = getattr(self, "exchanged", None)  # checkpoints from before it existed: all
        names = [n for n in self._global.keys() if covered is None or n in covered]
        start = [self._global[n].numpy() for n in names]
        updates = [
            [next(iter(r.content.array_records.values()))[n].numpy() - s for n, s in zip(names, start)]
            for r in valid
        ]
        rng = np.random.default_rng([self.seed, server_round, _NOISE_STREAM])
        mean, clipped = noisy_mean_of_clipped(
            updates, self.clipping_norm, self.noise_multiplier, self.expected_cohort, rng,
            like=start,
        )
        self.clipped.append((clipped, len(updates)))
        self.norms_used[server_round] = self.clipping_norm
        if self.adaptive is not None:
            unclipped = len(updates) - clipped
            self.clipping_norm = self._next_clipping_norm(server_round, unclipped, len(updates))
        moved = {n: Array(s + d) for n, s, d in zip(names, start, mean)}
        noisy = ArrayRecord({n: moved.get(n, a) for n, a in self._global.items()})
        if not valid:
            # Nobody was sampled: the noise is still released (the accountant counts the round),
            # but there is no reply to hand the inner strategy.
            return noisy, None
        return self.strategy.aggregate_train(server_round, [self._as_one_reply(valid, noisy)])

    def _next_clipping_norm(self, server_round: int, unclipped: int, cohort: int) -> float:
        """Andrew et al.'s step: noisy unclipped fraction, then a geometric move of ``C``."""
        rng = np.random.default_rng([self.seed, server_round, _COUNT_STREAM])
        fraction = noisy_unclipped_fraction(
            unclipped, cohort, self.expected_cohort, self.adaptive.count_stddev, rng
        )
        return adaptive_clip_update(
            self.clipping_norm, fraction, self.adaptive.target_quantile,
            self.adaptive.learning_rate,
        )

    def _as_one_reply(self, valid: list[Message], noisy: ArrayRecord) -> Message:
        """A reply carrying the noisy aggregate with weight 1, shaped like a client's."""
        weight_key = getattr(self.strategy, "weighted_by_key", keys.NUM_EXAMPLES)
        arrays_name = next(iter(valid[0].content.array_records))
        losses = [float(r.content[keys.METRICS].get(keys.TRAIN_LOSS, 0.0)) for r in valid]
        reply = copy.copy(valid[0])  # shares metadata (reply_to) with a real reply
        reply.content = RecordDict(
            {
                arrays_name: noisy,
                keys.METRICS: MetricRecord({weight_key: 1, keys.TRAIN_LOSS: float(np.mean(losses))}),
            }
        )
        return reply
