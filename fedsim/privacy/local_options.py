"""The ``privacy=local_dp`` option: every phone clips and noises its own update.

Like the central options (:mod:`fedsim.privacy.options`), its ``plan`` returns a
:class:`~fedsim.privacy.plan.PrivacyPlan` describing the noise (:class:`LocalNoise`; the strategy
stack tells the phones, :mod:`fedsim.strategy.local_dp`) and the ledger that counts it
(:mod:`fedsim.privacy.local_accounting`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedsim.privacy import PrivacyConfigError
from fedsim.privacy.plan import LocalNoise, PrivacyPlan

if TYPE_CHECKING:
    from fedsim.privacy.local_accounting import Cohorts


@dataclass(frozen=True)
class LocalDP:
    """The ``privacy=local_dp`` option: each client clips to ``clipping_norm`` and adds noise.

    The guarantee and its ledger: :mod:`fedsim.privacy.local_accounting`.

    Parameters
    ----------
    clipping_norm : float
        ``C``.
    noise_multiplier : float
        ``z``: noise std on each report is ``z * C``.
    delta : float or None
        Per-client delta; None means ``population ** -1.1``
        (:func:`~fedsim.privacy.accounting.default_delta`).
    accountant : str
        ``pld`` (reported) or ``rdp``.
    target_epsilon : float or None
        Stop before the round after which the most-sampled client would exceed it.
    """

    clipping_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float | None = None
    accountant: str = "pld"
    target_epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.clipping_norm <= 0:
            raise PrivacyConfigError(f"privacy.clipping_norm: must be > 0, got {self.clipping_norm}")
        if self.noise_multiplier < 0:
            raise PrivacyConfigError(
                f"privacy.noise_multiplier: must be >= 0, got {self.noise_multiplier}"
            )
        if self.accountant not in ("pld", "rdp"):
            raise PrivacyConfigError(
                f"privacy.accountant: must be 'pld' or 'rdp', got {self.accountant!r}"
            )
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise PrivacyConfigError(
                f"privacy.target_epsilon: must be > 0, got {self.target_epsilon}"
            )

    def plan(self, *, population: int, sampler: Cohorts, **_: Any) -> PrivacyPlan:
        # Imported here, as in the central options: dp-accounting is slow to import.
        from fedsim.privacy.accounting import default_delta
        from fedsim.privacy.local_accounting import LocalDPAccountant

        delta = self.delta if self.delta is not None else default_delta(population)
        report = {
            "privacy": "local_dp",
            "unit": "user (one client's data replaced), per client; the most-sampled client's "
            "epsilon is reported",
            "accountant": self.accountant,
            "delta": delta,
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm,
            "target_epsilon": self.target_epsilon,
        }
        return PrivacyPlan(
            noise=LocalNoise(self.clipping_norm, self.noise_multiplier),
            accountant=LocalDPAccountant(self.noise_multiplier, delta, sampler, self.accountant),
            target_epsilon=self.target_epsilon,
            report=report,
            charge_unaggregated=True,
        )
