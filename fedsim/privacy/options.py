"""The ``privacy`` config group's central options: none, and DP-FedAvg with fixed or adaptive
clipping.

Each option is a frozen dataclass Hydra builds from ``_target_``; its ``plan`` receives the
run's facts and returns a :class:`~fedsim.privacy.plan.PrivacyPlan`: the noise to apply (a plain
description; the strategy stack, :func:`fedsim.strategy.stack.build_stack`, builds the wrapper),
the accountant that turns rounds into epsilon, and what to do at a target epsilon. The local-DP
option is :mod:`fedsim.privacy.local_options`.

``noise_cohort_size`` (as in Apple's pfl-research) lets a laptop-sized simulation apply the noise
a production cohort would need: with ``m`` simulated clients and a production cohort ``M``, the
noise std on the simulated sum is ``z C m / M``, so the *mean* carries ``z C / M``, exactly what
the production mean would carry. Epsilon is then accounted for the production deployment (cohort
``M`` out of ``accounting_population``), and the outputs say so: it is not a guarantee about
the simulated clients. What the simulated clients did get is the same mechanism with noise
multiplier ``z m / M`` at the run's own sampling rate ``m / N``; its epsilon (same accountant,
rounds and delta) is reported beside the deployment's as ``epsilon_simulated``, and it is the one
the membership audit of the simulated model is held to (:mod:`fedsim.privacy.audit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedsim.privacy import PrivacyConfigError
from fedsim.privacy.clipping import adaptive_update_noise_multiplier
from fedsim.privacy.plan import AdaptiveClipping, CentralNoise, PrivacyPlan

if TYPE_CHECKING:
    from fedsim.privacy.accounting import PrivacyAccountant


@dataclass(frozen=True)
class NoPrivacy:
    """No mechanism: updates are aggregated as the strategy says; epsilon is reported as null."""

    def plan(self, **_: Any) -> PrivacyPlan:
        return PrivacyPlan(report={"privacy": "none"})


@dataclass(frozen=True)
class Deployment:
    """Who the epsilon is about: the simulated run, or the production one it stands in for."""

    population: int  # N of the accountant
    cohort: int  # (expected) cohort of the accountant
    noise_scale: float  # simulated cohort / accounted cohort: scales the noise on the sum
    label: str | None  # said in the outputs when the accountant is not about this run


def deployment(
    population: int, cohort: int, noise_cohort_size: int | None, accounting_population: int | None
) -> Deployment:
    """The accountant's population and cohort, and how to scale the simulated noise."""
    if noise_cohort_size is None:
        if accounting_population is not None:
            raise PrivacyConfigError(
                "privacy.accounting_population: only meaningful with privacy.noise_cohort_size"
            )
        return Deployment(population, cohort, 1.0, None)
    if noise_cohort_size < 1:
        raise PrivacyConfigError(
            f"privacy.noise_cohort_size: must be >= 1, got {noise_cohort_size}"
        )
    # Keep the sampling rate of the simulation unless told otherwise.
    accounted = accounting_population or round(population * noise_cohort_size / cohort)
    if accounted < noise_cohort_size:
        raise PrivacyConfigError(
            f"privacy.accounting_population: {accounted} is smaller than "
            f"noise_cohort_size {noise_cohort_size}"
        )
    label = (
        f"epsilon is for a deployment sampling {noise_cohort_size} of {accounted} clients a "
        f"round; this run's {cohort}-client cohorts get the noise of that cohort's mean"
    )
    return Deployment(accounted, noise_cohort_size, cohort / noise_cohort_size, label)


def simulated_ledger(
    noise_multiplier: float, delta: float, sampling: str, population: int, cohort: int,
    accountant: str,
) -> PrivacyAccountant:
    """The ledger of the mechanism the simulated cohort got under ``noise_cohort_size``.

    ``noise_multiplier`` is the accounted ``z`` times ``m / M``: the std of the noise on the
    simulated sum over ``C`` (for adaptive clipping the update and count noise both scale by
    ``m / M``, so their combined multiplier, Theorem 1 of Andrew et al. 2021, does too).
    PLD below :data:`~fedsim.privacy.accounting.MIN_NOISE_MULTIPLIER` takes minutes (z = 0.01:
    77 s for 25 rounds) for an epsilon in the thousands, so RDP, an upper bound, stands in.
    """
    from fedsim.privacy.accounting import MIN_NOISE_MULTIPLIER, PrivacyAccountant

    if accountant == "pld" and noise_multiplier < MIN_NOISE_MULTIPLIER:
        accountant = "rdp"
    return PrivacyAccountant(noise_multiplier, delta, sampling, population, cohort, accountant)


