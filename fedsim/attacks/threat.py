"""The ``attack`` config group: which behaviour malicious clients follow, and who they are.

An option is a behaviour class from :mod:`fedsim.attacks.byzantine` (``_target_``) plus
``fraction``, the probability that a virtual client is malicious. :func:`build_threat` turns
it into a :class:`ThreatModel`: the behaviour, the seeded :class:`MaliciousSet`, and the
per-(round, client) random stream an attack may draw from. Membership is a pure function of
``(seed, client id)``, so a phone is malicious in every round it is sampled, whatever actor
runs it. The client applies the behaviour (labels before training, the update after it and
before compression); the server learns nothing about membership, as in a real deployment.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
from hydra._internal.utils import _locate  # the resolver instantiate() itself uses
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from fedsim.attacks import AttackConfigError
from fedsim.attacks.byzantine import ByzantineBehaviour, MaliciousSet, NoAttack, malicious_clients

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


def build_threat(node: dict[str, Any], population: int, seed: int, num_classes: int) -> ThreatModel:
    """Instantiate the ``attack`` node (a plain dict); the dataset's class count is passed in.

    Raises
    ------
    AttackConfigError
        On a bad fraction, a class that is not a :class:`ByzantineBehaviour`, or arguments its
        constructor rejects; one line naming the key.
    """
    spec = dict(node)
    fraction = float(spec.pop("fraction", 0.0))
    target = spec.get("_target_")
    cls = _locate(target)
    if inspect.isclass(cls) and not issubclass(cls, ByzantineBehaviour):
        raise AttackConfigError(
            f"attack._target_: {target!r} is not a fedsim.attacks.byzantine.ByzantineBehaviour"
        )
    if "num_classes" in inspect.signature(cls).parameters and "num_classes" not in spec:
        spec["num_classes"] = num_classes  # known only once the dataset is loaded
    try:
        behaviour = instantiate(spec)
    except InstantiationException as err:
        if isinstance(err.__cause__, AttackConfigError):
            raise err.__cause__ from None
        cause = err.__cause__ or err
        raise AttackConfigError(
            f"attack: cannot build {target!r}: {str(cause).splitlines()[0]}"
        ) from None
    if not isinstance(behaviour, ByzantineBehaviour):
        raise AttackConfigError(
            f"attack._target_: {target!r} is not a fedsim.attacks.byzantine.ByzantineBehaviour"
        )
    return ThreatModel(behaviour, malicious_clients(population, fraction, seed))


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
