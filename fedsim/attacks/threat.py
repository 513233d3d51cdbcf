"""Which behaviour malicious clients follow, and who they are: the :class:`ThreatModel`.

An ``attack`` option (:func:`fedsim.attacks.config.build_threat`) becomes a
:class:`ThreatModel`: the behaviour, the seeded :class:`MaliciousSet`, and the
per-(round, client) random stream an attack may draw from. Membership is a pure function of
``(seed, client id)``, so a phone is malicious in every round it is sampled, whatever actor
runs it. The client applies the behaviour (labels before training, the update after it and
before compression); the server learns nothing about membership, as in a real deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.attacks.byzantine import ByzantineBehaviour, MaliciousSet, NoAttack

# Distinguishes the attack's random stream (Gaussian updates) from other users of the seed.
_ATTACK_STREAM = 0xA77AC


@dataclass(frozen=True)
class ThreatModel:
    """What malicious clients do and which virtual clients are malicious (picklable)."""

    behaviour: ByzantineBehaviour
    malicious: MaliciousSet

    @property
    def fraction(self) -> float:
        """The configured probability that a client is malicious."""
        return self.malicious.fraction

    def attacker(self, client_id: int) -> ByzantineBehaviour | None:
        """The attack ``client_id`` carries out, or ``None`` if it behaves honestly."""
        if isinstance(self.behaviour, NoAttack) or client_id not in self.malicious:
            return None
        return self.behaviour

    def rng(self, server_round: int, client_id: int) -> np.random.Generator:
        """The random stream of one client-round's attack (a pure function of the seed)."""
        return np.random.default_rng([self.malicious.seed, server_round, client_id, _ATTACK_STREAM])

    def report(self, cohorts: list[np.ndarray]) -> dict[str, Any]:
        """``summary.json`` fields: the attack, its configured share and the realised ones.

        ``malicious_participant_fraction`` counts client-rounds: malicious members of the
        cohorts over all cohort members, the share of uploads the aggregator actually saw
        from attackers (failed clients included).
        """
        sampled = sum(len(c) for c in cohorts)
        bad = sum(int(self.malicious.members(c).sum()) for c in cohorts)
        return {
            "attack": type(self.behaviour).__name__,
            "attack_fraction": self.fraction,
            "malicious_participations": bad,
            "malicious_participant_fraction": bad / sampled if sampled else None,
        }


def assumed_malicious(fraction: float, cohort: int, bulyan: bool) -> int:
    """Byzantine clients a robust aggregator should assume per cohort.

    ``ceil(fraction * cohort)``, the expected number rounded up; for Bulyan capped at
    ``(cohort - 3) // 4``, since Bulyan needs ``n >= 4f + 3`` replies or skips the round
    (El Mhamdi et al., ICML 2018).
    """
    expected = int(np.ceil(round(fraction * cohort, 9)))
    if bulyan:
        expected = min(expected, max(0, (cohort - 3) // 4))
    return expected
