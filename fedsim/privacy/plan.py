"""What a ``privacy`` option decided for a run: the noise to apply, the ledger, the budget.

Every option's ``plan`` returns a :class:`PrivacyPlan`. The plan does not wrap anything: it
describes the noise (:class:`CentralNoise` or :class:`LocalNoise`), and the strategy stack
(:func:`fedsim.strategy.stack.build_stack`) builds the wrapper that applies it. The round loop
and the summary only ever talk to the plan, never to a mechanism's internals.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from flwr.serverapp.strategy import Strategy

from fedsim.privacy.aggregators import refuse_for_central_dp, refuse_for_local_dp


class Accountant(Protocol):
    """Counts rounds and turns them into epsilon (see ``accounting`` and ``local_accounting``)."""

    @property
    def rounds(self) -> int: ...

    def step(self, rounds: int = 1) -> None: ...

    def epsilon(self) -> float: ...

    def epsilon_after(self, rounds: int) -> float: ...

    def state(self) -> dict[str, Any]: ...


class Mechanism(Protocol):
    """The wrapper that applies DP; it records what it clipped, round by round."""

    clipped: list[tuple[int, int]]  # per aggregated round: (clipped, aggregated) updates
    norms_used: dict[int, float]  # round -> the clipping norm applied


@dataclass(frozen=True)
class AdaptiveClipping:
    """Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021.

    Parameters
    ----------
    target_quantile : float
        ``gamma``: the fraction of updates the norm should leave unclipped.
    learning_rate : float
        ``eta_C`` of the geometric update ``C <- C * exp(-eta_C * (b_bar - gamma))``.
    count_stddev : float
        ``sigma_b``: noise std on the count of unclipped updates *in the simulated cohort*
        (already scaled by ``m / noise_cohort_size`` when that knob is set).
    """

    target_quantile: float
    learning_rate: float
    count_stddev: float


@dataclass(frozen=True)
class CentralNoise:
    """The server clips, sums and noises the updates (:class:`fedsim.strategy.central_dp.CentralDP`).

    The fields are the wrapper's constructor arguments, by name.
    """

    clipping_norm: float
    noise_multiplier: float  # on the simulated cohort's sum, divided by the clipping norm
    expected_cohort: float
    seed: int
    adaptive: AdaptiveClipping | None = None

    def check(self, strategy: Strategy) -> None:
        refuse_for_central_dp(strategy)


@dataclass(frozen=True)
class LocalNoise:
    """Every phone clips and noises its own update (:class:`fedsim.strategy.local_dp.LocalDPInstructions`).

    The fields are the wrapper's constructor arguments, by name.
    """

    clipping_norm: float
    noise_multiplier: float

    def check(self, strategy: Strategy) -> None:
        refuse_for_local_dp(strategy)


@dataclass(frozen=True)
class PrivacyPlan:
    """What the round loop needs to know about privacy in this run.

    ``mechanism`` is the wrapper the strategy stack built from ``noise``; a plan is given it
    (and, on resume, its accountant's finished rounds) by :meth:`running`, which returns a new
    plan.
    """

    noise: CentralNoise | LocalNoise | None = None  # None: the stack has no privacy wrapper
    accountant: Accountant | None = None
    # The ledger of the mechanism the simulated phones actually went through, when it is not
    # `accountant`'s: under `noise_cohort_size` the accountant is about a production deployment,
    # while the phones of this run got noise z * m / M (fedsim.privacy.options). It counts no
    # rounds of its own; it is asked about `accountant`'s.
    simulated: Accountant | None = None
    # The neighbouring relation of the accountant: add/remove one client (Poisson sampling),
    # else replace one. The example-level audit needs it (fedsim.privacy.audit).
    add_remove: bool = False
    target_epsilon: float | None = None  # stop before a round would exceed it
    report: dict[str, Any] = field(default_factory=dict)  # goes into summary.json
    mechanism: Mechanism | None = None
    # Local DP releases every report, aggregated or not; central DP only the aggregate.
    charge_unaggregated: bool = False
    # epsilon by round count: the loop asks about round r+1 at the end of round r and again
    # before it starts, and each answer is a full PLD composition.
    _epsilons: dict[int, float] = field(default_factory=dict, repr=False)

    def check(self, strategy: Strategy) -> None:
        """Refuse a user strategy the noise cannot sit on (one line)."""
        if self.noise is not None:
            self.noise.check(strategy)

    def running(self, mechanism: Mechanism | None, rounds: int = 0) -> PrivacyPlan:
        """This plan with the stack's privacy wrapper, its accountant after ``rounds`` rounds.

        ``rounds`` is what a resumed run's checkpoint finished; the prepared accountant is left
        as it was.
        """
        accountant = self.accountant
        if accountant is not None and rounds:
            accountant = copy.deepcopy(accountant)
            accountant.step(rounds)
        return replace(self, mechanism=mechanism, accountant=accountant, _epsilons={})

    def final_report(self) -> dict[str, Any]:
        """``report`` plus what the run measured: the simulated phones' epsilon (next to the
        accountant's, which the round records carry), clipped fraction, final clipping norm."""
        measured = {}
        if self.accountant is not None:
            measured["epsilon_simulated"] = self.epsilon_simulated()
        if self.mechanism is None:
            return {**self.report, **measured}
        clipped = sum(c for c, _ in self.mechanism.clipped)
        total = sum(n for _, n in self.mechanism.clipped)
        norms = self.mechanism.norms_used
        return {
            **self.report,
            **measured,
            "clipped_fraction": clipped / total if total else None,
            "final_clipping_norm": norms[max(norms)] if norms else None,
        }

    def clipping_norm_of(self, server_round: int) -> float | None:
        """The clipping norm applied in ``server_round`` (None without DP)."""
        if self.mechanism is None:
            return None
        return self.mechanism.norms_used.get(server_round)

    def epsilon_spent(self) -> float | None:
        """Epsilon after the rounds accounted so far (memoized with the what-if queries)."""
        return None if self.accountant is None else self.epsilon_after(self.accountant.rounds)

    def epsilon_simulated(self) -> float | None:
        """Epsilon of the mechanism the simulated phones went through, after the rounds so far.

        Equal to :meth:`epsilon_spent` unless the plan borrows a production cohort's noise.
        """
        if self.accountant is None:
            return None
        if self.simulated is None:
            return self.epsilon_spent()
        return self.simulated.epsilon_after(self.accountant.rounds)

    def epsilon_after(self, rounds: int) -> float | None:
        """Epsilon after ``rounds`` rounds (None without DP), without changing the accountant."""
        if self.accountant is None:
            return None
        if rounds not in self._epsilons:
            self._epsilons[rounds] = self.accountant.epsilon_after(rounds)
        return self._epsilons[rounds]
