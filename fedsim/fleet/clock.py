"""The simulated clock: how long a phone's client-round takes, what it costs, and the round time.

A client-round is download, local compute and upload, one after the other, as in FedScale's
system model (Lai et al., "FedScale: Benchmarking Model and System Performance of Federated
Learning at Scale", ICML 2022): transfer time is latency plus bytes over bandwidth, compute time
is FLOPs over the device's throughput scaled by the phone's own speed. The round lasts until
its slowest kept phone finished, or until the deadline when the server had to wait for a
straggler that never made it.

Units: 1 MB = 1e6 bytes, 1 Mbit = 1e6 bits (network units are decimal), 1 GFLOP = 1e9 FLOPs.
Everything here is a pure function of its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.fleet.profile import DeviceProfile


@dataclass(frozen=True)
class ClientCost:
    """One phone's client-round on the simulated clock (seconds) and its energy (joules)."""

    download_s: float
    compute_s: float
    upload_s: float
    energy_j: float

    @property
    def total_s(self) -> float:
        """Download, compute and upload run back to back."""
        return self.download_s + self.compute_s + self.upload_s


def transfer_s(nbytes: float, mbps: float, latency_ms: float) -> float:
    """Seconds to move ``nbytes`` over a ``mbps`` Mbit/s link, after its set-up latency."""
    return latency_ms / 1e3 + nbytes * 8 / (mbps * 1e6)


def client_round_cost(
    profile: DeviceProfile, speed: float, fp32_flops: float, int8_flops: float,
    bytes_down: float, bytes_up: float,
) -> ClientCost:
    """The simulated duration and energy of one client-round (FedScale's model, Lai et al. 2022).

    Parameters
    ----------
    profile : DeviceProfile
        The phone's tier.
    speed : float
        The phone's throughput multiplier (:meth:`fedsim.fleet.fleet.Fleet.speed_of`); 1 = its tier.
    fp32_flops, int8_flops : float
        Training FLOPs run in fp32 and in int8 (the latter at ``int8_gflops``, on the NPU/DSP
        or, with ``int8_accelerator="none"``, on the CPU).
    bytes_down, bytes_up : float
        Bytes received (the model) and sent (the update as actually encoded).

    Returns
    -------
    ClientCost
        ``download_s = latency + 8 bytes_down / downlink``, ``compute_s = (fp32 / fp32_gflops
        + int8 / int8_gflops) / speed``, ``upload_s = latency + 8 bytes_up / uplink``, and
        ``energy_j`` = GFLOPs x J/GFLOP (per precision) + MB moved x J/MB.
    """
    compute_s = (
        fp32_flops / (profile.fp32_gflops * 1e9) + int8_flops / (profile.int8_gflops * 1e9)
    ) / speed
    # Energy counts work done, not time taken: a slower phone (speed < 1) spends the same
    # joules per FLOP, only over longer.
    energy_j = (
        fp32_flops / 1e9 * profile.energy_j_per_gflop
        + int8_flops / 1e9 * profile.energy_j_per_gflop_int8
        + (bytes_down + bytes_up) / 1e6 * profile.energy_j_per_mb
    )
    return ClientCost(
        download_s=transfer_s(bytes_down, profile.downlink_mbps, profile.latency_ms),
        compute_s=compute_s,
        upload_s=transfer_s(bytes_up, profile.uplink_mbps, profile.latency_ms),
        energy_j=energy_j,
    )


def round_duration(totals: list[float], deadline_s: float | None, any_straggler: bool) -> float:
    """Simulated seconds one round lasts.

    Parameters
    ----------
    totals : list of float
        ``total_s`` of every phone the server kept.
    deadline_s : float or None
        The round's deadline.
    any_straggler : bool
        Some phone missed the deadline: the server waited for it until the deadline.

    Returns
    -------
    float
        The deadline if a straggler was dropped (or nobody finished and there is a deadline:
        the server waited for it in vain); otherwise the slowest kept phone's time, 0.0 if none.
    """
    if deadline_s is not None and (any_straggler or not totals):
        return float(deadline_s)
    return max(totals, default=0.0)


def hour_of(sim_time_s: float, start_hour: float) -> float:
    """Local hour of day in [0, 24) at ``sim_time_s`` into a run that starts at ``start_hour``."""
    return (start_hour + sim_time_s / 3600.0) % 24.0
