"""Byzantine clients: a seeded malicious set and what its members do, as pure frozen classes.

Who is malicious
    :func:`malicious_clients` marks each virtual client ``i`` independently with probability
    ``fraction``; membership is a pure function of ``(seed, i)``, computed on demand by a
    counter-based hash, so the set takes O(1) memory for any population and never depends
    on which clients were asked about before. The number of members is
    Binomial(population, fraction), not exactly ``fraction * population``.

What a malicious client does
    Model poisoning acts on the update *delta* ``trained - received`` weights, the quantity a
    client uploads and robust aggregators compare; it is applied after local training and
    before compression. :class:`SignFlip` sends ``-delta`` and :class:`Scale` sends
    ``factor * delta`` (boosting, Bhagoji et al., ICML 2019); :class:`GaussianUpdate` sends
    Gaussian noise of the honest norm, so norm-based filters cannot spot it (the Gaussian
    attack of Blanchard et al., NeurIPS 2017, and Fang et al., USENIX Security 2020).
    Data poisoning acts on labels before training: :class:`LabelFlip` maps
    ``y -> num_classes - 1 - y`` (Fang et al., 2020; Tolpegin et al., "Data Poisoning Attacks
    Against Federated Learning Systems", ESORICS 2020).

Every behaviour has both hooks, ``flip(labels)`` and ``apply(delta, rng)``, identity unless it
overrides one, so the client trainer calls both without asking which kind it holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedsim.attacks import AttackConfigError

Update = dict[str, np.ndarray]

# Distinguishes the malicious-set stream from every other consumer of the run seed.
_MALICIOUS_STREAM = 0x0BAD5EED
# SplitMix64 (Steele, Lea & Flood, "Fast Splittable Pseudorandom Number Generators",
# OOPSLA 2014): a Weyl step then a bijective mixer; hash(key + i * gamma) is a counter-based
# generator whose outputs pass BigCrush, so uniform draws for any i cost O(1) and no state.
_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def _uniform(key: np.uint64, ids: np.ndarray) -> np.ndarray:
    """One uniform draw in ``[0, 1)`` per id, a pure function of ``(key, id)``."""
    with np.errstate(over="ignore"):  # uint64 arithmetic is meant to wrap mod 2**64
        z = key + (ids.astype(np.uint64) + np.uint64(1)) * _GOLDEN_GAMMA
        z = (z ^ (z >> np.uint64(30))) * _MIX_1
        z = (z ^ (z >> np.uint64(27))) * _MIX_2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53  # top 53 bits: exact doubles


@dataclass(frozen=True)
class MaliciousSet:
    """The malicious virtual clients of a run; O(1) memory whatever the population.

    Parameters
    ----------
    population : int
        Number of virtual clients; ids outside ``0 .. population-1`` are never members.
    fraction : float
        Probability that a client is malicious.
    seed : int
        Run seed.
    """

    population: int
    fraction: float
    seed: int
    _key: np.uint64 = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        state = np.random.SeedSequence([self.seed, _MALICIOUS_STREAM]).generate_state(1, np.uint64)
        object.__setattr__(self, "_key", state[0])

    def members(self, client_ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``client_ids`` are malicious (vectorized ``in``)."""
        ids = np.asarray(client_ids, dtype=np.int64)
        in_range = (ids >= 0) & (ids < self.population)
        return in_range & (_uniform(self._key, np.where(in_range, ids, 0)) < self.fraction)

    def __contains__(self, client_id: object) -> bool:
        if not isinstance(client_id, (int, np.integer)):
            return False
        return bool(self.members(np.array([client_id]))[0])

    @property
    def expected_count(self) -> float:
        """Mean number of members, ``population * fraction``."""
        return self.population * self.fraction


def malicious_clients(population: int, fraction: float, seed: int) -> MaliciousSet:
    """The clients that behave maliciously: each independently with probability ``fraction``.

    Raises
    ------
    AttackConfigError
        If ``population < 1`` or ``fraction`` is outside ``[0, 1]``.
    """
    if population < 1:
        raise AttackConfigError(f"simulation.population: must be >= 1, got {population}")
    if not 0 <= fraction <= 1:
        raise AttackConfigError(f"attack.fraction: must be in [0, 1], got {fraction}")
    return MaliciousSet(population=population, fraction=fraction, seed=seed)


