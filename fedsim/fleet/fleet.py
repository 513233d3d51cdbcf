"""The fleet: which tier of phone each virtual client is, and how fast its own copy runs.

A fleet is a mix of :class:`~fedsim.fleet.profile.DeviceProfile` tiers by share. A client's tier and
its speed are pure functions of ``(seed, client id)`` -- a counter-based hash, like the fault
and malicious-client draws -- so a population of a million phones costs no memory, and a rerun
or a resumed run sees the same phones.

Within a tier, phones are not equally fast: thermal throttling, background load and battery
saving spread their effective speed with a long right tail of slow devices (FedScale's device
traces, Lai et al., "FedScale: Benchmarking Model and System Performance of Federated Learning
at Scale", ICML 2022, whose per-device compute speeds span orders of magnitude; and the
stragglers of Bonawitz et al., "Towards Federated Learning at Scale", SysML 2019). fedsim
models this as a lognormal multiplier on the tier's throughput, median 1:
``speed = exp(speed_sigma * z)``, ``z ~ N(0, 1)``. Its tails are heavy in ratio terms and
symmetric (a phone 4x slower than the median is as likely as one 4x faster), and
``speed_sigma = 0`` makes every phone exactly its tier.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import accumulate
from statistics import NormalDist

from omegaconf import DictConfig, OmegaConf

from clients.finetune import mode_class
from fedsim.errors import ConfigError
from fedsim.fleet.profile import DeviceProfile

_TIER_STREAM = 0x71E2  # separate streams: a phone's tier and its speed are independent
_SPEED_STREAM = 0x5BEE
_MIX_TOLERANCE = 1e-6


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's step and finalizer (Steele, Lea, Flood, OOPSLA 2014): a full-avalanche mix."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def hashed_uniform(*keys: int) -> float:
    """A uniform draw in the open interval (0, 1) that depends only on ``keys``.

    Counter-based: no generator state, no per-client array. Pure Python, because one draw is
    several times cheaper than building a ``np.random.SeedSequence`` and the server draws one
    per sampled phone.
    """
    h = 0
    for key in keys:
        h = _splitmix64(h ^ (int(key) & _MASK64))
    # 53 random bits, shifted half a step off 0 so inv_cdf never sees 0 or 1.
    return ((h >> 11) + 0.5) / float(1 << 53)


def _check_mix(tiers: Mapping[str, DeviceProfile], mix: Mapping[str, float]) -> None:
    if set(mix) != set(tiers):
        raise ConfigError(
            f"fleet.mix: keys {sorted(mix)} must equal the tiers {sorted(tiers)}"
        )
    negative = {t: s for t, s in mix.items() if not s >= 0}
    if negative:
        raise ConfigError(f"fleet.mix: shares must be >= 0, got {negative}")
    total = sum(mix.values())
    if abs(total - 1.0) > _MIX_TOLERANCE:
        raise ConfigError(f"fleet.mix: shares must sum to 1, got {total:g} ({dict(mix)})")


class Fleet:
    """Tiers of phones mixed by share; every client's tier and speed hashed from its id.

    Parameters
    ----------
    tiers : mapping of str to DeviceProfile
        The tiers, by name (``conf/fleet/*.yaml`` pulls them from ``conf/device``).
    mix : mapping of str to float
        Each tier's share of the population; same keys as ``tiers``, summing to 1.
    speed_sigma : float
        Sigma of the lognormal per-phone speed multiplier (median 1); 0: no spread.
    seed : int
        Run seed, passed at instantiate time (``instantiate(cfg.fleet, seed=...)``).
    """

    def __init__(
        self,
        tiers: Mapping[str, DeviceProfile],
        mix: Mapping[str, float],
        speed_sigma: float = 0.0,
        seed: int = 0,
    ) -> None:
        # Plain dicts keep the fleet picklable and cheap to read. Under Hydra's default
        # `_convert_: none`, OmegaConf turns each instantiated DeviceProfile (a dataclass) back
        # into a structured DictConfig; to_object rebuilds the profile.
        self.tiers = {
            str(name): OmegaConf.to_object(p) if isinstance(p, DictConfig) else p
            for name, p in tiers.items()
        }
        for name, profile in self.tiers.items():
            if not isinstance(profile, DeviceProfile):
                raise ConfigError(
                    f"fleet.tiers.{name}: expected a DeviceProfile, got {type(profile).__name__}"
                )
            if profile.finetune is not None:  # a name the phone must resolve (clients.finetune)
                where = profile.name  # named as DeviceProfile's own checks name it
                mode_class(
                    profile.finetune, f"fleet.tiers.{where}.finetune (conf/device/{where}.yaml)"
                )
        try:
            self.mix = {str(name): float(share) for name, share in mix.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"fleet.mix: shares must be numbers, got {dict(mix)}") from None
        _check_mix(self.tiers, self.mix)
        if not (math.isfinite(speed_sigma) and speed_sigma >= 0):
            raise ConfigError(f"fleet.speed_sigma: must be >= 0, got {speed_sigma}")
        if seed < 0:
            raise ConfigError(f"fleet.seed: must be >= 0, got {seed}")
        self.speed_sigma = float(speed_sigma)
        self.seed = int(seed)
        # Tier order is by name, so listing the tiers in another order in YAML changes nothing.
        # Zero-share tiers are left out so a draw can never land on them.
        self._names = [n for n in sorted(self.mix) if self.mix[n] > 0]
        self._upper = list(accumulate(self.mix[n] for n in self._names))

    def tier_of(self, client_id: int) -> str:
        """The tier of ``client_id``: the share interval its hashed draw falls in."""
        u = hashed_uniform(self.seed, _TIER_STREAM, int(client_id))
        for name, upper in zip(self._names, self._upper):
            if u < upper:
                return name
        return self._names[-1]  # shares summing to 1 - 1e-6: the last sliver is the last tier

    def profile_of(self, client_id: int) -> DeviceProfile:
        """The :class:`DeviceProfile` of ``client_id``'s tier."""
        return self.tiers[self.tier_of(client_id)]

    def speed_of(self, client_id: int) -> float:
        """``client_id``'s throughput multiplier: lognormal, median 1; exactly 1 at sigma 0."""
        if self.speed_sigma == 0:
            return 1.0
        z = NormalDist().inv_cdf(hashed_uniform(self.seed, _SPEED_STREAM, int(client_id)))
        return math.exp(self.speed_sigma * z)

    def __repr__(self) -> str:
        return f"Fleet(mix={self.mix}, speed_sigma={self.speed_sigma}, seed={self.seed})"


def tier_counts(fleet: Fleet, client_ids: Iterable[int]) -> dict[str, int]:
    """How many of ``client_ids`` fall in each tier (every tier listed, zeros included)."""
    counts = Counter(fleet.tier_of(cid) for cid in client_ids)
    return {name: counts.get(name, 0) for name in sorted(fleet.tiers)}
