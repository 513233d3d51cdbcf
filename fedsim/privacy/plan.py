"""What the round loop knows about privacy: the strategy to use, the ledger, the budget.

Every ``privacy`` option's ``attach`` returns a :class:`PrivacyPlan`; the round loop and the
summary only ever talk to the plan, never to a mechanism's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from flwr.serverapp.strategy import Strategy


class Accountant(Protocol):
    """Counts rounds and turns them into epsilon (see ``accounting`` and ``local_dp``)."""

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


@dataclass
class PrivacyPlan:
    """What the round loop needs to know about privacy in this run."""

    strategy: Strategy
    accountant: Accountant | None = None
    target_epsilon: float | None = None  # stop before a round would exceed it
    report: dict[str, Any] = field(default_factory=dict)  # goes into summary.json
    mechanism: Mechanism | None = None
    # Local DP releases every report, aggregated or not; central DP only the aggregate.
    charge_unaggregated: bool = False
    # epsilon by round count: the loop asks about round r+1 at the end of round r and again
    # before it starts, and each answer is a full PLD composition.
    _epsilons: dict[int, float] = field(default_factory=dict, repr=False)

    def final_report(self) -> dict[str, Any]:
        """``report`` plus what the run measured (clipped fraction, final clipping norm)."""
        if self.mechanism is None:
            return dict(self.report)
        clipped = sum(c for c, _ in self.mechanism.clipped)
        total = sum(n for _, n in self.mechanism.clipped)
        norms = self.mechanism.norms_used
        return {
            **self.report,
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

    def epsilon_after(self, rounds: int) -> float | None:
        """Epsilon after ``rounds`` rounds (None without DP), without changing the accountant."""
        if self.accountant is None:
            return None
        if rounds not in self._epsilons:
            self._epsilons[rounds] = self.accountant.epsilon_after(rounds)
        return self._epsilons[rounds]
