"""The ``privacy`` config group: what a mechanism adds to a run.

Each option is a frozen dataclass Hydra builds from ``_target_``; :meth:`attach` receives the
run's facts at instantiate time and returns a :class:`PrivacyPlan`: the strategy to use (the
user's, possibly wrapped), the accountant that turns rounds into epsilon, and what to do at a
target epsilon. The round loop only ever talks to the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flwr.serverapp.strategy import Strategy

from fedsim.privacy import PrivacyConfigError
from fedsim.privacy.accounting import PrivacyAccountant, calibrate_noise, default_delta
from fedsim.privacy.central_dp import CentralDP


@dataclass
class PrivacyPlan:
    """What the round loop needs to know about privacy in this run."""

    strategy: Strategy
    accountant: PrivacyAccountant | None = None
    target_epsilon: float | None = None  # stop before a round would exceed it
    report: dict[str, Any] = field(default_factory=dict)  # goes into summary.json
    mechanism: CentralDP | None = None
    # epsilon by round count: the loop asks about round r+1 at the end of round r and again
    # before it starts, and each answer is a full PLD composition.
    _epsilons: dict[int, float] = field(default_factory=dict, repr=False)

    def final_report(self) -> dict[str, Any]:
        """``report`` plus what the run measured (the fraction of updates that were clipped)."""
        if self.mechanism is None:
            return dict(self.report)
        clipped = sum(c for c, _ in self.mechanism.clipped)
        total = sum(n for _, n in self.mechanism.clipped)
        return {**self.report, "clipped_fraction": clipped / total if total else None}

    def epsilon_after(self, rounds: int) -> float | None:
        """Epsilon after ``rounds`` rounds (None without DP), without changing the accountant."""
        if self.accountant is None:
            return None
        if rounds not in self._epsilons:
            probe = PrivacyAccountant.from_state({**self.accountant.state(), "rounds": rounds})
            self._epsilons[rounds] = probe.epsilon()
        return self._epsilons[rounds]


@dataclass(frozen=True)
class NoPrivacy:
    """No mechanism: updates are aggregated as the strategy says; epsilon is reported as null."""

    def attach(self, strategy: Strategy, **_: Any) -> PrivacyPlan:
        return PrivacyPlan(strategy=strategy, report={"privacy": "none"})


@dataclass(frozen=True)
class CentralDPFixedClipping:
    """User-level DP-FedAvg (McMahan et al., ICLR 2018) with a fixed clipping norm.

    Parameters
    ----------
    clipping_norm : float
        L2 bound ``C`` on each client's update.
    noise_multiplier : float
        ``z``; the noise std on the sum of clipped updates is ``z * C``. Ignored when
        ``target_epsilon`` is set with ``on_target="calibrate"``.
    delta : float or None
        Target delta; None means 1 / population.
    accountant : str
        ``pld`` (reported epsilon; Poisson sampling only), ``rdp``, or ``auto``: PLD under
        ``simulation.sampling=poisson``, RDP under fixed-size sampling (replace-one relation).
    target_epsilon : float or None
        A budget: ``on_target="stop"`` ends training before the round that would exceed it;
        ``"calibrate"`` chooses the smallest noise multiplier that lasts all planned rounds.
    """

    clipping_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float | None = None
    accountant: str = "auto"
    target_epsilon: float | None = None
    on_target: str = "stop"

    def __post_init__(self) -> None:
        if self.clipping_norm <= 0:
            raise PrivacyConfigError(f"privacy.clipping_norm: must be > 0, got {self.clipping_norm}")
        if self.noise_multiplier < 0:
            raise PrivacyConfigError(
                f"privacy.noise_multiplier: must be >= 0, got {self.noise_multiplier}"
            )
        if self.on_target not in ("stop", "calibrate"):
            raise PrivacyConfigError(
                f"privacy.on_target: must be 'stop' or 'calibrate', got {self.on_target!r}"
            )
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise PrivacyConfigError(
                f"privacy.target_epsilon: must be > 0, got {self.target_epsilon}"
            )

    def attach(
        self, strategy: Strategy, *, population: int, cohort: int, sampling: str, seed: int,
        rounds: int,
    ) -> PrivacyPlan:
        delta = self.delta if self.delta is not None else default_delta(population)
        accountant = self.accountant
        if accountant == "auto":
            accountant = "pld" if sampling == "poisson" else "rdp"
        z = self.noise_multiplier
        if self.target_epsilon is not None and self.on_target == "calibrate":
            z = calibrate_noise(
                self.target_epsilon, delta, rounds, sampling, population, cohort, accountant
            )
        ledger = PrivacyAccountant(z, delta, sampling, population, cohort, accountant)
        wrapped = CentralDP(strategy, self.clipping_norm, z, expected_cohort=cohort, seed=seed)
        report = {
            "privacy": "central_dp",
            "unit": "user (one client added or removed)" if sampling == "poisson"
            else "user (one client replaced)",
            "accountant": accountant,
            "delta": delta,
            "noise_multiplier": z,
            "clipping_norm": self.clipping_norm,
            "target_epsilon": self.target_epsilon,
            "on_target": self.on_target if self.target_epsilon is not None else None,
        }
        stop_at = self.target_epsilon if self.on_target == "stop" else None
        return PrivacyPlan(
            strategy=wrapped, accountant=ledger, target_epsilon=stop_at, report=report,
            mechanism=wrapped,
        )
