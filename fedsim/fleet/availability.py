"""When a phone can train: online, idle and charging (Bonawitz et al., SysML 2019).

Phones in production federated learning train only while idle, charging and on an unmetered
network, so participation follows the day: it peaks at night local time (Bonawitz et al.,
"Towards Federated Learning at Scale: System Design", SysML 2019; Yang et al., "Applied
Federated Learning: Improving Google Keyboard Query Suggestions", 2018). Three models, each a
``_target_`` with the same method ``is_online(client_id, profile, sim_time_s, server_round,
seed) -> bool``, a pure function of its arguments so a rerun or a resume decides the same:

- :class:`AlwaysOnline`: every phone, always (the plain FL assumption).
- :class:`Diurnal`: the tier's hourly probability (``DeviceProfile.availability``), drawn
  afresh per phone and round from a hash.
- :class:`TraceAvailability`: measured online windows per phone from a CSV trace, as FedScale
  replays its device-behaviour traces (Lai et al., ICML 2022).
"""

from __future__ import annotations

import bisect
import csv
import math
from pathlib import Path

from fedsim.fleet.clock import hour_of
from fedsim.errors import ConfigError
from fedsim.fleet.profile import DeviceProfile
from fedsim.fleet.fleet import hashed_uniform

_ONLINE_STREAM = 0x0A11  # not the fleet's streams: being online is independent of the tier
TRACE_HEADER = ("client_id", "start_s", "end_s")


class AlwaysOnline:
    """Every phone is online whenever it is sampled."""

    def is_online(
        self, client_id: int, profile: DeviceProfile, sim_time_s: float, server_round: int,
        seed: int,
    ) -> bool:
        return True


class Diurnal:
    """Online with the tier's probability for the current local hour.

    Parameters
    ----------
    start_hour : float
        Local hour at simulated time 0 (``simulation.start_hour``).
    """

    def __init__(self, start_hour: float) -> None:
        if not 0 <= start_hour < 24:
            raise ConfigError(f"availability.start_hour: must be in [0, 24), got {start_hour}")
        self.start_hour = float(start_hour)

    def is_online(
        self, client_id: int, profile: DeviceProfile, sim_time_s: float, server_round: int,
        seed: int,
    ) -> bool:
        hour = hour_of(sim_time_s, self.start_hour)
        # A fresh draw per round: whether a phone is on the charger tonight says little about
        # tomorrow, and it keeps the model free of per-client state.
        draw = hashed_uniform(seed, _ONLINE_STREAM, client_id, server_round)
        return draw < profile.availability[min(int(hour), 23)]  # 23.99...97 % 24 rounds to 24.0


class TraceAvailability:
    """Online iff the simulated time falls in one of the phone's windows in a CSV trace.

    The file has the header ``client_id,start_s,end_s`` and one line per online window, in
    simulated seconds; a window ``[start_s, end_s)`` is half-open, so back-to-back windows do
    not overlap. Overlapping windows of one client are merged. Clients absent from the file
    are never online. The file is read and checked when the model is built, before Ray starts.

    Parameters
    ----------
    path : str
        The trace CSV.
    """

    def __init__(self, path: str) -> None:
        self.path = str(path)
        windows = read_trace(Path(path))
        self._starts: dict[int, list[float]] = {}
        self._ends: dict[int, list[float]] = {}
        for cid, spans in windows.items():
            merged = merge_windows(spans)
            self._starts[cid] = [s for s, _ in merged]
            self._ends[cid] = [e for _, e in merged]

    def is_online(
        self, client_id: int, profile: DeviceProfile, sim_time_s: float, server_round: int,
        seed: int,
    ) -> bool:
        starts = self._starts.get(int(client_id))
        if starts is None:
            return False
        i = bisect.bisect_right(starts, sim_time_s) - 1  # last window starting at or before now
        return i >= 0 and sim_time_s < self._ends[int(client_id)][i]


def merge_windows(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, disjoint half-open windows covering the same time as ``spans``."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if start == end:
            continue  # an empty half-open window
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def read_trace(path: Path) -> dict[int, list[tuple[float, float]]]:
    """Parse a trace CSV into each client's ``(start_s, end_s)`` windows.

    Raises
    ------
    ConfigError
        One line naming the file and line: missing file, wrong header, a field that is not a
        number, a negative id or time, or ``end_s < start_s``.
    """

    def fail(line: int | None, message: str) -> ConfigError:
        where = f"{path}" if line is None else f"{path} line {line}"
        return ConfigError(f"availability.path: {where}: {message}")

    if not path.is_file():
        raise fail(None, "no such file")
    windows: dict[int, list[tuple[float, float]]] = {}
    with path.open(newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None or tuple(h.strip() for h in header) != TRACE_HEADER:
            got = ",".join(header or [])
            raise fail(1, f"header must be {','.join(TRACE_HEADER)}, got {got!r}")
        for row in rows:
            line = rows.line_num
            if not row or all(not field.strip() for field in row):
                continue  # blank lines, e.g. a trailing newline
            if len(row) != len(TRACE_HEADER):
                raise fail(line, f"expected 3 fields, got {len(row)}")
            try:
                cid = int(row[0])
                start, end = float(row[1]), float(row[2])
            except ValueError:
                raise fail(line, f"not numbers: {','.join(row)!r}") from None
            if cid < 0 or not (math.isfinite(start) and math.isfinite(end)) or start < 0:
                raise fail(line, f"id and times must be >= 0 and finite: {','.join(row)!r}")
            if end < start:
                raise fail(line, f"end_s {end:g} < start_s {start:g}")
            windows.setdefault(cid, []).append((start, end))
    return windows