@dataclass(frozen=True)
class ByzantineBehaviour:
    """Base: honest on both hooks. Subclasses override ``flip`` or ``apply``."""

    def flip(self, labels: np.ndarray) -> np.ndarray:
        """Labels the client trains on (data poisoning hook); identity here."""
        return labels

    def apply(self, update: Mapping[str, np.ndarray], rng: np.random.Generator) -> Update:
        """Delta the client uploads (model poisoning hook, on ``trained - received``)."""
        return dict(update)


@dataclass(frozen=True)
class NoAttack(ByzantineBehaviour):
    """An honest client."""


@dataclass(frozen=True)
class SignFlip(ByzantineBehaviour):
    """Upload ``-delta``: pushes the global model up the loss instead of down."""

    def apply(self, update: Mapping[str, np.ndarray], rng: np.random.Generator) -> Update:
        """``-delta`` per tensor; ``rng`` is unused."""
        return {name: -np.asarray(tensor) for name, tensor in update.items()}


@dataclass(frozen=True)
class Scale(ByzantineBehaviour):
    """Upload ``factor * delta`` (boosting when ``factor > 1``, sign flip too when negative).

    Parameters
    ----------
    factor : float
        Multiplier of the delta; must be finite.
    """

    factor: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.factor):
            raise AttackConfigError(f"attack.factor: must be finite, got {self.factor}")

    def apply(self, update: Mapping[str, np.ndarray], rng: np.random.Generator) -> Update:
        """``factor * delta`` per tensor, dtype kept; ``rng`` is unused."""
        return {
            name: (np.asarray(tensor) * self.factor).astype(np.asarray(tensor).dtype)
            for name, tensor in update.items()
        }


@dataclass(frozen=True)
class GaussianUpdate(ByzantineBehaviour):
    """Upload Gaussian noise rescaled to the honest delta's L2 norm (over all tensors)."""

    def apply(self, update: Mapping[str, np.ndarray], rng: np.random.Generator) -> Update:
        """Draw ``N(0, 1)`` per entry from ``rng``, then rescale to ``||delta||_2``.

        The norm is computed in float64 over the concatenation of all tensors; a zero delta
        gives a zero upload. The draw depends only on ``rng`` and the tensor shapes.
        """
        arrays = {name: np.asarray(tensor) for name, tensor in update.items()}
        noise = {name: rng.standard_normal(a.shape) for name, a in arrays.items()}
        honest = math.sqrt(
            sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays.values())
        )
        drawn = math.sqrt(sum(float(np.sum(np.square(n))) for n in noise.values()))
        factor = honest / drawn if drawn > 0 else 0.0
        return {name: (noise[name] * factor).astype(a.dtype) for name, a in arrays.items()}


@dataclass(frozen=True)
class LabelFlip(ByzantineBehaviour):
    """Train on ``num_classes - 1 - y`` instead of ``y`` (Fang et al. 2020; Tolpegin et al. 2020).

    The pairing reverses the class order (with 10 classes 0<->9, 1<->8, ...), so every class
    is poisoned and no label maps to itself when ``num_classes`` is even.

    Parameters
    ----------
    num_classes : int
        Number of classes; labels must lie in ``0 .. num_classes-1``.
    """

    num_classes: int

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise AttackConfigError(f"attack.num_classes: must be >= 2, got {self.num_classes}")

    def flip(self, labels: np.ndarray) -> np.ndarray:
        """``num_classes - 1 - labels``, same dtype (works on numpy arrays and torch tensors)."""
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise AttackConfigError(
                f"attack.num_classes: labels span [{int(labels.min())}, {int(labels.max())}],"
                f" outside [0, {self.num_classes - 1}]"
            )
        return self.num_classes - 1 - labels