@dataclass(frozen=True)
class _CentralOptions:
    """Settings shared by both central DP options (see :class:`CentralDPFixedClipping`)."""

    noise_multiplier: float = 1.0
    delta: float | None = None
    accountant: str = "auto"
    target_epsilon: float | None = None
    on_target: str = "stop"
    noise_cohort_size: int | None = None
    accounting_population: int | None = None

    def _check(self) -> None:
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

    def _ledger(
        self, *, population: int, cohort: int, sampling: str, rounds: int
    ) -> tuple[PrivacyAccountant, Deployment, dict[str, Any]]:
        """The accountant (with the noise multiplier calibrated if asked) and the report."""
        # Imported here: dp-accounting takes 0.7 s to import (scipy.signal), which a run
        # without DP (privacy=none, also defined in this module) should not pay.
        from fedsim.privacy.accounting import PrivacyAccountant, calibrate_noise, default_delta

        where = deployment(population, cohort, self.noise_cohort_size, self.accounting_population)
        delta = self.delta if self.delta is not None else default_delta(where.population)
        accountant = self.accountant
        if accountant == "auto":
            accountant = "pld" if sampling == "poisson" else "rdp"
        z = self.noise_multiplier
        if self.target_epsilon is not None and self.on_target == "calibrate":
            z = calibrate_noise(
                self.target_epsilon, delta, rounds, sampling, where.population, where.cohort,
                accountant,
            )
        ledger = PrivacyAccountant(z, delta, sampling, where.population, where.cohort, accountant)
        report = {
            "privacy": "central_dp",
            "unit": "user (one client added or removed)" if sampling == "poisson"
            else "user (one client replaced)",
            "accountant": accountant,
            "delta": delta,
            "noise_multiplier": z,
            "target_epsilon": self.target_epsilon,
            "on_target": self.on_target if self.target_epsilon is not None else None,
            "noise_cohort_size": self.noise_cohort_size,
            "accounting_population": where.population if where.label else None,
            "epsilon_is_for": where.label or "this run",
        }
        return ledger, where, report

    def plan(
        self, *, population: int, cohort: int, sampling: str, seed: int, rounds: int, **_: Any
    ) -> PrivacyPlan:
        ledger, where, report = self._ledger(
            population=population, cohort=cohort, sampling=sampling, rounds=rounds
        )
        noise, settings = self._noise(report["noise_multiplier"], where, cohort, seed)
        stop_at = self.target_epsilon if self.on_target == "stop" else None
        simulated = None
        if where.label is not None:
            simulated = simulated_ledger(
                report["noise_multiplier"] * where.noise_scale, report["delta"], sampling,
                population, cohort, report["accountant"],
            )
            settings["simulated_noise_multiplier"] = simulated.state()["noise_multiplier"]
            settings["simulated_accountant"] = simulated.state()["accountant"]
        return PrivacyPlan(
            noise=noise, accountant=ledger, target_epsilon=stop_at,
            report={**report, **settings}, simulated=simulated,
            add_remove=sampling == "poisson",
        )

    def _noise(
        self, z: float, where: Deployment, cohort: int, seed: int
    ) -> tuple[CentralNoise, dict[str, Any]]:
        """The noise the server applies and its settings for the report."""
        raise NotImplementedError


