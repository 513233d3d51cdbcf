"""What one tier of phone can do: memory, throughput, network, energy and availability.

A :class:`DeviceProfile` is a small frozen data object, as FedScale's client metadata is
(Lai et al., "FedScale: Benchmarking Model and System Performance of Federated Learning at
Scale", ICML 2022): the server's cost models (:mod:`fedsim.fleet.clock`, :mod:`fedsim.fleet.budget`) and
the availability models (:mod:`fedsim.fleet.availability`) read it, nothing mutates it. Each tier's
numbers live in ``conf/device/<tier>.yaml`` with their sources; this module only refuses
numbers that cannot describe any device, so a typo fails before Ray starts.

Units: RAM in MiB (like the memory estimates), throughput in GFLOP/s, bandwidth in Mbit/s
(1e6 bits), latency in ms, energy in J per GFLOP and J per MB (1e6 bytes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fedsim.errors import ConfigError

INT8_ACCELERATORS = ("npu", "dsp", "none")  # "none": int8 kernels run on the CPU
HOURS = 24


def _as_tuple(value: object, where: str) -> tuple[float, ...]:
    """Hydra hands lists over as ``ListConfig``; a frozen profile must hold a hashable tuple."""
    try:
        if isinstance(value, Sequence) and not isinstance(value, str):  # ListConfig is one
            return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        pass
    raise ConfigError(
        f"fleet.tiers.{where}.availability (conf/device/{where}.yaml): must be {HOURS} numbers, "
        f"got {value!r}"
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DeviceProfile:
    """One hardware tier.

    Parameters
    ----------
    name : str
        Tier name, as reports show it.
    ram_mb : float
        MiB an app may use for training (its heap budget, not the phone's total RAM).
    fp32_gflops, int8_gflops : float
        Sustained fp32 and int8 throughput, GFLOP/s.
    int8_accelerator : str
        ``"npu"``, ``"dsp"`` or ``"none"`` (int8 runs on the CPU at ``int8_gflops``).
    uplink_mbps, downlink_mbps : float
        Bandwidth, Mbit/s.
    latency_ms : float
        One-way set-up latency added to each transfer, ms.
    energy_j_per_gflop, energy_j_per_gflop_int8 : float
        Joules per fp32 / int8 GFLOP.
    energy_j_per_mb : float
        Joules per MB (1e6 bytes) sent or received.
    availability : tuple of float
        24 hourly probabilities of being online, idle and charging (local time).
    finetune : str or None
        The name of this tier's fine-tuning mode, overriding the run's; ``None``: the run's.
        :class:`~fedsim.fleet.fleet.Fleet` checks that it names one.
    """

    name: str
    ram_mb: float
    fp32_gflops: float
    int8_gflops: float
    int8_accelerator: str
    uplink_mbps: float
    downlink_mbps: float
    latency_ms: float
    energy_j_per_gflop: float
    energy_j_per_gflop_int8: float
    energy_j_per_mb: float
    availability: tuple[float, ...]
    finetune: str | None = None

    def __post_init__(self) -> None:
        where = self.name
        object.__setattr__(self, "availability", _as_tuple(self.availability, where))
        for key in ("ram_mb", "fp32_gflops", "int8_gflops", "uplink_mbps", "downlink_mbps"):
            value = getattr(self, key)
            _check(_is_number(value) and value > 0, key, where, f"must be > 0, got {value}")
        for key in (
            "latency_ms", "energy_j_per_gflop", "energy_j_per_gflop_int8", "energy_j_per_mb"
        ):
            value = getattr(self, key)
            _check(_is_number(value) and value >= 0, key, where, f"must be >= 0, got {value}")
        _check(
            self.int8_accelerator in INT8_ACCELERATORS, "int8_accelerator", where,
            f"must be one of {', '.join(INT8_ACCELERATORS)}, got {self.int8_accelerator!r}",
        )
        hours = self.availability
        _check(
            len(hours) == HOURS, "availability", where,
            f"must be {HOURS} hourly probabilities, got {len(hours)}",
        )
        bad = [p for p in hours if not 0 <= p <= 1]
        _check(not bad, "availability", where, f"probabilities must be in [0, 1], got {bad[:1]}")
        # ``finetune`` names a mode of the phone side (clients.finetune); the fleet checks it,
        # so that importing a profile stays free of torch.


def _check(ok: bool, key: str, where: str, message: str) -> None:
    # The profile does not know its config path; in every shipped fleet a tier's key is its
    # device's name, so fleet.tiers.<name>.<key> is the override that fixes it.
    if not ok:
        raise ConfigError(f"fleet.tiers.{where}.{key} (conf/device/{where}.yaml): {message}")