@dataclass(frozen=True)
class CentralDPFixedClipping(_CentralOptions):
    """User-level DP-FedAvg (McMahan et al., ICLR 2018) with a fixed clipping norm.

    Parameters
    ----------
    clipping_norm : float
        L2 bound ``C`` on each client's update.
    noise_multiplier : float
        ``z``; the noise std on the sum of clipped updates is ``z * C``. Ignored when
        ``target_epsilon`` is set with ``on_target="calibrate"``.
    delta : float or None
        Target delta; None means ``population ** -1.1`` (of the accountant:
        :func:`~fedsim.privacy.accounting.default_delta`).
    accountant : str
        ``pld`` (reported epsilon; Poisson sampling only), ``rdp``, or ``auto``: PLD under
        ``simulation.sampling=poisson``, RDP under fixed-size sampling (replace-one relation).
    target_epsilon : float or None
        A budget: ``on_target="stop"`` ends training before the round that would exceed it;
        ``"calibrate"`` chooses the smallest noise multiplier that lasts all planned rounds.
    noise_cohort_size, accounting_population : int or None
        Borrow a production cohort's noise level (see the module docstring).
    """

    clipping_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.clipping_norm <= 0:
            raise PrivacyConfigError(f"privacy.clipping_norm: must be > 0, got {self.clipping_norm}")
        self._check()

    def _noise(
        self, z: float, where: Deployment, cohort: int, seed: int
    ) -> tuple[CentralNoise, dict[str, Any]]:
        noise = CentralNoise(
            self.clipping_norm, z * where.noise_scale, expected_cohort=cohort, seed=seed
        )
        return noise, {"clipping_norm": self.clipping_norm}


@dataclass(frozen=True)
class CentralDPAdaptiveClipping(_CentralOptions):
    """DP-FedAvg whose clipping norm tracks a quantile of update norms (Andrew et al., 2021).

    Each round also releases a noisy count of the updates that were within the norm; the norm
    then moves geometrically, ``C <- C * exp(-clip_learning_rate * (b_bar - target_quantile))``.
    The two releases together cost one Gaussian mechanism with noise multiplier
    ``noise_multiplier`` (Theorem 1 of the paper), so the accountant is the fixed-clipping one
    with that ``z``, and the updates themselves get the larger
    ``z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2``.

    Parameters
    ----------
    initial_clipping_norm : float
        ``C`` in round 1.
    target_quantile : float
        ``gamma``: fraction of updates to leave unclipped (the paper uses 0.5).
    clip_learning_rate : float
        ``eta_C`` (the paper uses 0.2).
    clipped_count_stddev : float or None
        ``sigma_b`` for the (production) cohort; None means cohort / 20 as the paper suggests,
        raised to ``noise_multiplier`` for cohorts too small for that (the count may not use up
        the budget: ``2 sigma_b > z`` is required, and ``sigma_b = z`` costs the updates 15 %
        more noise). An explicit value must exceed ``noise_multiplier / 2``.
    """

    initial_clipping_norm: float = 0.1
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clipped_count_stddev: float | None = None

    def __post_init__(self) -> None:
        if self.initial_clipping_norm <= 0:
            raise PrivacyConfigError(
                f"privacy.initial_clipping_norm: must be > 0, got {self.initial_clipping_norm}"
            )
        if not 0 <= self.target_quantile <= 1:
            raise PrivacyConfigError(
                f"privacy.target_quantile: must be in [0, 1], got {self.target_quantile}"
            )
        if self.clip_learning_rate <= 0:
            raise PrivacyConfigError(
                f"privacy.clip_learning_rate: must be > 0, got {self.clip_learning_rate}"
            )
        if self.clipped_count_stddev is not None and self.clipped_count_stddev <= 0:
            raise PrivacyConfigError(
                f"privacy.clipped_count_stddev: must be > 0, got {self.clipped_count_stddev}"
            )
        self._check()

    def _noise(
        self, z: float, where: Deployment, cohort: int, seed: int
    ) -> tuple[CentralNoise, dict[str, Any]]:
        sigma_b = self.clipped_count_stddev or max(where.cohort / 20, z)
        z_update = adaptive_update_noise_multiplier(z, sigma_b)
        noise = CentralNoise(
            self.initial_clipping_norm, z_update * where.noise_scale,
            expected_cohort=cohort, seed=seed,
            adaptive=AdaptiveClipping(
                self.target_quantile, self.clip_learning_rate, sigma_b * where.noise_scale
            ),
        )
        return noise, {
            "privacy": "central_dp_adaptive",
            "clipping_norm": self.initial_clipping_norm,
            "target_quantile": self.target_quantile,
            "clip_learning_rate": self.clip_learning_rate,
            "clipped_count_stddev": sigma_b,
            "update_noise_multiplier": z_update,
        }
